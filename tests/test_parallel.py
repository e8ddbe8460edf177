"""Data parallelism: 4 CPU devices train like 1, two processes train like one,
batch statistics are global, sizes checked.

The multi-device runs happen in subprocesses because the host device count is
fixed when JAX starts (``--xla_force_host_platform_device_count``); the
multi-process run is two ``jax.distributed`` processes on this machine talking
over JAX's CPU collectives (gloo).
"""
import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from cardiac_jax import parallel
from cardiac_jax.errors import ConfigError

# Same arithmetic, different summation order (per-device partial sums, then an
# all-reduce): float32 rounding differences, ~1e-7 in every parameter that has a
# gradient. The training loss (train mode: batch statistics) agrees to LOSS_RTOL.
LOSS_RTOL = 1e-5
PARAM_ATOL = 1e-5
# Parameters whose exact gradient is zero (a bias feeding only BatchNorms, the
# key part of the QKV bias) get rounding noise as gradient, which Adam scales
# to full-size steps: they random-walk differently per summation order. They
# cannot change train-mode outputs, but the BatchNorm running means track them
# with a lag, so eval-mode losses differ by ~1e-3 relative after two epochs.
GRADIENT_FREE = ("['embed']['bias']", "['norm_embed']['bias']", "['qkv']['bias']")
EVAL_LOSS_RTOL = 5e-3


def train_and_save(workdir: str, interrupt: bool = False) -> dict:
  """The 2-epoch tiny run all tests here compare; this process's devices and processes.

  Writes each process's final parameters to ``params<i>.npz``. ``interrupt``: stops
  in epoch 2 as Ctrl-C would (epoch 1's checkpoint stays) and returns
  {"interrupted": True}.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from cardiac_jax import checkpoint, report, run as run_lib, train  # pylint: disable=g-import-not-at-top
  from test_train import synthetic_dataset, tiny_config, train_until_interrupted  # pylint: disable=g-import-not-at-top
  config = tiny_config(num_epochs=2, batch_size=16)
  config.model.norm = "batch"
  dataset = synthetic_dataset()
  if interrupt:
    train_until_interrupted(config, workdir, dataset)
    return {"interrupted": True}
  out = train.train_and_evaluate(config, workdir, dataset=dataset)
  records = report.read_metrics(os.path.join(workdir, "metrics.jsonl"))
  run = run_lib.build_run(config, dataset)
  with checkpoint.Checkpointer(workdir, 3) as ckpt:
    state, _ = ckpt.restore_latest(run.abstract_state)
  np.savez(os.path.join(workdir, f"params{jax.process_index()}.npz"),
           **{jax.tree_util.keystr(k): np.asarray(v)
              for k, v in jax.tree_util.tree_leaves_with_path(state.params)})
  return {"devices": jax.device_count(), "processes": jax.process_count(),
          "records": len(records),
          "train_loss_running": [r["train_loss_running"] for r in records],
          "val_loss": [r["val_loss"] for r in records], "test_acc": out["test_acc"]}


_TRAIN = textwrap.dedent("""
    import json, sys
    from cardiac_jax import parallel
    parallel.maybe_initialize_distributed()   # a no-op without JAX_COORDINATOR_ADDRESS
    sys.path.insert(0, {tests!r})
    import test_parallel
    print("RESULT" + json.dumps(test_parallel.train_and_save({workdir!r}, {interrupt!r})))
""")

_BATCH_STATS = textwrap.dedent("""
    import json, jax, jax.numpy as jnp, numpy as np
    from cardiac_jax import models, parallel
    model = models.SequenceClassifier(num_classes=3, length=6, width=8, depth=1, num_heads=2,
                                      mlp_ratio=2, dropout_rates=(0.0,), norm="batch")
    rng = np.random.default_rng(0)
    # Each device's quarter has a different mean, so per-shard statistics would differ.
    x = (rng.normal(size=(8, 6, 5)) + np.repeat(np.arange(4.0), 2)[:, None, None] * 3
         ).astype(np.float32)
    mask = np.ones((8, 6), np.float32); mask[1, 3:] = 0
    variables = model.init(jax.random.key(0), x, mask, train=False)
    def stats(v, x, mask):
      return model.apply(v, x, mask, train=True, mutable=["batch_stats"])[1]
    rep, batch = parallel.replicated(), parallel.batch_sharding()
    f = jax.jit(stats, in_shardings=(rep, batch, batch))
    sharded = f(jax.device_put(variables, rep), jax.device_put(x, batch), jax.device_put(mask, batch))
    single = jax.jit(stats, device=jax.devices()[0])(variables, x, mask)
    err = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
              for a, b in zip(jax.tree.leaves(sharded), jax.tree.leaves(single)))
    print("RESULT" + json.dumps({"devices": jax.device_count(), "max_abs_diff": err,
                                 "mean": np.asarray(sharded["batch_stats"]["norm_embed"]["mean"]).tolist()}))
""")


def _env(devices: int, **extra: str) -> dict:
  return dict(os.environ, JAX_PLATFORMS="cpu",
              XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", **extra)


def _result(stdout: str) -> dict:
  line = [l for l in stdout.splitlines() if l.startswith("RESULT")][-1]
  return json.loads(line[len("RESULT"):])


def _train_script(workdir, interrupt: bool = False) -> str:
  return _TRAIN.format(tests=os.path.dirname(os.path.abspath(__file__)), workdir=str(workdir),
                       interrupt=interrupt)


def _run(script: str, devices: int) -> dict:
  proc = subprocess.run([sys.executable, "-c", script], env=_env(devices),
                        capture_output=True, text=True, timeout=240)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return _result(proc.stdout)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _run_processes(script: str, processes: int, devices: int) -> list[dict]:
  """``processes`` jax.distributed processes on this machine, ``devices`` CPU devices each."""
  address = f"127.0.0.1:{_free_port()}"
  procs = [subprocess.Popen(
      [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True, env=_env(devices, JAX_COORDINATOR_ADDRESS=address,
                          JAX_NUM_PROCESSES=str(processes), JAX_PROCESS_ID=str(i)))
           for i in range(processes)]
  outs = []
  try:
    for p in procs:
      stdout, stderr = p.communicate(timeout=300)
      assert p.returncode == 0, stderr[-3000:]
      outs.append(_result(stdout))
  finally:
    for p in procs:
      p.kill()
  return outs


@pytest.fixture(scope="module")
def four_devices(tmp_path_factory):
  """A 2-epoch run of one process with 4 CPU devices: the reference of both the
  one-device run and the two-process run (the same script, so it is run once)."""
  workdir = tmp_path_factory.mktemp("d4")
  return workdir, _run(_train_script(workdir), 4)


def test_four_devices_train_like_one(tmp_path, four_devices):
  """The one-device reference runs in this process (one CPU device): no start-up."""
  four_dir, four = four_devices
  one = train_and_save(str(tmp_path / "d1"))
  assert one["devices"] == 1 and four["devices"] == 4
  assert len(one["train_loss_running"]) == 2
  np.testing.assert_allclose(four["train_loss_running"], one["train_loss_running"],
                             rtol=LOSS_RTOL)
  np.testing.assert_allclose(four["val_loss"], one["val_loss"], rtol=EVAL_LOSS_RTOL)
  p1, p4 = (np.load(d / "params0.npz") for d in (tmp_path / "d1", four_dir))
  checked = [k for k in p1.files if not k.endswith(GRADIENT_FREE)]
  assert len(checked) > len(p1.files) // 2
  for k in checked:
    np.testing.assert_allclose(p4[k], p1[k], atol=PARAM_ATOL, err_msg=k)


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
  """A 2-epoch run of two jax.distributed processes (2 CPU devices each)."""
  workdir = tmp_path_factory.mktemp("two")
  return workdir, _run_processes(_train_script(workdir), 2, 2)


def test_two_processes_train_like_one(four_devices, two_processes):
  """Two jax.distributed processes of 2 devices each = one process of 4 devices.

  Same mesh, same global batches: the per-epoch metrics agree to float
  tolerance (gloo's all-reduce may sum in another order), every process ends
  with the same parameters, and only the first process writes the workdir's
  files (one metrics record per epoch, not two).
  """
  one_dir, one = four_devices
  two_dir, two = two_processes
  assert [r["processes"] for r in two] == [2, 2]
  assert [r["devices"] for r in two] == [4, 4] and one["devices"] == 4
  for r in two:
    assert r["records"] == len(one["train_loss_running"]) == 2
    np.testing.assert_allclose(r["train_loss_running"], one["train_loss_running"],
                               rtol=LOSS_RTOL)
    np.testing.assert_allclose(r["val_loss"], one["val_loss"], rtol=EVAL_LOSS_RTOL)
    assert r["test_acc"] == pytest.approx(one["test_acc"], abs=0.02)
  p_one = np.load(one_dir / "params0.npz")
  p_two = [np.load(two_dir / f"params{i}.npz") for i in (0, 1)]
  for k in p_one.files:
    np.testing.assert_array_equal(p_two[0][k], p_two[1][k], err_msg=k)
    if not k.endswith(GRADIENT_FREE):
      np.testing.assert_allclose(p_two[0][k], p_one[k], atol=PARAM_ATOL, err_msg=k)
  with open(two_dir / "metrics.jsonl") as f:
    assert len(f.read().splitlines()) == 2


def test_two_processes_resume_where_they_stopped(tmp_path, two_processes):
  """Both processes stopped in epoch 2, then restarted: the run ends as the
  uninterrupted two-process run does (same records, no duplicates, same weights)."""
  stopped = _run_processes(_train_script(tmp_path, interrupt=True), 2, 2)
  assert stopped == [{"interrupted": True}] * 2
  with open(tmp_path / "metrics.jsonl") as f:
    assert len(f.read().splitlines()) == 1           # epoch 1 only
  resumed = _run_processes(_train_script(tmp_path), 2, 2)
  two_dir, two = two_processes
  for r, s in zip(resumed, two):
    assert r["records"] == 2
    np.testing.assert_allclose(r["train_loss_running"], s["train_loss_running"], rtol=1e-6)
    np.testing.assert_allclose(r["val_loss"], s["val_loss"], rtol=1e-6)
    assert r["test_acc"] == s["test_acc"]
  for i in (0, 1):
    a, b = np.load(tmp_path / f"params{i}.npz"), np.load(two_dir / f"params{i}.npz")
    for k in a.files:
      np.testing.assert_allclose(a[k], b[k], atol=1e-6, err_msg=k)


def test_batch_norm_statistics_are_global():
  """Sharded over 4 devices, BatchNorm's update uses the mean of the whole batch."""
  out = _run(_BATCH_STATS, 4)
  assert out["devices"] == 4
  assert out["max_abs_diff"] < 1e-5


def test_batch_size_must_divide_over_devices():
  mesh = parallel.data_mesh()
  n = parallel.num_shards(mesh)
  parallel.check_divisible(8 * n, "train.batch_size", mesh)
  if n == 1:   # the test process has one CPU device; check the message with a fake count
    with pytest.raises(ConfigError, match=r"train.batch_size=30 .* 4 devices.*32 or 28"):
      _check_with(4, 30)
  assert parallel.round_up(5, mesh) % n == 0


def _check_with(n: int, size: int) -> None:
  class _Mesh:
    shape = {parallel.DATA_AXIS: n}
  parallel.check_divisible(size, "train.batch_size", _Mesh())


def test_no_coordinator_is_a_no_op(monkeypatch):
  monkeypatch.delenv("JAX_COORDINATOR_ADDRESS", raising=False)
  assert parallel.maybe_initialize_distributed() is False
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "localhost:1234")
  monkeypatch.delenv("JAX_NUM_PROCESSES", raising=False)
  monkeypatch.delenv("JAX_PROCESS_ID", raising=False)
  with pytest.raises(ConfigError, match="JAX_NUM_PROCESSES"):
    parallel.maybe_initialize_distributed()

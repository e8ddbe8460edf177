"""The train loop end to end on a tiny learnable dataset (seconds on a CPU)."""
import functools
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cardiac_jax import checkpoint as checkpoint_lib
from cardiac_jax import evaluation
from cardiac_jax import inference
from cardiac_jax import input_pipeline
from cardiac_jax import members
from cardiac_jax import report as report_lib
from cardiac_jax import config_lib
from cardiac_jax import run as run_lib
from cardiac_jax import steps
from cardiac_jax import train
from cardiac_jax.data.dataset import SequenceDataset
from cardiac_jax.errors import ConfigError

CLASSES = ("IPSC", "MES", "CMES")
METRIC_KEYS = {"epoch", "step", "lr", "label_smoothing", "weight_decay", "train_loss",
               "train_acc", "train_loss_running", "val_loss", "val_acc", "acc_gap",
               "loss_gap", "overfitting", "grad_norm", "update_norm", "param_norm",
               "seconds"}


def synthetic_dataset(n: int = 150, length: int = 8, features: int = 6, seed: int = 0,
                      separation: float = 1.5) -> SequenceDataset:
  """Three classes whose step features have class-dependent means (learnable)."""
  rng = np.random.default_rng(seed)
  y = (np.arange(n) % len(CLASSES)).astype(np.int32)
  means = rng.normal(size=(len(CLASSES), features)) * separation
  x = (rng.normal(size=(n, length, features)) + means[y][:, None, :]).astype(np.float32)
  mask = np.ones((n, length), np.float32)
  mask[::4, length // 2:] = 0.0                       # some partly hidden sequences
  split = rng.choice(3, size=n, p=(0.6, 0.25, 0.15)).astype(np.int8)
  return SequenceDataset(
      x=x, y=y, mask=mask, split=split, modality=np.zeros(n, np.int8),
      source_index=np.zeros((n, length), np.int64), class_names=CLASSES,
      meta={"cache_key": f"synthetic-{n}-{length}-{features}-{seed}-{separation}"})


def tiny_config(num_epochs: int = 2, **train_overrides):
  config = config_lib.preset("debug")
  config.model.width = 16
  config.model.depth = 1
  config.model.num_heads = 2
  config.model.mlp_ratio = 2
  config.train.batch_size = 16
  config.train.num_epochs = num_epochs
  config.train.eval_batch_size = 32          # several chunks with padding
  config.train.first_cycle_epochs = 2.0
  config.train.learning_rate = 3e-3
  for k, v in train_overrides.items():
    config.train[k] = v
  return config


def train_until_interrupted(config, workdir: str, dataset, stop_epoch: int = 2) -> list[int]:
  """Trains as Ctrl-C during epoch ``stop_epoch`` would stop it; the epochs that ran.

  The earlier epochs' checkpoints stay, so a second ``train_and_evaluate`` resumes.
  """
  real_run_epoch = train._run_epoch
  calls = []

  def interrupted(run, state, epoch):
    out = real_run_epoch(run, state, epoch)    # the state buffers are donated by now
    calls.append(epoch)
    if epoch == stop_epoch:
      raise KeyboardInterrupt
    return out

  train._run_epoch = interrupted
  try:
    with pytest.raises(KeyboardInterrupt):
      train.train_and_evaluate(config, workdir, dataset=dataset)
  finally:
    train._run_epoch = real_run_epoch
  return calls


@pytest.fixture(scope="module")
def dataset():
  return synthetic_dataset()


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, dataset):
  workdir = str(tmp_path_factory.mktemp("straight"))
  results = train.train_and_evaluate(tiny_config(num_epochs=3), workdir, dataset=dataset)
  return workdir, results


def _final_params(workdir, config, dataset):
  run = run_lib.build_run(config, dataset)
  with checkpoint_lib.Checkpointer(workdir, 3) as ckpt:
    state, meta = ckpt.restore_latest(run.abstract_state)
  return state, meta


def test_end_to_end_writes_metrics_report_and_plots(straight_run):
  workdir, results = straight_run
  records = report_lib.read_metrics(os.path.join(workdir, "metrics.jsonl"))
  assert [r["epoch"] for r in records] == [1, 2, 3]
  for r in records:
    assert METRIC_KEYS <= set(r), METRIC_KEYS - set(r)
    assert r["acc_gap"] == pytest.approx(r["train_acc"] - r["val_acc"])
    assert r["overfitting"] in ("ok", "moderate", "significant")
    assert 0 < r["update_norm"] < r["param_norm"] and r["grad_norm"] > 0
  # Steps: 3 epochs of floor(n_train / 16) full batches.
  assert records[-1]["step"] == 3 * (records[0]["step"])
  # The classes are separable: the tiny model learns them.
  assert results["test_acc"] > 0.6
  assert records[-1]["train_loss"] < records[0]["train_loss"] or records[0]["train_acc"] > 0.9
  for name in ("report.json", "report.md", "config.json", "plots/learning_curves.png",
               "plots/accuracy_gap.png", "plots/confusion_matrix.png"):
    path = os.path.join(workdir, name)
    assert os.path.getsize(path) > 0, name
  with open(os.path.join(workdir, "report.json")) as f:
    report = json.load(f)
  assert report["test_acc"] == pytest.approx(results["test_acc"])
  assert set(report["criteria"]) == {"test_accuracy", "accuracy_gap", "val_not_below_train",
                                     "val_test_agreement"}
  assert sum(map(sum, report["confusion"])) == report["num_test"]
  assert tiny_config().train.early_stopping_metric == "val_loss"
  assert report["best_epoch"] == min(records, key=lambda r: r["val_loss"])["epoch"]
  assert report["epochs_run"] == 3 and report["early_stopped"] is False
  with open(os.path.join(workdir, "report.md")) as f:
    md = f.read()
  assert "Success criteria" in md and ("PASS" in md or "FAIL" in md)
  # The sequence branch's weight is the validation-best of the grid, and the
  # reported validation accuracy is the one measured at that weight.
  gate = report["branch_gate"]
  assert gate["grid"] == list(tiny_config().train.branch_gate_grid)
  best = max(range(len(gate["grid"])), key=lambda i: (gate["val_acc"][i], -gate["val_loss"][i]))
  assert gate["chosen"] == gate["grid"][best]
  assert report["val_acc"] == pytest.approx(gate["val_acc"][best])
  assert "sequence-branch gate" in md


def test_resume_after_interrupt_matches_straight_run(tmp_path, dataset, straight_run):
  """Ctrl-C during epoch 2, then resume: same per-epoch losses and final params."""
  straight_dir, _ = straight_run
  workdir = str(tmp_path / "resumed")
  config = tiny_config(num_epochs=3)
  assert train_until_interrupted(config, workdir, dataset) == [1, 2]
  train.train_and_evaluate(config, workdir, dataset=dataset)

  straight = report_lib.read_metrics(os.path.join(straight_dir, "metrics.jsonl"))
  resumed = report_lib.read_metrics(os.path.join(workdir, "metrics.jsonl"))
  assert [r["epoch"] for r in resumed] == [1, 2, 3]          # no duplicates
  for a, b in zip(straight, resumed):
    for key in ("train_loss", "val_loss", "train_loss_running", "lr", "label_smoothing"):
      assert a[key] == pytest.approx(b[key], abs=1e-6), (a["epoch"], key)
  sa, ma = _final_params(straight_dir, config, dataset)
  sb, mb = _final_params(workdir, config, dataset)
  assert ma["epoch"] == mb["epoch"] == 3
  for la, lb in zip(jax.tree.leaves(sa), jax.tree.leaves(sb)):
    np.testing.assert_allclose(np.asarray(la), np.asarray(lb), atol=1e-6)


@pytest.fixture(scope="module")
def plateau_run(tmp_path_factory, dataset):
  # Zero learning rate: the weights never change, so val_acc never improves after epoch 1.
  config = tiny_config(num_epochs=20, learning_rate=0.0, min_learning_rate=0.0,
                       early_stopping_patience=2)
  # BatchNorm running statistics change even at lr 0; layer norm keeps the model fixed
  # (the per-cell head standardises with BatchNorm statistics, so it is off here).
  config.model.norm = "layer"
  config.model.cell_head = False
  workdir = str(tmp_path_factory.mktemp("plateau"))
  return workdir, train.train_and_evaluate(config, workdir, dataset=dataset), config


def test_early_stopping_on_plateau(plateau_run):
  workdir, results, _ = plateau_run
  assert results["early_stopped"] is True
  assert results["epochs_run"] == 3                 # patience + 1
  assert results["best_epoch"] == 1
  assert len(report_lib.read_metrics(os.path.join(workdir, "metrics.jsonl"))) == 3


def test_running_loss_uses_smoothing_schedule_and_per_step_dropout(plateau_run, dataset):
  """Epoch 1's train-mode loss equals a step-by-step recomputation (weights are fixed).

  Checks in one go: the stratified batch order for (seed, epoch), the dropout key
  fold_in(rng, step), label smoothing from its schedule at each step, and the
  on-device sums over the scanned epoch.
  """
  workdir, _, config = plateau_run
  run = run_lib.build_run(config, dataset)
  state = members.take(run.fns.init(run.init_rng, run.data["x"][:1], run.data["mask"][:1]), 0)
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  apply = jax.jit(functools.partial(run.model.apply, train=True, mutable=["batch_stats"]))
  rows = run.train_pos[input_pipeline.stratified_order(dataset.y[run.train_pos], 16, config.seed, 1)]

  def mean_loss(key_for_step, smoothing_for_step):
    total = 0.0
    for s, r in enumerate(rows):
      logits, _ = apply(variables, dataset.x[r], dataset.mask[r],
                        rngs={"dropout": key_for_step(s)})
      total += float(jnp.sum(steps.cross_entropy(logits, dataset.y[r], smoothing_for_step(s))))
    return total / rows.size

  record = report_lib.read_metrics(os.path.join(workdir, "metrics.jsonl"))[0]
  per_step_key = lambda s: jax.random.fold_in(run.train_rng[0], s)  # noqa: E731
  expected = mean_loss(per_step_key, run.schedules.label_smoothing)
  assert record["train_loss_running"] == pytest.approx(expected, rel=1e-5)
  assert record["label_smoothing"] == pytest.approx(
      float(run.schedules.label_smoothing(rows.shape[0] - 1)))
  assert expected != pytest.approx(mean_loss(per_step_key, lambda s: 0.0), rel=1e-3)
  assert expected != pytest.approx(
      mean_loss(lambda s: per_step_key(0), run.schedules.label_smoothing), rel=1e-4)


def test_nan_input_raises_naming_step_and_saves_nothing(tmp_path, dataset):
  x = dataset.x.copy()
  first_train = int(np.flatnonzero(dataset.split == 0)[0])
  x[first_train, 0, 0] = np.nan
  bad = SequenceDataset(**{**dataset.__dict__, "x": x,
                           "meta": {"cache_key": "synthetic-nan"}})
  with pytest.raises(FloatingPointError, match=r"epoch 1, optimizer step \d+.*learning_rate"):
    train.train_and_evaluate(tiny_config(num_epochs=3), str(tmp_path), dataset=bad)
  with checkpoint_lib.Checkpointer(str(tmp_path), 3) as ckpt:
    assert ckpt.latest_epoch() is None


def test_incompatible_config_refuses_to_resume(tmp_path, dataset, straight_run):
  workdir = str(tmp_path / "run")
  shutil.copytree(straight_run[0], workdir)
  files = ("metrics.jsonl", "config.json", "report.json")
  before = {p: os.path.getmtime(os.path.join(workdir, p)) for p in files}
  wider = tiny_config(num_epochs=4)
  wider.model.width = 32
  with pytest.raises(ConfigError, match=r"(?s)model\.width: 16 -> 32.*new --workdir"):
    train.train_and_evaluate(wider, workdir, dataset=dataset)
  assert before == {p: os.path.getmtime(os.path.join(workdir, p)) for p in files}
  with checkpoint_lib.Checkpointer(workdir, 3) as ckpt:
    assert ckpt.latest.all_steps() == [1, 2, 3]


def test_corrupt_latest_checkpoint_falls_back(tmp_path, dataset, straight_run, caplog):
  workdir = str(tmp_path / "run")
  shutil.copytree(straight_run[0], workdir)
  step_dir = os.path.join(workdir, "checkpoints", "latest", "3", "state")
  for root, _, files in os.walk(step_dir):
    for name in files:
      os.remove(os.path.join(root, name))
  with caplog.at_level("WARNING"):
    train.train_and_evaluate(tiny_config(num_epochs=3), workdir, dataset=dataset)
  assert any("unreadable" in r.getMessage() for r in caplog.records)
  # Epoch 3 was retrained from epoch 2 (not skipped) and matches the original.
  straight = report_lib.read_metrics(os.path.join(straight_run[0], "metrics.jsonl"))
  records = report_lib.read_metrics(os.path.join(workdir, "metrics.jsonl"))
  assert [r["epoch"] for r in records] == [1, 2, 3]
  assert records[2]["seconds"] != straight[2]["seconds"]
  assert records[2]["val_loss"] == pytest.approx(straight[2]["val_loss"], abs=1e-6)
  assert os.path.isdir(os.path.join(workdir, "checkpoints", "corrupt", "latest", "3"))


def test_evaluate_counts_every_example_once(dataset):
  config = tiny_config()
  run = run_lib.build_run(config, dataset)
  state = run.fns.init(run.init_rng, run.data["x"][:1], run.data["mask"][:1])
  positions = np.flatnonzero(dataset.split == 1)
  for chunk in (7, 32):                             # 32: the run's own chunk size
    ev = evaluation.evaluate(run.fns.eval_chunk, state, run.data, input_pipeline.eval_chunks(positions, chunk),
                        with_probs=True)[0]
    assert ev["count"] == len(positions)
    assert ev["probs"].shape == (len(positions), len(CLASSES))
  apply = jax.jit(functools.partial(run.model.apply, train=False))
  one = members.take(state, 0)
  logits = apply({"params": one.params, "batch_stats": one.batch_stats},
                 dataset.x[positions], dataset.mask[positions])
  ref = np.mean(np.asarray(steps.cross_entropy(logits, jnp.asarray(dataset.y[positions]))))
  assert ev["loss"] == pytest.approx(float(ref), rel=1e-5)


def test_stratified_order_is_balanced_and_deterministic():
  labels = np.repeat(np.arange(3), [60, 30, 15])
  a = input_pipeline.stratified_order(labels, 15, seed=0, epoch=1)
  assert a.shape == (7, 15)
  assert len(np.unique(a)) == a.size                # no row twice in an epoch
  for batch in a:
    counts = np.bincount(labels[batch], minlength=3)
    np.testing.assert_allclose(counts, [8.57, 4.29, 2.14], atol=1.5)
  np.testing.assert_array_equal(a, input_pipeline.stratified_order(labels, 15, seed=0, epoch=1))
  assert not np.array_equal(a, input_pipeline.stratified_order(labels, 15, seed=0, epoch=2))


def test_restore_best_and_predict_reproduce_the_reported_test_accuracy(straight_run, dataset):
  """The public restore/predict path gives the report's test accuracy back."""
  workdir, _ = straight_run
  run, state, meta = inference.restore_best(tiny_config(num_epochs=3), workdir, dataset=dataset)
  test = dataset.part("test")
  probs = inference.predict(run, state, test.x, test.mask)
  assert probs.shape == (len(test.y), dataset.num_classes)
  np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
  with open(os.path.join(workdir, "report.json")) as f:
    reported = json.load(f)
  assert meta["epoch"] == reported["best_epoch"]
  assert np.mean(probs.argmax(-1) == test.y) == pytest.approx(reported["test_acc"], abs=1e-9)


def test_parameter_average_is_what_is_evaluated_and_exported(tmp_path, dataset):
  """With train.average_epochs the report, restore_best and predict all use the average."""
  config = tiny_config(num_epochs=3, average_epochs=1.0)
  workdir = str(tmp_path / "avg")
  results = train.train_and_evaluate(config, workdir, dataset=dataset)
  run, state, meta = inference.restore_best(config, workdir, dataset=dataset)
  from cardiac_jax import optim
  average = optim.eval_params(state.params, state.opt_state)
  assert average is not state.params
  assert not np.allclose(jax.tree.leaves(average)[0], jax.tree.leaves(state.params)[0])
  test = dataset.part("test")
  probs = inference.predict(run, state, test.x, test.mask)
  assert np.mean(probs.argmax(-1) == test.y) == pytest.approx(results["test_acc"], abs=1e-9)
  raw = state.replace(opt_state=optim.without_average(state.opt_state))
  raw_probs = inference.predict(run, raw, test.x, test.mask)
  assert not np.allclose(raw_probs, probs)

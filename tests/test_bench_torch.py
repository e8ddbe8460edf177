"""bench_torch: the FLOP count, the summary, the torch side's inputs; with torch (the
``torch`` extra) the torch model computes the JAX model's function and training step.

Without torch the torch-dependent tests skip; docs/results/torch_train.md has the
measured comparison.
"""
import configparser
import functools
import pathlib

import flax
import jax
import numpy as np
import optax
import pytest

from cardiac_jax import config_lib
from cardiac_jax import members
from cardiac_jax import models
from cardiac_jax import optim
from cardiac_jax import run as run_lib
from cardiac_jax import steps as steps_lib
from cardiac_jax.errors import ConfigError
from cardiac_jax.studies import bench_torch
from cardiac_jax.studies import bench_train

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _config(**model):
  config = config_lib.preset("debug")
  config.model.dtype = "float32"
  for key, value in model.items():
    config.model[key] = value
  return config


def _spec(**over):
  spec = {"num_classes": 6, "length": 80, "features": 52, "width": 64, "depth": 2,
          "num_heads": 4, "mlp_ratio": 4, "batch_size": 32, "steps": 4}
  spec.update(over)
  return spec


def test_flops_per_sequence_counts_every_matmul_three_times_but_the_embedding():
  s = _spec()
  tokens, w = s["length"], s["width"]
  embed = 2 * tokens * s["features"] * w
  block = (2 * tokens * w * 3 * w + 4 * tokens * tokens * w + 2 * tokens * w * w
           + 4 * tokens * w * 4 * w)
  head = 2 * 2 * w * s["num_classes"]
  want = 3 * (embed + 2 * block + head) - 2 * embed
  assert bench_torch.flops_per_sequence(s) == pytest.approx(want)
  # The batch only divides out.
  assert bench_torch.flops_per_sequence(_spec(batch_size=7)) == pytest.approx(want)


@pytest.mark.parametrize("key,value", [("norm", "layer"), ("pooling", "mean"),
                                       ("cell_head", False), ("input_dropout", 0.1)])
def test_model_spec_refuses_what_the_torch_model_does_not_implement(key, value):
  with pytest.raises(ConfigError, match=f"model.{key}"):
    bench_torch.model_spec(_config(**{key: value}), 6, 16, 18)


def test_summarise_pools_every_call_and_divides_medians():
  spec = _spec(steps=2, batch_size=10)           # 20 sequences per call
  results = [
      {"mode": "jax", "times_s": [0.1, 0.2], "matmul_gflops": 100.0,
       "flops_per_step_xla": 10 * 2e6},
      {"mode": "jax", "times_s": [0.1], "matmul_gflops": 120.0},
      {"mode": "torch_eager", "times_s": [0.4, 0.4, 0.5], "matmul_gflops": 90.0,
       "eval_logits_max_abs_diff": 1e-7},
  ]
  got = bench_torch.summarise(results, spec)
  jax_row, eager = got["modes"]["jax"], got["modes"]["torch_eager"]
  assert (jax_row["seq_per_s_median"], jax_row["seq_per_s_min"], jax_row["calls"]) == (
      200.0, 100.0, 3)
  assert jax_row["matmul_gflops"] == 110.0
  assert eager["seq_per_s_median"] == 50.0
  assert got["ratios"] == {"jax_over_torch_eager": 4.0}
  per_seq = bench_torch.flops_per_sequence(spec)
  assert eager["share_of_matmul"] == pytest.approx(50.0 * per_seq / 1e9 / 90.0)
  assert got["flops_per_sequence_xla"] == 2e6
  assert "torch_compile" not in got["modes"]


def test_prepare_writes_the_batches_schedules_and_weights(tmp_path):
  config = _config()
  spec = bench_torch.prepare(config, 3, 7, tmp_path / "in.npz")
  inputs = np.load(tmp_path / "in.npz")
  assert inputs["idx"].shape == (3, config.train.batch_size)
  assert inputs["x"].shape[1:] == (spec["length"], spec["features"]) == (16, 18)
  assert inputs["lr"].shape == inputs["wd"].shape == inputs["smoothing"].shape == (7,)
  assert inputs["eval_logits"].shape == (config.train.batch_size, spec["num_classes"])
  assert "var:params/block_0/attn/qkv/kernel" in inputs.files
  assert "var:batch_stats/norm_embed/mean" in inputs.files
  assert spec["dropout_rates"] == [0.1] and spec["clip_norm"] == 1.0


def test_the_torch_extra_is_pinned_and_never_core():
  cfg = configparser.ConfigParser()
  cfg.read(ROOT / "setup.cfg")
  extra = cfg["options.extras_require"]["torch"].split()
  assert len(extra) == 1 and extra[0].startswith("torch==2.")
  assert "torch" not in cfg["options"]["install_requires"]


# With torch installed (the ``torch`` extra): the two frameworks compute the same.

def _torch_model(spec, inputs, attention="einsum"):
  torch = pytest.importorskip("torch")
  from cardiac_jax.studies import torch_peer  # pylint: disable=g-import-not-at-top
  model = torch_peer.build(spec, attention)
  torch_peer.load_flax_params(model, {k[4:]: v for k, v in dict(inputs).items()
                                      if k.startswith("var:")})
  return torch, torch_peer, model


@pytest.mark.parametrize("attention", ["einsum", "sdpa"])
def test_torch_model_gives_the_jax_models_eval_logits(tmp_path, attention):
  pytest.importorskip("torch")
  config = _config()
  spec = bench_torch.prepare(config, 2, 4, tmp_path / "in.npz")
  inputs = dict(np.load(tmp_path / "in.npz"))
  torch, _, model = _torch_model(spec, inputs, attention)
  rows = inputs["idx"][0]
  x, mask = inputs["x"][rows], inputs["mask"][rows]
  model.eval()
  with torch.no_grad():
    got = model(torch.from_numpy(x), torch.from_numpy(mask)).numpy()
  np.testing.assert_allclose(got, inputs["eval_logits"], atol=1e-5, rtol=1e-5)
  # Hidden steps (never attended, pooled or normalised) against the JAX model itself.
  mask[:3, :5] = 0.0
  with torch.no_grad():
    got = model(torch.from_numpy(x), torch.from_numpy(mask)).numpy()
  variables = flax.traverse_util.unflatten_dict(
      {tuple(k[4:].split("/")): v for k, v in inputs.items() if k.startswith("var:")})
  jax_model = models.model_from_config(config, spec["num_classes"], spec["length"])
  want = jax_model.apply(variables, x, mask, train=False)
  np.testing.assert_allclose(got, np.asarray(want), atol=1e-5, rtol=1e-5)


def test_torch_training_step_is_the_jax_training_step(tmp_path):
  """With every random regulariser off: the same loss, metrics and gradients, and the
  optimizer makes the same update from the same gradients.

  The updated weights are compared through the gradients, not after a step of both:
  Adam's first step moves a weight by lr * g / (|g| + eps), so a gradient that is
  zero but for rounding (the key bias: softmax ignores it) moves by +-lr either way.
  """
  pytest.importorskip("torch")
  config = _config(dropout_min=0.0, dropout_max=0.0, feature_noise=0.0, step_dropout=0.0,
                   branch_dropout=0.0)
  spec = bench_torch.prepare(config, 2, 4, tmp_path / "in.npz")
  inputs = np.load(tmp_path / "in.npz")
  torch, torch_peer, model = _torch_model(spec, inputs)
  rows = inputs["idx"][0]
  x, mask, y = inputs["x"][rows], inputs["mask"][rows], inputs["y"][rows]
  mask[:3, :5] = 0.0                                  # hidden steps: masked norms and pooling
  smoothing, lr, wd = (inputs[k][0] for k in ("smoothing", "lr", "wd"))

  ds = bench_train.synthetic_dataset(config)
  run = run_lib.build_run(config, ds)
  state = members.take(run.fns.init(run.init_rng, run.data["x"][:1], run.data["mask"][:1]), 0)
  tx = optim.make_optimizer(run.config, run.schedules)
  step = jax.jit(functools.partial(steps_lib.train_step, model=run.model, tx=tx,
                                   schedules=run.schedules))
  _, metrics = step(state, {"x": x, "mask": mask, "y": y}, run.train_rng[0])

  def loss(params):
    logits, _ = run.model.apply({"params": params, "batch_stats": state.batch_stats}, x,
                                mask, train=True, mutable=["batch_stats"])
    return steps_lib.cross_entropy(logits, y, smoothing).mean()
  grads = jax.grad(loss)(state.params)
  deltas, _ = tx.update(grads, state.opt_state, state.params)
  def flat(tree):
    return flax.traverse_util.flatten_dict(jax.device_get(tree), sep="/")
  want_grads, want_params = flat(grads), flat(optax.apply_updates(state.params, deltas))

  model.train()
  opt = torch_peer.AdamW(list(model.named_parameters()), clip_norm=spec["clip_norm"],
                         b1=spec["b1"], b2=spec["b2"], eps=spec["eps"])
  sums = torch.zeros(4)
  torch_peer.make_step(model, opt, compiled=False)(
      torch.from_numpy(x), torch.from_numpy(mask), torch.from_numpy(y).long(),
      torch.tensor(smoothing), torch.tensor(lr), torch.tensor(wd), sums)
  loss_sum, correct, g_norm, u_norm = sums.tolist()
  assert loss_sum == pytest.approx(float(metrics["loss"]), rel=1e-5)
  assert correct == float(metrics["correct"])
  assert g_norm == pytest.approx(float(metrics["grad_norm"]), rel=1e-4)
  assert u_norm == pytest.approx(float(metrics["update_norm"]), rel=1e-4)
  scale = max(np.abs(g).max() for g in want_grads.values())
  named = dict(model.named_parameters())
  for name, p in named.items():
    key = torch_peer.flax_name(name)
    np.testing.assert_allclose(p.grad.numpy(), torch_peer.torch_layout(key, want_grads[key]),
                               atol=1e-5 * scale, err_msg=name)

  # The optimizer alone: JAX's initial weights and gradients in, one update out.
  torch_peer.load_flax_params(model, {k[4:]: inputs[k] for k in inputs.files
                                      if k.startswith("var:")})
  opt = torch_peer.AdamW(list(model.named_parameters()), clip_norm=spec["clip_norm"],
                         b1=spec["b1"], b2=spec["b2"], eps=spec["eps"])
  for name, p in named.items():
    key = torch_peer.flax_name(name)
    p.grad = torch.from_numpy(torch_peer.torch_layout(key, want_grads[key]))
  opt.update(torch.tensor(lr), torch.tensor(wd))
  for name, p in named.items():
    key = torch_peer.flax_name(name)
    np.testing.assert_allclose(p.detach().numpy(), torch_peer.torch_layout(key, want_params[key]),
                               rtol=1e-6, atol=1e-9, err_msg=name)

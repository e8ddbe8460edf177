"""The anchor-aimed regularisers and the per-cell head of SequenceClassifier."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cardiac_jax import config_lib, models, optim, scaling
from cardiac_jax.errors import ConfigError

B, L, F, C = 64, 6, 5, 3


def _model(**kw):
  args = dict(num_classes=C, length=L, width=8, depth=1, num_heads=2, mlp_ratio=2,
              dropout_rates=(0.0,), norm="layer")
  args.update(kw)
  return models.SequenceClassifier(**args)


def _batch(seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(B, L, F)).astype(np.float32) * np.array([3, 2, 1, 0.5, 1], np.float32)
  mask = np.ones((B, L), np.float32)
  mask[0, 3:] = 0.0        # last visible step is 2
  mask[1, 1:] = 0.0        # a single visible step
  mask[2, :] = 0.0         # nothing visible
  return x, mask


def _train_logits(model, variables, x, mask, seed):
  out, _ = model.apply(variables, x, mask, train=True, rngs={"dropout": jax.random.key(seed)},
                       mutable=["batch_stats"])
  return np.asarray(out)


def test_drop_steps_keeps_the_last_visible_step_and_hides_only_visible_ones():
  _, mask = _batch()
  visible = jnp.asarray(mask > 0)
  dropped = np.asarray(models.drop_steps(jax.random.key(3), visible, 0.5))
  assert not np.any(dropped & ~np.asarray(visible))            # never reveals a hidden step
  last = L - 1 - np.argmax(mask[:, ::-1] > 0, axis=1)
  rows = np.flatnonzero(mask.any(axis=1))
  assert np.all(dropped[rows, last[rows]])                     # the anchor always stays
  frac = 1 - dropped[3:, :-1].mean()                           # full rows, context steps
  assert 0.4 < frac < 0.6
  assert np.array_equal(np.asarray(models.drop_steps(jax.random.key(3), visible, 0.0)),
                        np.asarray(visible))


def test_feature_noise_spares_day_and_modality_and_scales_with_each_feature():
  x, mask = _batch()
  visible = jnp.asarray(mask > 0)
  noisy = np.asarray(models.add_feature_noise(jax.random.key(0), jnp.asarray(x), visible, 0.5))
  delta = noisy - x
  np.testing.assert_array_equal(delta[..., -2:], 0.0)          # day, modality untouched
  assert np.all(delta[~np.asarray(visible)] == 0.0)            # hidden steps untouched
  vis = np.asarray(visible)
  std = x[vis][:, :-2].std(axis=0)
  ratio = delta[vis][:, :-2].std(axis=0) / std
  np.testing.assert_allclose(ratio, 0.5, rtol=0.15)            # per-feature units


def test_regularisers_act_in_training_only():
  x, mask = _batch()
  plain = _model()
  variables = plain.init(jax.random.key(0), x, mask, train=False)
  for kw in ({"feature_noise": 0.5}, {"step_dropout": 0.5}):
    model = _model(**kw)
    e1 = model.apply(variables, x, mask, train=False)
    np.testing.assert_array_equal(e1, plain.apply(variables, x, mask, train=False))
    t1, t2 = _train_logits(model, variables, x, mask, 1), _train_logits(model, variables, x, mask, 2)
    assert np.abs(t1 - t2).max() > 1e-4
    np.testing.assert_array_equal(_train_logits(plain, variables, x, mask, 1),
                                  _train_logits(plain, variables, x, mask, 2))


def test_cell_head_is_a_linear_classifier_of_the_standardised_last_step():
  x, mask = _batch()
  model = _model(cell_head=True, norm="batch")
  variables = model.init(jax.random.key(0), x, mask, train=False)
  assert set(variables["params"]) >= {"cell_head", "head"}
  assert "cell_norm" in variables["batch_stats"]
  # Zero the sequence head: the logits must be the cell head's alone, a function of
  # the last visible step only (changing any earlier step leaves them unchanged).
  params = jax.tree_util.tree_map(lambda a: a, variables["params"])
  params["head"] = jax.tree.map(jnp.zeros_like, params["head"])
  v = {"params": params, "batch_stats": variables["batch_stats"]}
  x2 = x.copy()
  x2[:, :-1] += 5.0
  x2[0, 2] = x[0, 2]         # row 0's last visible step is 2
  x2[0, 3:] += 5.0           # (its hidden steps may change too)
  x2[1, 0] = x[1, 0]         # row 1's only visible step
  out1 = np.asarray(model.apply(v, x, mask, train=False))
  out2 = np.asarray(model.apply(v, x2, mask, train=False))
  np.testing.assert_allclose(out1, out2, atol=1e-5)
  # ... and linear in the last step's features.
  last = x[np.arange(B), L - 1 - np.argmax(mask[:, ::-1] > 0, axis=1)]
  stats = variables["batch_stats"]["cell_norm"]
  z = (last - np.asarray(stats["mean"])) / np.sqrt(np.asarray(stats["var"]) + 1e-5)
  k, b = params["cell_head"]["kernel"], params["cell_head"]["bias"]
  rows = np.flatnonzero(mask.any(axis=1))
  np.testing.assert_allclose(out1[rows], (z @ np.asarray(k) + np.asarray(b))[rows], atol=1e-4)


def test_branch_dropout_drops_whole_sequence_branches_per_example():
  x, mask = _batch()
  model = _model(cell_head=True, branch_dropout=0.5)
  variables = model.init(jax.random.key(0), x, mask, train=False)
  params = dict(variables["params"])
  params["cell_head"] = jax.tree.map(jnp.zeros_like, params["cell_head"])
  v = {"params": params, "batch_stats": variables["batch_stats"]}
  out = _train_logits(model, v, x, mask, 7)             # sequence branch alone, or nothing
  full = np.asarray(model.apply(v, x, mask, train=False))
  rows = np.flatnonzero(np.abs(full).max(axis=1) > 1e-4)
  dropped = np.all(np.abs(out[rows]) < 1e-7, axis=1)
  assert 0.3 < dropped.mean() < 0.7
  kept = ~dropped
  # Kept rows are the sequence logits scaled by 1 / (1 - p) (inverted dropout).
  np.testing.assert_allclose(out[rows][kept], 2.0 * full[rows][kept], rtol=1e-4, atol=1e-5)


def test_config_passes_the_options_and_validates_them():
  config = config_lib.preset("debug")
  config.model.update(feature_noise=0.3, step_dropout=0.2, cell_head=True, branch_dropout=0.4)
  m = models.model_from_config(config, C, L)
  assert (m.feature_noise, m.step_dropout, m.cell_head, m.branch_dropout) == (0.3, 0.2, True, 0.4)
  for field, bad in (("step_dropout", 1.0), ("branch_dropout", -0.1), ("feature_noise", -1.0)):
    c = config_lib.preset("debug")
    c.model[field] = bad
    with pytest.raises(ConfigError, match=f"model.{field}"):
      scaling.resolve_config(c, 100)


def test_ramp_epochs_finishes_the_regularisation_ramps_early():
  config = scaling.resolve_config(config_lib.preset("debug"), 100)
  config.train.ramp_epochs = 2.0
  s = optim.make_schedules(config, steps_per_epoch=10, total_steps=100)
  assert float(s.label_smoothing(0)) == pytest.approx(config.train.label_smoothing_start)
  assert float(s.label_smoothing(20)) == pytest.approx(config.train.label_smoothing_end)
  assert float(s.weight_decay(10)) == pytest.approx(
      (config.train.weight_decay_start + config.train.weight_decay_end) / 2)
  config.train.ramp_epochs = 0.0
  s = optim.make_schedules(config, steps_per_epoch=10, total_steps=100)
  assert float(s.label_smoothing(50)) == pytest.approx(
      (config.train.label_smoothing_start + config.train.label_smoothing_end) / 2)


def test_branch_gate_scales_the_sequence_branch_in_evaluation_only():
  x, mask = _batch()
  model = _model(cell_head=True)
  variables = model.init(jax.random.key(0), x, mask, train=False)
  assert float(variables["batch_stats"]["branch_gate"]) == 1.0
  params = dict(variables["params"])
  cell_only = dict(params, head=jax.tree.map(jnp.zeros_like, params["head"]))
  stats0 = dict(variables["batch_stats"], branch_gate=jnp.zeros(()))
  gated = model.apply({"params": params, "batch_stats": stats0}, x, mask, train=False)
  ref = model.apply({"params": cell_only, "batch_stats": variables["batch_stats"]}, x, mask,
                    train=False)
  np.testing.assert_allclose(gated, ref, atol=1e-6)     # gate 0 = the cell head alone
  stats_half = dict(variables["batch_stats"], branch_gate=jnp.asarray(0.5))
  half = model.apply({"params": params, "batch_stats": stats_half}, x, mask, train=False)
  full = model.apply(variables, x, mask, train=False)
  np.testing.assert_allclose(half, (np.asarray(full) + np.asarray(ref)) / 2, atol=1e-5)
  # Training ignores the gate (the branch is trained at full weight).
  t0, _ = model.apply({"params": params, "batch_stats": stats0}, x, mask, train=True,
                      rngs={"dropout": jax.random.key(1)}, mutable=["batch_stats"])
  t1, _ = model.apply(variables, x, mask, train=True, rngs={"dropout": jax.random.key(1)},
                      mutable=["batch_stats"])
  np.testing.assert_array_equal(np.asarray(t0), np.asarray(t1))


def test_the_cell_head_reads_the_clean_last_step_even_under_feature_noise():
  x, mask = _batch()
  model = _model(cell_head=True, feature_noise=2.0, step_dropout=0.5)
  variables = model.init(jax.random.key(0), x, mask, train=False)
  params = dict(variables["params"])
  params["head"] = jax.tree.map(jnp.zeros_like, params["head"])     # cell head alone
  v = {"params": params, "batch_stats": variables["batch_stats"]}
  a = _train_logits(model, v, x, mask, 1)
  b = _train_logits(model, v, x, mask, 2)
  np.testing.assert_allclose(a, b, atol=1e-6)      # the noise reaches the sequence branch only

"""SequenceClassifier: shapes, dtypes, parameter count, masking, dropout, batch stats."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cardiac_jax import config_lib, models, scaling
from cardiac_jax.errors import ConfigError

B, L, F, C = 4, 6, 5, 3
WIDTH, DEPTH, HEADS, RATIO = 8, 2, 2, 2


def _model(norm="layer", dtype=jnp.float32, rates=(0.1, 0.3), attention_dropout=0.0,
           pooling="mean_last", input_dropout=0.0):
  return models.SequenceClassifier(
      num_classes=C, length=L, width=WIDTH, depth=DEPTH, num_heads=HEADS,
      mlp_ratio=RATIO, dropout_rates=rates, attention_dropout=attention_dropout,
      input_dropout=input_dropout, norm=norm, pooling=pooling, dtype=dtype)


def _batch(seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(B, L, F)).astype(np.float32)
  mask = np.ones((B, L), np.float32)
  mask[0, 4:] = 0.0        # a short sequence
  mask[1, 1:] = 0.0        # a single visible step
  mask[2, :] = 0.0         # nothing visible: must not break pooling
  return x, mask


@functools.lru_cache(maxsize=None)
def _variables(norm, dtype=jnp.float32):
  x, mask = _batch()
  return _model(norm, dtype).init(jax.random.key(0), x, mask, train=False)


def _apply(model, variables, x, mask, train, seed=1):
  """(logits, updated state) in either mode."""
  mutable = ["batch_stats"] if train and "batch_stats" in variables else False
  out = model.apply(variables, x, mask, train=train, mutable=mutable,
                    rngs={"dropout": jax.random.key(seed)} if train else None)
  return out if mutable else (out, {})


@pytest.mark.parametrize("norm", models.NORMS)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_output_shape_and_dtypes(norm, dtype):
  x, mask = _batch()
  model = _model(norm, dtype)
  variables = _variables(norm, dtype)
  for train in (False, True):
    logits, new_state = _apply(model, variables, x, mask, train)
    assert logits.shape == (B, C) and logits.dtype == jnp.float32
    assert np.all(np.isfinite(logits))
  # Parameters and BatchNorm statistics stay float32 whatever the compute dtype.
  assert {a.dtype for a in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
  assert {a.dtype for a in jax.tree.leaves(new_state)} <= {jnp.dtype(jnp.float32)}
  assert ("batch_stats" in variables) == (norm == "batch")


@pytest.mark.parametrize("norm", models.NORMS)
def test_parameter_count_matches_formula(norm):
  w, hidden = WIDTH, RATIO * WIDTH
  norm_params = 2 * w
  block = (norm_params + (w * 3 * w + 3 * w) + (w * w + w)
           + norm_params + (w * hidden + hidden) + (hidden * w + w))
  expected = ((F * w + w) + norm_params + L * w + DEPTH * block + norm_params
              + (2 * w * C + C))                       # mean_last: the head sees 2w
  assert models.count_params(_variables(norm)["params"]) == expected


@pytest.mark.parametrize("norm", models.NORMS)
@pytest.mark.parametrize("train", [False, True])
def test_hidden_steps_have_no_influence(norm, train):
  """Attention keys, BatchNorm statistics and pooling all ignore hidden steps."""
  x, mask = _batch()
  model, variables = _model(norm), _variables(norm)
  noisy = np.where(mask[..., None] > 0, x,
                   100.0 * np.random.default_rng(5).normal(size=x.shape)).astype(np.float32)
  logits, state = _apply(model, variables, x, mask, train)
  logits_noisy, state_noisy = _apply(model, variables, noisy, mask, train)
  np.testing.assert_allclose(logits, logits_noisy, rtol=1e-5, atol=1e-5)
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(state_noisy)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  # Not vacuous: a visible step does change the result.
  moved = x.copy()
  moved[0, 0] += 1.0
  logits_moved, _ = _apply(model, variables, moved, mask, train)
  assert np.abs(np.asarray(logits_moved[0] - logits[0])).max() > 1e-4


def test_all_hidden_row_pools_to_zero():
  """With no visible step the head sees zeros, so the logits are the head bias."""
  x, mask = _batch()
  variables = _variables("layer")
  logits = _model("layer").apply(variables, x, mask, train=False)
  np.testing.assert_allclose(logits[2], variables["params"]["head"]["bias"], atol=1e-6)


def test_pooling_modes_use_the_last_visible_step():
  """"last" reads exactly the last visible step; "mean" does not single it out."""
  h = jnp.asarray(np.random.default_rng(0).normal(size=(B, L, WIDTH)), jnp.float32)
  _, mask = _batch()
  visible = jnp.asarray(mask > 0)
  last = models.pool(h, visible, "last")
  np.testing.assert_allclose(last[0], h[0, 3])          # mask[0, 4:] hidden
  np.testing.assert_allclose(last[1], h[1, 0])          # one visible step
  np.testing.assert_allclose(last[2], 0.0)              # nothing visible
  np.testing.assert_allclose(last[3], h[3, L - 1])
  mean = models.pool(h, visible, "mean")
  np.testing.assert_allclose(mean[0], h[0, :4].mean(0), rtol=1e-6, atol=1e-6)
  both = models.pool(h, visible, "mean_last")
  np.testing.assert_allclose(both, jnp.concatenate([mean, last], -1))
  x, mask = _batch()
  for pooling in models.POOLINGS:
    model = _model("layer", pooling=pooling)
    variables = model.init(jax.random.key(0), x, mask, train=False)
    assert model.apply(variables, x, mask, train=False).shape == (B, C)
  with pytest.raises(ConfigError, match="pooling"):
    _model("layer", pooling="max").init(jax.random.key(0), x, mask, train=False)


def test_dropout_rates_progressive():
  assert models.dropout_rates(3, 0.1, 0.3) == pytest.approx((0.1, 0.2, 0.3))
  assert models.dropout_rates(1, 0.1, 0.3) == (0.1,)
  rates = models.dropout_rates(5, 0.0, 0.4)
  assert len(rates) == 5 and np.all(np.diff(rates) > 0)
  with pytest.raises(ConfigError):
    models.dropout_rates(0, 0.1, 0.3)


def test_model_from_config():
  config = scaling.resolve_config(config_lib.base_config(), 100)
  model = models.model_from_config(config, num_classes=6, length=80)
  assert (model.width, model.depth, model.num_heads) == (48, 2, 4)
  assert model.dropout_rates == pytest.approx((0.1, 0.3))
  assert model.norm == "batch" and model.dtype == jnp.float32   # "auto" on CPU


def test_resolve_dtype():
  assert models.resolve_dtype("auto") == jnp.float32        # tests run on CPU
  assert models.resolve_dtype("bfloat16") == jnp.bfloat16
  with pytest.raises(ConfigError, match="model.dtype"):
    models.resolve_dtype("float16")


@pytest.mark.parametrize("norm", models.NORMS)
def test_train_is_stochastic_eval_deterministic(norm):
  x, mask = _batch()
  model = _model(norm, rates=(0.5, 0.5), attention_dropout=0.2)
  variables = model.init(jax.random.key(0), x, mask, train=False)
  a, _ = _apply(model, variables, x, mask, True, seed=1)
  b, _ = _apply(model, variables, x, mask, True, seed=2)
  c, _ = _apply(model, variables, x, mask, True, seed=1)
  assert np.abs(np.asarray(a - b)).max() > 1e-4
  np.testing.assert_array_equal(a, c)
  e1, _ = _apply(model, variables, x, mask, False)
  e2, _ = _apply(model, variables, x, mask, False)
  np.testing.assert_array_equal(e1, e2)
  with pytest.raises(Exception, match="dropout"):
    model.apply(variables, x, mask, train=True, mutable=["batch_stats"])


def test_input_dropout_is_the_only_noise_when_block_dropout_is_off():
  x, mask = _batch()
  quiet = _model("layer", rates=(0.0, 0.0))
  noisy = _model("layer", rates=(0.0, 0.0), input_dropout=0.5)
  variables = quiet.init(jax.random.key(0), x, mask, train=False)
  # Same parameters either way: the switch adds no weights.
  assert jax.tree.structure(variables) == jax.tree.structure(
      noisy.init(jax.random.key(0), x, mask, train=False))
  q1, _ = _apply(quiet, variables, x, mask, True, seed=1)
  q2, _ = _apply(quiet, variables, x, mask, True, seed=2)
  np.testing.assert_array_equal(q1, q2)
  n1, _ = _apply(noisy, variables, x, mask, True, seed=1)
  n2, _ = _apply(noisy, variables, x, mask, True, seed=2)
  assert np.abs(np.asarray(n1 - n2)).max() > 1e-4
  e1, _ = _apply(noisy, variables, x, mask, False)
  e2, _ = _apply(quiet, variables, x, mask, False)
  np.testing.assert_array_equal(e1, e2)            # evaluation never drops inputs


def test_model_from_config_passes_input_dropout():
  config = config_lib.preset("debug")
  config.model.width, config.model.depth = 32, 1
  config.model.input_dropout = 0.25
  assert models.model_from_config(config, C, L).input_dropout == 0.25


def test_batch_stats_update_in_train_mode_only():
  x, mask = _batch()
  model, variables = _model("batch"), _variables("batch")
  _, state = _apply(model, variables, x, mask, True)
  before = variables["batch_stats"]["norm_embed"]
  after = state["batch_stats"]["norm_embed"]
  assert np.abs(np.asarray(after["mean"] - before["mean"])).max() > 1e-4
  # The update is a momentum-0.9 step towards the mean over visible steps only.
  kernel = variables["params"]["embed"]
  h = x @ np.asarray(kernel["kernel"]) + np.asarray(kernel["bias"])
  visible_mean = h[mask > 0].mean(axis=0)
  np.testing.assert_allclose(after["mean"], 0.9 * before["mean"] + 0.1 * visible_mean,
                             rtol=1e-4, atol=1e-5)
  # Eval mode does not mutate (and so cannot update) the statistics.
  logits = model.apply(variables, x, mask, train=False)
  assert logits.shape == (B, C)


def test_dropout_masks_are_unbiased_uniform_and_keyed():
  """The counter-hash dropout keeps 1 - rate of the values, scaled to keep the mean."""
  x = jnp.ones((64, 80, 161), jnp.float32)           # odd last axis: the pairing's edge
  layer = models.Dropout(0.3)
  out = np.asarray(layer.apply({}, x, rngs={"dropout": jax.random.key(0)}))
  kept = out > 0
  n = kept.size
  assert abs(kept.mean() - 0.7) < 4 * np.sqrt(0.21 / n)
  assert abs(out.mean() - 1.0) < 5e-3
  np.testing.assert_allclose(out[kept], 65536 / round(0.7 * 65536), rtol=1e-6)
  # Neighbours (the two halves of one hash) and rows are uncorrelated.
  k = kept.astype(np.float64)
  assert abs(np.corrcoef(k[..., :-1].ravel(), k[..., 1:].ravel())[0, 1]) < 0.01
  assert abs(np.corrcoef(k[:-1].ravel(), k[1:].ravel())[0, 1]) < 0.01
  other = np.asarray(layer.apply({}, x, rngs={"dropout": jax.random.key(1)})) > 0
  assert 0.55 < np.mean(kept == other) < 0.63        # independent: 0.7^2 + 0.3^2 = 0.58
  again = np.asarray(layer.apply({}, x, rngs={"dropout": jax.random.key(0)})) > 0
  np.testing.assert_array_equal(kept, again)
  u = np.asarray(models.uniform16(jax.random.key(2), (1 << 16,))).astype(np.int64)
  counts = np.bincount(u >> 12, minlength=16)
  assert ((counts - 4096) ** 2 / 4096).sum() < 40     # chi-square, 15 dof (p ~ 5e-4)

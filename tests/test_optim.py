"""The optimizer chain: fixed structure, scheduled decoupled decay, clipping, lr."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cardiac_jax import config_lib, optim


def _config(**train):
  config = config_lib.base_config()
  for k, v in train.items():
    config.train[k] = v
  return config


def _params():
  return {
      "dense": {"kernel": jnp.full((3, 2), 2.0), "bias": jnp.full((2,), 3.0)},
      "norm": {"scale": jnp.ones((2,)), "bias": jnp.zeros((2,))},
      "pos_embedding": jnp.full((4, 2), 5.0),
  }


def _zeros_like(tree):
  return jax.tree.map(jnp.zeros_like, tree)


def test_schedules_from_config_in_steps():
  config = _config(learning_rate=1e-3, min_learning_rate=1e-5, warmup_epochs=1.0,
                   first_cycle_epochs=2.0, ramp_epochs=0.0)     # ramps span the run
  s = optim.make_schedules(config, steps_per_epoch=10, total_steps=100)
  assert float(s.lr(0)) == pytest.approx(1e-5)
  assert float(s.lr(10)) == pytest.approx(1e-3)          # warmup end = 1 epoch
  assert float(s.lr(30)) == pytest.approx(1e-3)          # restart after 2 epochs
  assert float(s.label_smoothing(0)) == pytest.approx(0.15)
  assert float(s.label_smoothing(100)) == pytest.approx(0.045)
  assert float(s.weight_decay(0)) == pytest.approx(0.01)
  assert float(s.weight_decay(100)) == pytest.approx(0.10)


def test_chain_structure_independent_of_config():
  params = _params()
  states = []
  for train in (dict(grad_clip_norm=1.0), dict(grad_clip_norm=0.0),
                dict(grad_clip_norm=50.0, b1=0.8, cycle_mult=1.0,
                     weight_decay_start=0.0, weight_decay_end=0.0)):
    config = _config(**train)
    tx = optim.make_optimizer(config, optim.make_schedules(config, 5, 50))
    states.append(tx.init(params))
  structures = {jax.tree.structure(s) for s in states}
  assert len(structures) == 1
  shapes = [jax.tree.map(jnp.shape, s) for s in states]
  assert shapes[0] == shapes[1] == shapes[2]


def test_decoupled_weight_decay_on_kernels_with_scheduled_coefficient():
  config = _config(weight_decay_start=0.01, weight_decay_end=0.10)
  schedules = optim.make_schedules(config, steps_per_epoch=10, total_steps=20)
  tx = optim.make_optimizer(config, schedules)
  params = _params()
  state = tx.init(params)
  update = jax.jit(tx.update)
  for step in range(21):
    updates, state = update(_zeros_like(params), state, params)
    if step in (0, 10, 20):
      lr, wd = float(schedules.lr(step)), float(schedules.weight_decay(step))
      np.testing.assert_allclose(updates["dense"]["kernel"], -lr * wd * 2.0, rtol=1e-5)
      for leaf in (updates["dense"]["bias"], updates["norm"]["scale"],
                   updates["norm"]["bias"], updates["pos_embedding"]):
        np.testing.assert_array_equal(leaf, 0.0)
  # The two checked steps really used different coefficients.
  assert float(schedules.weight_decay(0)) != pytest.approx(float(schedules.weight_decay(20)))


def _two_step(config):
  """Jitted: first_scale -> step-2 update after a step-1 gradient first_scale * ones."""
  tx = optim.make_optimizer(config, optim.make_schedules(config, 5, 50))
  params = _params()
  unit = jax.tree.map(jnp.ones_like, params)

  @jax.jit
  def run(first_scale):
    state = tx.init(params)
    _, state = tx.update(jax.tree.map(lambda g: first_scale * g, unit), state, params)
    small = jax.tree.map(lambda g: -0.2 * g, unit)   # global norm ~0.85, below 1
    updates, _ = tx.update(small, state, params)
    return jnp.concatenate([jnp.ravel(u) for u in jax.tree.leaves(updates)])

  return lambda first_scale: np.asarray(run(jnp.float32(first_scale)))


def test_clipping_bounds_what_adam_sees():
  """Above the threshold a gradient is rescaled to norm grad_clip_norm before Adam,
  so step 2 cannot tell a 0.5x from a 5x step-1 gradient (norms ~2 and ~21); without clipping it can."""
  clipped = _two_step(
      _config(grad_clip_norm=1.0, weight_decay_start=0.0, weight_decay_end=0.0))
  free = _two_step(
      _config(grad_clip_norm=0.0, weight_decay_start=0.0, weight_decay_end=0.0))
  np.testing.assert_allclose(clipped(0.5), clipped(5.0), rtol=1e-5)
  a, b = free(0.5), free(5.0)
  assert np.max(np.abs(a - b) / np.abs(a)) > 0.5
  # The clipped run equals an unclipped one fed the step-1 gradient at norm 1.
  np.testing.assert_allclose(clipped(5.0), free(1.0 / np.sqrt(_params_size())), rtol=1e-4)


def _params_size():
  return sum(np.size(p) for p in jax.tree.leaves(_params()))


def test_update_scales_with_scheduled_learning_rate():
  """A constant gradient makes Adam's direction exactly sign(g), so the update
  magnitude is the scheduled lr(t) at each step."""
  config = _config(weight_decay_start=0.0, weight_decay_end=0.0, learning_rate=1e-2,
                   min_learning_rate=1e-4, warmup_epochs=1.0, first_cycle_epochs=2.0)
  schedules = optim.make_schedules(config, steps_per_epoch=4, total_steps=40)
  tx = optim.make_optimizer(config, schedules)
  params = _params()
  state = tx.init(params)
  grads = jax.tree.map(lambda p: 0.5 * jnp.ones_like(p), params)   # below the clip norm
  update = jax.jit(tx.update)
  seen = []
  for step in range(13):
    updates, state = update(grads, state, params)
    lr = float(schedules.lr(step))
    np.testing.assert_allclose(updates["dense"]["kernel"], -lr, rtol=1e-4)
    seen.append(lr)
  assert max(seen) / min(seen) > 10   # the check covered warmup, decay and a restart


def test_average_decay_spans_epochs_and_warms_up():
  assert optim.average_decay(0.0, 10) is None
  decay = optim.average_decay(2.0, 10)                   # horizon 20 steps
  assert float(decay(0)) == pytest.approx(0.1)           # (1 + 0) / (10 + 0)
  assert float(decay(10_000)) == pytest.approx(1.0 - 1.0 / 20)
  assert float(decay(5)) < float(decay(50)) <= 1.0 - 1.0 / 20


def test_parameter_average_leaves_training_alone_and_is_what_eval_reads():
  params = _params()
  plain_cfg = _config(average_epochs=0.0)
  avg_cfg = _config(average_epochs=1.0)
  plain = optim.make_optimizer(plain_cfg, optim.make_schedules(plain_cfg, 4, 40))
  avg_sched = optim.make_schedules(avg_cfg, 4, 40)
  averaged = optim.make_optimizer(avg_cfg, avg_sched)
  s_plain, s_avg = plain.init(params), averaged.init(params)
  assert optim.eval_params(params, s_plain) is params    # no average: the weights
  p_plain = p_avg = params
  expected = jax.tree.map(jnp.array, params)
  rng = np.random.default_rng(0)
  for step in range(6):
    grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32),
                         params)
    u_plain, s_plain = plain.update(grads, s_plain, p_plain)
    u_avg, s_avg = averaged.update(grads, s_avg, p_avg)
    jax.tree.map(np.testing.assert_array_equal, u_plain, u_avg)   # same trajectory
    p_plain = optax_apply(p_plain, u_plain)
    p_avg = optax_apply(p_avg, u_avg)
    d = float(avg_sched.average_decay(step))
    expected = jax.tree.map(lambda e, p: d * e + (1 - d) * p, expected, p_avg)
  got = optim.eval_params(p_avg, s_avg)
  jax.tree.map(lambda g, e: np.testing.assert_allclose(g, e, rtol=1e-6), got, expected)
  assert not np.allclose(got["dense"]["kernel"], p_avg["dense"]["kernel"])


def optax_apply(params, updates):
  return jax.tree.map(lambda p, u: p + u, params, updates)

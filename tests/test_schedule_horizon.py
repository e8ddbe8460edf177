"""The joined warm-restart cosine over a finite horizon (``total_steps``).

``test_schedules.py`` pins the schedule's values; these check what joining
cycles up to a horizon adds: a run whose ``num_epochs`` grows on resume sees the
same rates for every step it already took, and the horizon covers the run.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cardiac_jax import config_lib
from cardiac_jax import optim
from cardiac_jax import schedules


@pytest.mark.parametrize("mult", [1.0, 1.1, 2.0])
def test_longer_horizon_keeps_every_earlier_value(mult):
  short = jax.jit(schedules.warm_restart_cosine(1e-3, 1e-5, 7, 13, mult, 0.8, total_steps=60))
  long = jax.jit(schedules.warm_restart_cosine(1e-3, 1e-5, 7, 13, mult, 0.8,
                                               total_steps=6000))
  steps = jnp.arange(60)
  np.testing.assert_array_equal(np.asarray(short(steps)), np.asarray(long(steps)))
  # The longer run really restarts again after the short horizon.
  later = np.asarray(long(jnp.arange(60, 6000)))
  assert later.max() > 10 * later.min()


def test_horizon_joins_the_cycles_that_reach_it():
  # Warmup 10, cycles of 100, 200, 400: step 310 starts the third cycle.
  fn = schedules.warm_restart_cosine(1e-3, 1e-5, 10, 100, 2.0, total_steps=311)
  assert float(fn(310)) == pytest.approx(1e-3)
  assert float(fn(309)) == pytest.approx(1e-5, rel=0.01)


def test_resume_with_more_epochs_keeps_the_learning_rate():
  """make_schedules as a run and its resumption with num_epochs 3 -> 9 build them."""
  config = config_lib.base_config()
  config.train.first_cycle_epochs = 1.0
  config.train.cycle_mult = 1.5
  first = optim.make_schedules(config, steps_per_epoch=10, total_steps=30)
  resumed = optim.make_schedules(config, steps_per_epoch=10, total_steps=90)
  steps = jnp.arange(30)
  np.testing.assert_array_equal(np.asarray(jax.vmap(first.lr)(steps)),
                                np.asarray(jax.vmap(resumed.lr)(steps)))

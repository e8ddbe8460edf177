"""Schedule values at their key points, on Python ints and under jit."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cardiac_jax import schedules
from cardiac_jax.errors import ConfigError

BASE, MIN, WARM, T0 = 1e-3, 1e-5, 10, 100


def _lr(step, **kw):
  args = dict(base_lr=BASE, min_lr=MIN, warmup_steps=WARM, first_cycle_steps=T0)
  args.update(kw)
  return float(schedules.warm_restart_cosine(**args)(step))


def test_steps_per_epoch_drops_remainder():
  assert schedules.steps_per_epoch(100, 16) == 6
  assert schedules.steps_per_epoch(16, 16) == 1


def test_steps_per_epoch_rejects_split_smaller_than_batch():
  with pytest.raises(ConfigError, match="batch_size"):
    schedules.steps_per_epoch(10, 16)
  with pytest.raises(ConfigError):
    schedules.steps_per_epoch(10, 0)


def test_warmup_start_and_end():
  assert _lr(0) == pytest.approx(MIN)
  assert _lr(WARM // 2) == pytest.approx((MIN + BASE) / 2)
  assert _lr(WARM) == pytest.approx(BASE)


def test_no_warmup_starts_at_peak():
  assert _lr(0, warmup_steps=0) == pytest.approx(BASE)


def test_first_restart():
  restart = WARM + T0
  assert _lr(restart - 1) == pytest.approx(MIN, rel=0.05)
  assert _lr(restart) == pytest.approx(BASE)
  assert _lr(WARM + T0 // 2) == pytest.approx((BASE + MIN) / 2)


def test_second_restart_with_cycle_mult_and_decay():
  # Cycle 1 lasts 2 * T0, so the second restart is at WARM + 3 * T0.
  second = WARM + 3 * T0
  assert _lr(second - 1, cycle_decay=0.5) == pytest.approx(MIN, rel=0.05)
  assert _lr(second, cycle_decay=0.5) == pytest.approx(BASE * 0.25)
  assert _lr(WARM + T0, cycle_decay=0.5) == pytest.approx(BASE * 0.5)
  # Mid-point of cycle 1 (length 200): half way between its peak and the floor.
  assert _lr(WARM + T0 + 100, cycle_decay=0.5) == pytest.approx((BASE * 0.5 + MIN) / 2)


def test_decayed_peaks_never_fall_below_the_floor():
  """With a strong cycle_decay every cycle still anneals down to min_lr, never up."""
  kw = dict(cycle_decay=0.5, cycle_mult=1.0, warmup_steps=0)
  steps = np.arange(0, 12 * T0)
  values = np.array([_lr(int(s), **kw) for s in steps[::7]])
  assert values.min() >= MIN * (1 - 1e-6)
  late = [_lr(int(s), **kw) for s in range(10 * T0, 11 * T0, 10)]   # peak 1e-3/1024 < MIN
  assert np.all(np.diff(late) <= 1e-12)


def test_restart_steps_reference():
  assert schedules.restart_steps(100, 2.0, 3) == [100, 300, 700]
  assert schedules.restart_steps(13, 1.0, 3) == [13, 26, 39]
  # Real-valued boundaries 10, 21, 33.1, 46.41 -> first whole step not before.
  assert schedules.restart_steps(10, 1.1, 4) == [10, 21, 34, 47]


# In (2.5, 12), (3.0, 41), (4.0, 12), (1.1, 47) the float32 log estimate of the
# cycle index is off by one at some restart, so the correction is exercised;
# (1.1, 10/21/25) have non-integer or tie (52.5) real-valued boundaries.
@pytest.mark.parametrize("mult,t0", [(2.0, 7), (3.0, 5), (1.5, 4), (1.0, 13),
                                     (2.5, 12), (3.0, 41), (4.0, 12), (1.1, 47),
                                     (1.1, 10), (1.1, 21), (1.1, 25)])
def test_every_restart_boundary_hits_the_peak(mult, t0):
  """Float rounding in the closed-form cycle index must not push a restart to min_lr."""
  fn = jax.jit(schedules.warm_restart_cosine(BASE, MIN, 0, t0, mult))
  restarts = schedules.restart_steps(t0, mult, 8)
  peaks = np.asarray(fn(jnp.asarray(restarts)))
  ends = np.asarray(fn(jnp.asarray(restarts) - 1))
  np.testing.assert_allclose(peaks, BASE, rtol=1e-5)
  # The step before a restart is the last step of the previous cycle.
  lengths = np.diff([0] + restarts)
  expected = MIN + 0.5 * (BASE - MIN) * (1 + np.cos(np.pi * (lengths - 1) / lengths))
  np.testing.assert_allclose(ends, expected, rtol=1e-4)
def test_cycle_mult_one_is_periodic():
  assert _lr(WARM + 3 * T0 + 17, cycle_mult=1.0) == pytest.approx(
      _lr(WARM + 17, cycle_mult=1.0), rel=1e-5)


def test_monotone_decrease_inside_a_cycle():
  fn = schedules.warm_restart_cosine(BASE, MIN, WARM, T0)
  values = np.asarray(jax.vmap(fn)(jnp.arange(WARM, WARM + T0)))
  assert np.all(np.diff(values) < 0)
  assert values.min() >= MIN


def test_final_value_after_many_steps():
  # Steps 10 + 100 + 200 + 400 = 710 starts cycle 3; 709 is the end of cycle 2.
  assert _lr(709) == pytest.approx(MIN, rel=0.01)
  assert _lr(710) == pytest.approx(BASE)


def test_same_values_under_jit():
  fn = schedules.warm_restart_cosine(BASE, MIN, WARM, T0, 2.0, 0.7)
  steps = [0, 3, 10, 55, 109, 110, 310, 1234]
  jitted = jax.jit(fn)
  for s in steps:
    assert float(jitted(jnp.asarray(s, jnp.int32))) == pytest.approx(float(fn(s)), rel=1e-6)


def test_invalid_arguments():
  with pytest.raises(ConfigError):
    schedules.warm_restart_cosine(BASE, MIN, 0, 0)
  with pytest.raises(ConfigError):
    schedules.warm_restart_cosine(BASE, MIN, 0, 10, cycle_mult=0.5)
  with pytest.raises(ConfigError):
    schedules.linear_schedule(0.0, 1.0, 0)


def test_linear_schedule_points_and_clip():
  fn = schedules.linear_schedule(0.15, 0.045, 100)
  assert float(fn(0)) == pytest.approx(0.15)
  assert float(fn(50)) == pytest.approx(0.0975)
  assert float(fn(100)) == pytest.approx(0.045)
  assert float(fn(1000)) == pytest.approx(0.045)
  assert float(jax.jit(fn)(jnp.asarray(50))) == pytest.approx(0.0975)
  rising = schedules.linear_schedule(0.01, 0.10, 10)
  assert float(rising(5)) == pytest.approx(0.055)

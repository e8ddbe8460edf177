"""Step-indexed schedules and the one conversion from dataset size to steps.

Every schedule is a plain function of the optimizer step that works on Python
ints and on traced ``jnp`` scalars, so the same function is unit-tested here
and consumed inside the jitted train step (by optax and for label smoothing).
"""
from __future__ import annotations

import math

import jax.numpy as jnp
import optax

from cardiac_jax.errors import ConfigError


def steps_per_epoch(n_train: int, batch_size: int) -> int:
  """Number of full batches per epoch (the remainder is dropped).

  This is the only place that turns a dataset size into steps. The train loop
  uses full batches only (static shapes under jit), so a training split smaller
  than one batch would train on nothing; that is an error rather than a silent
  zero-step epoch.

  Args:
    n_train: sequences in the training split.
    batch_size: sequences per step.

  Returns:
    ``n_train // batch_size`` (at least 1).

  Raises:
    ConfigError: if ``batch_size <= 0`` or ``n_train < batch_size``.
  """
  if batch_size <= 0:
    raise ConfigError(f"train.batch_size must be positive, got {batch_size}.")
  if n_train < batch_size:
    raise ConfigError(
        f"the training split has {n_train} sequences, fewer than one batch of "
        f"train.batch_size={batch_size}; lower train.batch_size to at most "
        f"{max(n_train, 1)} or generate more sequences.")
  return n_train // batch_size


def linear_schedule(start: float, end: float, total_steps: int) -> optax.Schedule:
  """Linear ramp from ``start`` (step 0) to ``end`` (step ``total_steps``), then flat.

  Used for label smoothing and the weight-decay coefficient, which are annealed
  over the whole run rather than restarted with the learning rate.
  """
  if total_steps <= 0:
    raise ConfigError(f"linear_schedule needs total_steps > 0, got {total_steps}.")
  start, end = float(start), float(end)

  def schedule(step):
    frac = jnp.clip(jnp.asarray(step, jnp.float32) / total_steps, 0.0, 1.0)
    return start + (end - start) * frac

  return schedule


# Float32 error allowed when snapping a real-valued restart to a whole step.
_ABS_TOL, _REL_TOL = 1e-3, 4e-6


def restart_steps(first_cycle_steps: int, cycle_mult: float, n: int) -> list[int]:
  """The first ``n`` restart steps after warmup, computed on the host in float64.

  The reference for ``warm_restart_cosine`` (which computes the same in float32
  under jit) and handy for logging where the restarts fall.
  """
  out = []
  for i in range(1, n + 1):
    if cycle_mult == 1.0:
      out.append(first_cycle_steps * i)
    else:
      exact = first_cycle_steps * (cycle_mult**i - 1.0) / (cycle_mult - 1.0)
      out.append(math.ceil(exact - (_ABS_TOL + _REL_TOL * exact)))
  return out


def warm_restart_cosine(
    base_lr: float,
    min_lr: float,
    warmup_steps: int,
    first_cycle_steps: int,
    cycle_mult: float = 2.0,
    cycle_decay: float = 1.0,
) -> optax.Schedule:
  """Linear warmup, then SGDR cosine annealing with warm restarts.

  Loshchilov & Hutter (2017): cycle ``i`` (0-based, counted after warmup) lasts
  ``first_cycle_steps * cycle_mult**i`` steps, starts at the peak
  ``base_lr * cycle_decay**i`` and anneals to ``min_lr``; the next step jumps
  back to the (decayed) peak. Warmup rises linearly from ``min_lr`` at step 0
  (not from 0, so the first step is not wasted) to ``base_lr`` at
  ``warmup_steps``.

  Restarts fall on whole steps: cycle ``i`` starts at the first step not
  before ``first_cycle_steps * (cycle_mult**i - 1) / (cycle_mult - 1)`` (a
  ceiling, with a tolerance for float32 error; see ``restart_steps``). The
  cycle index is computed in closed form (a log for ``cycle_mult != 1``) so the
  schedule traces under jit; that float32 estimate is corrected by one either
  way against the rounded starts, so a restart step is always the peak and the
  step before it always the end of the previous cycle.

  Args:
    base_lr: peak learning rate of the first cycle (and warmup target).
    min_lr: floor of every cycle and warmup start.
    warmup_steps: linear warmup length (0 = none).
    first_cycle_steps: length of the first cosine cycle (> 0).
    cycle_mult: each cycle is this many times longer than the previous (>= 1).
    cycle_decay: each cycle's peak is this many times the previous peak.

  Returns:
    A function of the step returning a float32 scalar.
  """
  if first_cycle_steps <= 0:
    raise ConfigError(
        f"first_cycle_steps must be positive, got {first_cycle_steps}; raise "
        "train.first_cycle_epochs.")
  if warmup_steps < 0:
    raise ConfigError(f"warmup_steps must be >= 0, got {warmup_steps}.")
  if cycle_mult < 1.0:
    raise ConfigError(f"train.cycle_mult must be >= 1, got {cycle_mult}.")
  base_lr, min_lr = float(base_lr), float(min_lr)
  t0, mult, decay = float(first_cycle_steps), float(cycle_mult), float(cycle_decay)
  geometric = mult != 1.0

  def cycle_start(i):
    """First post-warmup step of cycle ``i`` (a whole number)."""
    if geometric:
      exact = t0 * (mult**i - 1.0) / (mult - 1.0)
      return jnp.ceil(exact - (_ABS_TOL + _REL_TOL * exact))
    return t0 * i

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    t = jnp.maximum(step - warmup_steps, 0.0)
    if geometric:
      i = jnp.floor(jnp.log1p(t * (mult - 1.0) / t0) / math.log(mult))
    else:
      i = jnp.floor(t / t0)
    # Correct a one-off from rounding in log/divide at the exact boundaries.
    i = jnp.where(t >= cycle_start(i + 1.0), i + 1.0, i)
    i = jnp.where(t < cycle_start(i), i - 1.0, i)
    start = cycle_start(i)
    progress = (t - start) / (cycle_start(i + 1.0) - start)
    # Never below the floor: with cycle_decay < 1 the cycles would otherwise rise.
    peak = jnp.maximum(base_lr * decay**i, min_lr)
    cosine = min_lr + 0.5 * (peak - min_lr) * (1.0 + jnp.cos(jnp.pi * progress))
    if warmup_steps == 0:
      return cosine
    warm = min_lr + (base_lr - min_lr) * step / warmup_steps
    return jnp.where(step < warmup_steps, warm, cosine)

  return schedule

"""Step-indexed schedules and the one conversion from dataset size to steps.

Every schedule is an optax schedule (a plain function of the optimizer step
that works on Python ints and on traced ``jnp`` scalars), so the same function
is unit-tested here and consumed inside the jitted train step (by optax and
for label smoothing). The warm-restart cosine is optax's own pieces joined at
restart steps computed on the host, so no float32 arithmetic decides where a
cycle starts.
"""
from __future__ import annotations

import math

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
  over the whole run rather than restarted with the learning rate. Unlike
  ``optax.linear_schedule``, a non-positive length is an error, not a constant.
  """
  if total_steps <= 0:
    raise ConfigError(f"linear_schedule needs total_steps > 0, got {total_steps}.")
  return optax.linear_schedule(float(start), float(end), int(total_steps))


# Restart steps are snapped to whole steps with this tolerance, so a boundary
# that is an integer up to floating-point error (e.g. 10 * 1.1**2) stays there.
_ABS_TOL, _REL_TOL = 1e-3, 4e-6
DEFAULT_CYCLES = 32   # cycles joined when no total_steps is given (int32 steps at most)
_MAX_STEP = 2**31 - 1


def restart_steps(first_cycle_steps: int, cycle_mult: float, n: int) -> list[int]:
  """The first ``n`` restart steps after warmup (the ends of cycles 0..n-1).

  Cycle ``i`` ends at the first step not before
  ``first_cycle_steps * (cycle_mult**i+1 - 1) / (cycle_mult - 1)``, computed on
  the host in float64.
  """
  out = []
  for i in range(1, n + 1):
    if cycle_mult == 1.0:
      out.append(first_cycle_steps * i)
    else:
      exact = first_cycle_steps * (cycle_mult**i - 1.0) / (cycle_mult - 1.0)
      out.append(math.ceil(exact - (_ABS_TOL + _REL_TOL * exact)))
  return out


def _cycles_to_cover(first_cycle_steps: int, cycle_mult: float, warmup_steps: int,
                     total_steps: int | None) -> list[int]:
  """Restart steps of the fewest cycles that reach ``total_steps`` (with warmup)."""
  if total_steps is None:
    ends = restart_steps(first_cycle_steps, cycle_mult, DEFAULT_CYCLES)
    return [e for e in ends if warmup_steps + e <= _MAX_STEP] or ends[:1]
  n = 1
  while warmup_steps + restart_steps(first_cycle_steps, cycle_mult, n)[-1] < total_steps:
    n += 1
  return restart_steps(first_cycle_steps, cycle_mult, n)


def warm_restart_cosine(
    base_lr: float,
    min_lr: float,
    warmup_steps: int,
    first_cycle_steps: int,
    cycle_mult: float = 2.0,
    cycle_decay: float = 1.0,
    total_steps: int | None = None,
) -> optax.Schedule:
  """Linear warmup, then SGDR cosine annealing with warm restarts.

  Loshchilov & Hutter (2017): cycle ``i`` (0-based, counted after warmup) lasts
  about ``first_cycle_steps * cycle_mult**i`` steps (whole steps, see
  ``restart_steps``), starts at the peak ``base_lr * cycle_decay**i`` (never
  below ``min_lr``) and anneals to ``min_lr``; the next step jumps back to the
  (decayed) peak. Warmup rises linearly from ``min_lr`` at step 0 (not from 0,
  so the first step is not wasted) to ``base_lr`` at ``warmup_steps``.

  Built as ``optax.join_schedules`` of ``optax.linear_schedule`` (warmup) and
  one ``optax.cosine_decay_schedule`` per cycle, joined at restart steps
  computed on the host, so a restart step is always the peak and the step
  before it always the end of the previous cycle.

  Args:
    base_lr: peak learning rate of the first cycle (and warmup target).
    min_lr: floor of every cycle and warmup start.
    warmup_steps: linear warmup length (0 = none).
    first_cycle_steps: length of the first cosine cycle (> 0).
    cycle_mult: each cycle is this many times longer than the previous (>= 1).
    cycle_decay: each cycle's peak is this many times the previous peak.
    total_steps: the steps the schedule must cover; enough cycles are joined to
      reach it (a longer run, e.g. ``num_epochs`` raised on resume, joins more
      cycles and keeps every earlier value). After the last joined cycle the
      rate stays at ``min_lr``. None: the first ``DEFAULT_CYCLES`` cycles.

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
  ends = _cycles_to_cover(first_cycle_steps, float(cycle_mult), warmup_steps, total_steps)
  starts = [0] + ends[:-1]
  cycles = []
  for i, (start, end) in enumerate(zip(starts, ends)):
    # Never below the floor: with cycle_decay < 1 the cycles would otherwise rise.
    peak = max(base_lr * float(cycle_decay)**i, min_lr)
    cycles.append(optax.cosine_decay_schedule(peak, end - start, alpha=min_lr / peak)
                  if peak > 0 else optax.constant_schedule(0.0))
  boundaries = [warmup_steps + s for s in starts[1:]]
  if warmup_steps == 0:
    return optax.join_schedules(cycles, boundaries)
  # optax's ramp is (init - end) * frac + end, which loses min_lr << base_lr to
  # float32 cancellation at step 0; a 0 -> 1 ramp is exact at both ends.
  ramp = optax.linear_schedule(0.0, 1.0, warmup_steps)
  warmup = lambda step: min_lr + (base_lr - min_lr) * ramp(step)  # noqa: E731
  return optax.join_schedules([warmup] + cycles, [warmup_steps] + boundaries)

"""Optimizer chain and the schedules it (and the loss) consume.

The chain has one fixed structure for a given ``train.average_epochs`` (which
the config fingerprint covers), so a checkpoint's optimizer state always
restores into a freshly built optimizer:

  clip by global norm → Adam moments → decoupled weight decay (kernels only,
  scheduled coefficient) → scheduled learning rate with the sign flip
  [→ an exponential moving average of the parameters, evaluated in their place].
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from cardiac_jax import schedules as schedules_lib


class Schedules(NamedTuple):
  """Step -> value functions, built once from the config, used inside jit."""
  lr: optax.Schedule
  label_smoothing: optax.Schedule
  weight_decay: optax.Schedule
  average_decay: optax.Schedule | None = None   # None = no parameter average


def make_schedules(config: ml_collections.ConfigDict, steps_per_epoch: int,
                   total_steps: int) -> Schedules:
  """Turns the epoch-based config fields into step schedules.

  Args:
    config: the resolved config (reads ``config.train``).
    steps_per_epoch: from ``schedules.steps_per_epoch`` (the one place for it).
    total_steps: optimizer steps of the whole run; label smoothing and weight
      decay ramp linearly over it, or over ``train.ramp_epochs`` when set (runs
      that early-stop long before ``num_epochs`` would otherwise never get far
      along the ramps), and the learning rate joins the restart cycles that
      reach it.

  Returns:
    ``Schedules(lr, label_smoothing, weight_decay, average_decay)``; the
    average's decay spans ``train.average_epochs`` epochs (None when 0).
  """
  t = config.train
  ramp_epochs = t.get("ramp_epochs")
  ramp_steps = (max(1, int(round(ramp_epochs * steps_per_epoch))) if ramp_epochs
                else total_steps)
  lr = schedules_lib.warm_restart_cosine(
      base_lr=t.learning_rate,
      min_lr=t.min_learning_rate,
      warmup_steps=int(round(t.warmup_epochs * steps_per_epoch)),
      first_cycle_steps=max(1, int(round(t.first_cycle_epochs * steps_per_epoch))),
      cycle_mult=t.cycle_mult,
      cycle_decay=t.cycle_decay,
      total_steps=total_steps,
  )
  return Schedules(
      lr=lr,
      label_smoothing=schedules_lib.linear_schedule(
          t.label_smoothing_start, t.label_smoothing_end, ramp_steps),
      weight_decay=schedules_lib.linear_schedule(
          t.weight_decay_start, t.weight_decay_end, ramp_steps),
      average_decay=average_decay(t.get("average_epochs", 0.0), steps_per_epoch),
  )


def average_decay(epochs: float, steps_per_epoch: int) -> optax.Schedule | None:
  """Decay of a parameter average with a horizon of ``epochs`` epochs.

  In epochs, not a per-step constant, so the same setting averages over the
  same share of training at every scale. The decay warms up as
  ``(1 + t) / (10 + t)``, so the first steps' random weights leave the
  average quickly instead of being debiased.
  """
  if not epochs or epochs <= 0:
    return None
  target = 1.0 - 1.0 / max(1.0, float(epochs) * steps_per_epoch)

  def schedule(step):
    t = jnp.asarray(step, jnp.float32)
    return jnp.minimum(target, (1.0 + t) / (10.0 + t))
  return schedule


class AverageState(NamedTuple):
  """The running parameter average and the number of updates it has seen."""
  count: jax.Array
  average: Any


def track_average(decay: optax.Schedule) -> optax.GradientTransformation:
  """Keeps an exponential moving average of the parameters after each update.

  The updates pass through unchanged, so every step is the step it would be
  without the average; evaluation reads the average (``eval_params``), so the
  per-epoch validation scores, early stopping and the best checkpoint follow
  it. It is paired with the trained weights' BatchNorm running statistics
  (not recomputed for the average). Living in the optimizer state, it is
  checkpointed, resumed and vmapped over ensemble members with the rest.
  """
  def init(params):
    return AverageState(count=jnp.zeros((), jnp.int32),
                        average=jax.tree.map(jnp.array, params))

  def update(updates, state, params=None):
    if params is None:
      raise ValueError("track_average needs the parameters: call update(g, s, params)")
    new = optax.apply_updates(params, updates)
    average = optax.incremental_update(new, state.average, 1.0 - decay(state.count))
    return updates, AverageState(count=state.count + 1, average=average)

  return optax.GradientTransformation(init, update)


def _keeps_average(opt_state: Any) -> bool:
  return isinstance(opt_state, tuple) and bool(opt_state) and isinstance(opt_state[-1],
                                                                         AverageState)


def eval_params(params: Any, opt_state: Any) -> Any:
  """The weights to evaluate: the parameter average when the chain keeps one."""
  return opt_state[-1].average if _keeps_average(opt_state) else params


def without_average(opt_state: Any) -> Any:
  """The chain's state minus the average, so ``eval_params`` gives the trained weights."""
  return opt_state[:-1] if _keeps_average(opt_state) else opt_state


def kernel_mask(params: Any) -> Any:
  """True for leaves named "kernel" (Dense weights); biases, norm scales and
  the position embedding are not decayed."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: getattr(path[-1], "key", None) == "kernel", params)


def make_optimizer(config: ml_collections.ConfigDict,
                   schedules: Schedules) -> optax.GradientTransformation:
  """AdamW with global-norm clipping and scheduled lr / weight decay.

  Weight decay is decoupled (AdamW): after the Adam direction is formed,
  ``wd(t) * param`` is added for kernels, and the sum is scaled by ``-lr(t)``.
  ``train.grad_clip_norm`` <= 0 (or None) turns clipping off by substituting
  ``optax.identity()``, which has the same (empty) state. ``train.average_epochs``
  > 0 appends ``track_average`` (training is unchanged; evaluation reads it).
  """
  t = config.train
  clip_norm = t.get("grad_clip_norm")
  clip = (optax.clip_by_global_norm(float(clip_norm)) if clip_norm and clip_norm > 0
          else optax.identity())
  parts = [
      clip,
      optax.scale_by_adam(b1=t.b1, b2=t.b2, eps=t.get("adam_eps", 1e-8)),
      optax.add_decayed_weights(schedules.weight_decay, mask=kernel_mask),
      optax.scale_by_learning_rate(schedules.lr),
  ]
  if schedules.average_decay is not None:
    parts.append(track_average(schedules.average_decay))
  return optax.chain(*parts)

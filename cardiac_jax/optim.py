"""Optimizer chain and the schedules it (and the loss) consume.

The chain has one fixed structure whatever the config says, so a checkpoint's
optimizer state always restores into a freshly built optimizer:

  clip by global norm → Adam moments → decoupled weight decay (kernels only,
  scheduled coefficient) → scheduled learning rate with the sign flip.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import ml_collections
import optax

from cardiac_jax import schedules as schedules_lib


class Schedules(NamedTuple):
  """Step -> value functions, built once from the config, used inside jit."""
  lr: optax.Schedule
  label_smoothing: optax.Schedule
  weight_decay: optax.Schedule


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
    ``Schedules(lr, label_smoothing, weight_decay)``.
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
  )


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
  ``optax.identity()``, which has the same (empty) state.
  """
  t = config.train
  clip_norm = t.get("grad_clip_norm")
  clip = (optax.clip_by_global_norm(float(clip_norm)) if clip_norm and clip_norm > 0
          else optax.identity())
  return optax.chain(
      clip,
      optax.scale_by_adam(b1=t.b1, b2=t.b2, eps=t.get("adam_eps", 1e-8)),
      optax.add_decayed_weights(schedules.weight_decay, mask=kernel_mask),
      optax.scale_by_learning_rate(schedules.lr),
  )

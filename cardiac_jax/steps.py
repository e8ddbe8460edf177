"""The pure functions of training: the state, one optimizer step, one epoch, one eval chunk.

Everything here is a pure function of arrays with the static settings (model,
optimizer, schedules, shardings) bound by ``functools.partial``;
``run.compile_fns`` jits them over the member axis. Shape of one epoch: ONE
jitted call scans the optimizer steps over the device-resident dataset,
gathering each batch on device and summing loss/correct/count there.

Everything random is derived: dropout keys are ``fold_in(key(seed), step)``,
so a run interrupted after any epoch and resumed from its checkpoint ends
bit-for-bit where an uninterrupted run ends (on CPU).
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax

from cardiac_jax import input_pipeline
from cardiac_jax import optim
from cardiac_jax import parallel

_gather = input_pipeline.gather   # the batch gather inside the jitted steps


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training (and so goes into checkpoints).

  The model and optimizer are not fields: they are static and bound into the
  jitted functions with ``functools.partial``, which keeps this a plain pytree
  of arrays that orbax can save and restore against an abstract target.
  """
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any



def cross_entropy(logits: jax.Array, labels: jax.Array, smoothing: Any = 0.0,
                  targets: jax.Array | None = None) -> jax.Array:
  """Per-example softmax cross-entropy in float32 against smoothed targets.

  ``targets`` (N, C) are soft labels (a fate model's exact P(CM), P(CF)) and
  replace the one-hot of ``labels`` when given; smoothing applies on top.
  """
  logits = logits.astype(jnp.float32)
  if targets is None:
    targets = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32)
  targets = optax.smooth_labels(targets.astype(jnp.float32),
                                jnp.asarray(smoothing, jnp.float32))
  return optax.softmax_cross_entropy(logits, targets)


# The metrics of ``train_step`` that ``train_epoch`` sums over the epoch's steps.
SUMMED = ("loss", "correct", "count", "grad_norm", "update_norm")


def _zero_sums() -> dict[str, jax.Array]:
  return {k: jnp.zeros((), jnp.float32) for k in SUMMED}


@functools.partial(jax.jit, static_argnames="model")
def init_variables(rng: jax.Array, x: jax.Array, mask: jax.Array, *, model: Any) -> Any:
  """Model variables; jitted with the (hashable) model static, so every run with an
  equal model reuses one compilation."""
  return model.init({"params": rng}, x, mask, train=False)


def init_state(rng: jax.Array, x: jax.Array, mask: jax.Array, *, model: Any,
               opt_init: Callable[[Any], Any]) -> TrainState:
  """Fresh parameters, BatchNorm statistics and optimizer state."""
  variables = init_variables(rng, x, mask, model=model)
  params = variables["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=variables.get("batch_stats", {}),
                    opt_state=opt_init(params))


def train_step(state: TrainState, batch: dict[str, jax.Array], rng: jax.Array, *,
               model: Any, tx: optax.GradientTransformation,
               schedules: optim.Schedules) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer step; returns the new state and this step's metric sums.

  Label smoothing comes from its schedule at the current step (inside jit, so
  the annealing costs no recompilation). A non-finite loss is reported as the
  step number in ``first_bad_step`` rather than checked on the host, which
  would cost a device sync per step.
  """
  dropout_rng = jax.random.fold_in(rng, state.step)
  smoothing = schedules.label_smoothing(state.step)

  def loss_fn(params):
    logits, updates = model.apply(
        {"params": params, "batch_stats": state.batch_stats}, batch["x"], batch["mask"],
        train=True, rngs={"dropout": dropout_rng}, mutable=["batch_stats"])
    loss = cross_entropy(logits, batch["y"], smoothing, batch.get("targets"))
    return jnp.mean(loss), (loss, logits, updates)

  (_, (loss, logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params)
  deltas, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, deltas)
  new_state = state.replace(step=state.step + 1, params=params,
                            batch_stats=updates.get("batch_stats", state.batch_stats),
                            opt_state=opt_state)
  loss_sum = jnp.sum(loss)
  metrics = {
      "loss": loss_sum,
      "correct": jnp.sum(jnp.argmax(logits, -1) == batch["y"]).astype(jnp.float32),
      "count": jnp.asarray(loss.shape[0], jnp.float32),
      "finite": jnp.isfinite(loss_sum),
      "grad_norm": optax.tree.norm(grads),
      "update_norm": optax.tree.norm(deltas),
  }
  return new_state, metrics


def train_epoch(state: TrainState, data: dict[str, jax.Array], idx: jax.Array,
                rng: jax.Array, *, model: Any, tx: optax.GradientTransformation,
                schedules: optim.Schedules,
                batch_sharding: Any = None) -> tuple[TrainState, dict[str, jax.Array]]:
  """All steps of one epoch as a ``lax.scan``; ``idx`` is (steps, batch) row indices.

  ``batch_sharding`` (static; None = leave it to XLA) pins each gathered batch
  to the data-parallel split, so the partitioner cannot choose to replicate
  the step. Returns the state and on-device sums: loss (smoothed, train
  mode), correct, count, ``first_bad_step`` (-1 if every loss was finite) and
  the schedule values at the epoch's last step.
  """
  step_fn = functools.partial(train_step, model=model, tx=tx, schedules=schedules)

  def body(carry, batch_idx):
    state, sums, first_bad = carry
    step = state.step
    batch = parallel.constrain_batch(_gather(data, batch_idx), batch_sharding)
    state, m = step_fn(state, batch, rng)
    sums = {k: sums[k] + m[k] for k in sums}
    first_bad = jnp.where((first_bad < 0) & ~m["finite"], step, first_bad)
    return (state, sums, first_bad), None

  init = (state, _zero_sums(), jnp.asarray(-1, jnp.int32))
  (state, sums, first_bad), _ = jax.lax.scan(body, init, idx)
  last = state.step - 1
  sums.update(first_bad_step=first_bad, lr=schedules.lr(last),
              label_smoothing=schedules.label_smoothing(last),
              weight_decay=schedules.weight_decay(last))
  return state, sums


def eval_step(state: TrainState, batch: dict[str, jax.Array], *,
              model: Any) -> tuple[dict[str, jax.Array], jax.Array]:
  """Eval-mode sums (unsmoothed loss) over examples with weight > 0, and probabilities.

  Evaluates the parameter average when the optimizer keeps one (``optim.eval_params``).
  """
  params = optim.eval_params(state.params, state.opt_state)
  logits = model.apply({"params": params, "batch_stats": state.batch_stats},
                       batch["x"], batch["mask"], train=False)
  w = batch["weight"]
  loss = cross_entropy(logits, batch["y"], targets=batch.get("targets"))
  correct = (jnp.argmax(logits, -1) == batch["y"]).astype(jnp.float32)
  sums = {"loss": jnp.sum(jnp.where(w > 0, loss * w, 0.0)),
          "correct": jnp.sum(correct * w), "count": jnp.sum(w)}
  return sums, jax.nn.softmax(logits, axis=-1)


@functools.partial(jax.jit, static_argnames=("model", "batch_sharding"))
def eval_chunk(state: TrainState, data: dict[str, jax.Array], idx: jax.Array,
               weight: jax.Array, *, model: Any,
               batch_sharding: Any = None) -> tuple[dict[str, jax.Array], jax.Array]:
  """``eval_step`` on the rows ``idx`` of the device-resident data (jitted, model static)."""
  batch = _gather(data, idx)
  batch["weight"] = weight
  batch = parallel.constrain_batch(batch, batch_sharding)
  return eval_step(state, batch, model=model)

"""The train loop: state, pure steps, the jitted epoch scan, ``train_and_evaluate``.

Shape of one epoch: the host computes a class-stratified batch order (from
seed and epoch, so a resumed run sees the same data), then ONE jitted call
scans the optimizer steps over the device-resident dataset, gathering each
batch on device and summing loss/correct/count there. The host fetches those
sums once per epoch, then evaluates the training and validation splits in
eval mode (no dropout, running BatchNorm statistics) in large padded chunks.

Everything random is derived: dropout keys are ``fold_in(key(seed), step)``
and the data order is ``default_rng([seed, epoch])``, so a run interrupted
after any epoch and resumed from its checkpoint ends bit-for-bit where an
uninterrupted run ends (on CPU).

Around it: batch orders and eval chunks in ``input_pipeline``, eval passes and
the final report in ``evaluation``, restore/predict in ``inference``, device
placement in ``parallel``, resume checks in ``fingerprint``.
"""
from __future__ import annotations

import functools
import os
import sys
import time
from typing import Any, Callable, NamedTuple

from absl import logging
import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm

from cardiac_jax import checkpoint as checkpoint_lib
from cardiac_jax import evaluation
from cardiac_jax import export as export_lib
from cardiac_jax import fingerprint as fingerprint_lib
from cardiac_jax import input_pipeline
from cardiac_jax import members as members_lib
from cardiac_jax import models
from cardiac_jax import monitor
from cardiac_jax import optim
from cardiac_jax import parallel
from cardiac_jax import report as report_lib
from cardiac_jax import scaling
from cardiac_jax import schedules as schedules_lib
from cardiac_jax.data import splits as splits_lib

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


# ---------------------------------------------------------------- pure steps


def cross_entropy(logits: jax.Array, labels: jax.Array, smoothing: Any = 0.0) -> jax.Array:
  """Per-example softmax cross-entropy in float32 against smoothed one-hot targets."""
  logits = logits.astype(jnp.float32)
  onehot = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32)
  targets = optax.smooth_labels(onehot, jnp.asarray(smoothing, jnp.float32))
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
    loss = cross_entropy(logits, batch["y"], smoothing)
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
  loss = cross_entropy(logits, batch["y"])
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


class Compiled(NamedTuple):
  """The jitted functions of one run, built once so they compile once."""
  init: Callable[..., TrainState]
  train_epoch: Callable[..., tuple[TrainState, dict[str, jax.Array]]]
  eval_chunk: Callable[..., tuple[dict[str, jax.Array], jax.Array]]


def _over_members(fn: Callable, axis: str, in_axes: tuple) -> Callable:
  """``fn`` over a leading member axis of the arguments marked 0 in ``in_axes``:
  batched (``vmap``) or one member after another in the same program (``map``)."""
  if axis == "vmap":
    return jax.vmap(fn, in_axes=in_axes)

  def mapped(*args):
    stacked = tuple(a for a, ax in zip(args, in_axes) if ax == 0)

    def one(member):
      it = iter(member)
      return fn(*(next(it) if ax == 0 else a for a, ax in zip(args, in_axes)))
    return jax.lax.map(one, stacked)
  return mapped


def compile_fns(model: Any, tx: optax.GradientTransformation,
                schedules: optim.Schedules, num_members: int = 1,
                member_axis: str = "vmap") -> Compiled:
  """Binds the static model/optimizer/schedules and jits; the state is donated.

  Batches are split over the data-parallel mesh of all devices (one device:
  a no-op); the state and dataset stay replicated (``parallel.place``). With
  ``num_members`` K > 1 the epoch and evaluation run over a leading member
  axis of the state (and of the keys and the epoch's batch indices), vmapped
  or mapped (``member_axis``): K models in one compiled call (``members``);
  init is always vmapped. K = 1 compiles exactly the plain functions.
  """
  init = functools.partial(init_state, model=model, opt_init=jax.jit(tx.init))
  epoch = functools.partial(train_epoch, model=model, tx=tx, schedules=schedules,
                            batch_sharding=parallel.batch_sharding())
  evaluate = functools.partial(eval_chunk, model=model,
                               batch_sharding=parallel.batch_sharding())
  if num_members > 1:
    init = jax.jit(jax.vmap(init, in_axes=(0, None, None)))
    epoch = _over_members(epoch, member_axis, (0, None, 0, 0))
    evaluate = jax.jit(_over_members(evaluate, member_axis, (0, None, None, None)))
  return Compiled(
      init=init,
      train_epoch=jax.jit(epoch, donate_argnums=0,
                          compiler_options=parallel.compiler_options()),
      eval_chunk=evaluate,
  )


# ---------------------------------------------------------------- a run


_COMPILED: dict[tuple, tuple] = {}   # resolved config -> (model, schedules, Compiled)
_COMPILED_SIZE = 4


def _model_and_fns(config: ml_collections.ConfigDict, num_classes: int, length: int,
                   spe: int) -> tuple[Any, optim.Schedules, Compiled]:
  """Model, schedules and jitted functions, reused for an identical config.

  A resumed run, or a notebook calling ``train_and_evaluate`` again, then skips
  recompiling (seconds on a CPU): the jitted functions close over the
  optimizer and schedules, so they are only reusable as a unit keyed by the
  whole resolved config.
  """
  key = (config.to_json_best_effort(sort_keys=True), num_classes, length, spe)
  if key not in _COMPILED:
    while len(_COMPILED) >= _COMPILED_SIZE:
      _COMPILED.pop(next(iter(_COMPILED)))
    scheds = optim.make_schedules(config, spe, spe * config.train.num_epochs)
    tx = optim.make_optimizer(config, scheds)
    model = models.model_from_config(config, num_classes, length)
    _COMPILED[key] = (model, scheds,
                      compile_fns(model, tx, scheds, members_lib.num_members(config),
                                  members_lib.member_axis(config)))
  _COMPILED[key] = _COMPILED.pop(key)   # most recently used last: evicted last
  return _COMPILED[key]


class Run(NamedTuple):
  """Everything built from (config, dataset) before the first step."""
  config: ml_collections.ConfigDict
  dataset: Any
  model: Any
  schedules: optim.Schedules
  fns: Compiled
  data: dict[str, jax.Array]
  train_pos: np.ndarray
  chunks: dict[str, list[tuple[jax.Array, jax.Array]]]
  steps_per_epoch: int
  abstract_state: TrainState
  fingerprint: dict[str, Any]
  init_rng: jax.Array
  train_rng: jax.Array
  num_members: int = 1


def build_run(config: ml_collections.ConfigDict, dataset: Any) -> Run:
  """Resolves the config for this dataset and builds model, optimizer and jitted fns."""
  split = np.asarray(dataset.split)
  for name, sid in splits_lib.SPLIT_IDS.items():
    if not np.any(split == sid):
      raise ValueError(f"the dataset has no {name!r} sequences; check data.split.fractions.")
  config = scaling.resolve_config(config, len(dataset.y))
  parallel.check_divisible(config.train.batch_size, "train.batch_size")
  train_pos = np.flatnonzero(split == splits_lib.SPLIT_IDS["train"])
  spe = schedules_lib.steps_per_epoch(len(train_pos), config.train.batch_size)
  model, scheds, fns = _model_and_fns(config, dataset.num_classes, dataset.length, spe)
  data = input_pipeline.device_arrays(dataset.x, dataset.y, dataset.mask)
  chunk = input_pipeline.chunk_size(config, len(dataset.y))
  chunks = {name: input_pipeline.eval_chunks(np.flatnonzero(split == sid), chunk)
            for name, sid in splits_lib.SPLIT_IDS.items()}
  k = members_lib.num_members(config)
  if k == 1:
    init_rng, train_rng = jax.random.split(jax.random.key(config.seed))
  else:   # member k: the keys of the run with seed + k
    keys = [jax.random.split(jax.random.key(s)) for s in members_lib.seeds(config)]
    init_rng, train_rng = (jnp.stack([pair[i] for pair in keys]) for i in (0, 1))
  sample_x, sample_mask = data["x"][:1], data["mask"][:1]
  abstract_state = parallel.abstract_like(
      jax.eval_shape(fns.init, init_rng, sample_x, sample_mask))
  fp = fingerprint_lib.fingerprint(config, input_pipeline.data_key(dataset))
  return Run(config, dataset, model, scheds, fns, data, train_pos, chunks, spe,
             abstract_state, fp, init_rng, train_rng, k)


def open_run(config: ml_collections.ConfigDict, workdir: str,
             dataset: Any = None) -> tuple[Run, str]:
  """The prologue of every entry point: the run and its absolute workdir.

  Builds the dataset from ``config.data`` when none is given and refuses a
  workdir whose config.json holds an incompatible run.
  """
  workdir = os.path.abspath(workdir)
  run = build_run(config, input_pipeline.load_dataset(config) if dataset is None else dataset)
  fingerprint_lib.check_workdir(workdir, run.fingerprint)
  return run, workdir


def _run_epoch(run: Run, state: TrainState, epoch: int) -> tuple[TrainState, dict[str, Any]]:
  """Trains one epoch (one jitted call) and evaluates train and val, with ONE host fetch.

  Returns the state and the fetched {"train_sums", "train_eval", "val_eval", "step",
  "param_norm"}.
  """
  y_train = run.dataset.y[run.train_pos]
  orders = [run.train_pos[input_pipeline.stratified_order(
      y_train, run.config.train.batch_size, seed, epoch)].astype(np.int32)
            for seed in members_lib.seeds(run.config)]
  stacked = run.num_members > 1
  idx = parallel.place_batches(np.stack(orders) if stacked else orders[0],
                               batch_axis=2 if stacked else 1)
  state, sums = run.fns.train_epoch(state, run.data, idx, run.train_rng)
  train_total, val_total = (
      evaluation.eval_sums(run.fns.eval_chunk, state, run.data, run.chunks[name])[0]
      for name in ("train", "val"))
  norm = jax.vmap(optax.tree.norm) if stacked else optax.tree.norm
  fetched = parallel.fetch({"train_sums": sums, "train_eval": train_total,
                            "val_eval": val_total, "step": state.step,
                            "param_norm": norm(state.params)})
  return state, fetched


def _epoch_record(run: Run, fetched: dict[str, Any], epoch: int,
                  seconds: float) -> dict[str, Any]:
  """One member's metrics.jsonl record (K = 1: the run's) from its fetched values."""
  sums, step = fetched["train_sums"], int(fetched["step"])
  train_eval = evaluation.summarise_eval(fetched["train_eval"])
  val_eval = evaluation.summarise_eval(fetched["val_eval"])
  monitor.check_finite(epoch, step, sums, train_eval, val_eval)
  return monitor.epoch_record(
      epoch=epoch, step=step, sums=sums, steps=run.steps_per_epoch,
      param_norm=float(fetched["param_norm"]), train_eval=train_eval,
      val_eval=val_eval, seconds=seconds, monitor_cfg=run.config.monitor)


def _record_epoch(run: Run, fetched: dict[str, Any], epoch: int, seconds: float,
                  es: Any) -> tuple[dict[str, Any], Any]:
  """The epoch's record and the early-stopping state after it.

  K > 1: each member still training gets its own record and stopping update;
  the line written is ``members.mean_record`` of them.
  """
  metric = run.config.train.early_stopping_metric
  if run.num_members == 1:
    record = _epoch_record(run, fetched, epoch, seconds)
    es = es.update(record[metric])
  else:
    per = [_epoch_record(run, members_lib.take(fetched, k), epoch, seconds) if live else None
           for k, live in enumerate(es.active)]
    es = es.update([float("nan") if r is None else r[metric] for r in per])
    for r, member in zip(per, es.members):
      if r is not None:
        r["best_epoch"] = member.best_epoch
    record = members_lib.mean_record(per, run.config.monitor)
  record["best_epoch"] = es.best_epoch
  return record, es


def stopping_state(config: ml_collections.ConfigDict, k: int,
                   stored: dict[str, Any] | None = None) -> Any:
  """Early-stopping state, fresh or from checkpoint metadata (patience from the config)."""
  metric, patience = config.train.early_stopping_metric, config.train.early_stopping_patience
  if stored is None:
    return (monitor.EarlyStopping.for_metric(metric, patience) if k == 1 else
            members_lib.MemberStopping.for_metric(metric, patience, k))
  if k == 1:
    return monitor.EarlyStopping.from_dict({**stored, "patience": patience})
  return members_lib.MemberStopping.from_dict(stored, patience)


def _init_or_resume(run: Run, workdir: str, ckpt: checkpoint_lib.Checkpointer
                    ) -> tuple[TrainState, int, Any, TrainState | None]:
  """A fresh state at epoch 0, or the newest checkpoint's state, epoch and stopping state.

  The fourth value is, for K > 1 members, the best-so-far state that the next
  improvements merge into (None for K = 1 and for a fresh start).
  """
  restored = ckpt.restore_latest(run.abstract_state)
  if restored is None:
    state = parallel.place(run.fns.init(run.init_rng, run.data["x"][:1],
                                        run.data["mask"][:1]))
    return state, 0, stopping_state(run.config, run.num_members), None
  state, meta = restored
  fingerprint_lib.check_workdir(workdir, run.fingerprint, meta)
  logging.info("Resuming %s from epoch %d (step %d).", workdir, int(meta["epoch"]),
               int(np.max(parallel.fetch(state.step))))
  # Patience may change on resume; the counters carry over.
  es = stopping_state(run.config, run.num_members, meta["early_stopping"])
  best = None
  if run.num_members > 1 and ckpt.best_epoch() is not None:
    best = parallel.place(ckpt.restore_best(run.abstract_state)[0])
  return parallel.place(state), int(meta["epoch"]), es, best


def _checkpoint_meta(run: Run, epoch: int, es: Any) -> dict[str, Any]:
  return {"epoch": epoch, "early_stopping": es.to_dict(), "best_value": es.best_value,
          "best_epoch": es.best_epoch, "fingerprint": run.fingerprint,
          "data_key": run.fingerprint["data.cache_key"], "seed": run.config.seed}


def _progress(config: ml_collections.ConfigDict, start: int, total: int):
  enabled = bool(config.train.progress_bar) and sys.stderr.isatty()
  return tqdm.tqdm(total=total, initial=start, unit="epoch", disable=not enabled,
                   dynamic_ncols=True)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       dataset: Any = None) -> dict[str, Any]:
  """Trains (resuming from ``workdir`` if it holds a checkpoint), then tests and reports.

  Args:
    config: a config from ``config_lib``; None sizes are filled by ``scaling``.
    workdir: run directory (metrics.jsonl, config.json, checkpoints/, report.*,
      plots/).
    dataset: a ``SequenceDataset``; built from ``config.data`` when None.

  Returns:
    The final metrics (see ``report.write_report``): test_acc, macro_f1,
    best_epoch, epochs_run, early_stopped, acc_gap, ...

  Raises:
    ConfigError: the workdir holds a run with an incompatible config.
    FloatingPointError: the loss became NaN/Inf (no checkpoint of it is saved).
  """
  t_start = time.time()
  run, workdir = open_run(config, workdir, dataset)
  os.makedirs(workdir, exist_ok=True)
  config = run.config
  metrics_path = os.path.join(workdir, report_lib.METRICS_FILE)

  with checkpoint_lib.Checkpointer(workdir, config.train.keep_checkpoints) as ckpt:
    state, start, es, best = _init_or_resume(run, workdir, ckpt)
    fingerprint_lib.write_config_file(workdir, config, run.fingerprint)
    records = report_lib.truncate_metrics(metrics_path, start)
    logging.info("%d training sequences, %d steps/epoch, %d epochs, %d parameters%s.",
                 len(run.train_pos), run.steps_per_epoch, config.train.num_epochs,
                 models.count_params(state.params) // run.num_members,
                 f" x {run.num_members} members" if run.num_members > 1 else "")

    bar = _progress(config, start, config.train.num_epochs)
    try:
      for epoch in range(start + 1, config.train.num_epochs + 1):
        if es.should_stop:
          break
        t0 = time.time()
        state, fetched = _run_epoch(run, state, epoch)
        record, es = _record_epoch(run, fetched, epoch, time.time() - t0, es)
        report_lib.append_metrics(metrics_path, record)
        records.append(record)
        improved = bool(np.any(es.improved))
        if run.num_members > 1 and improved:   # each member's own best weights
          best = members_lib.merge_best(state if best is None else best, state, es.improved)
        ckpt.save(epoch, state, _checkpoint_meta(run, epoch, es), best=improved,
                  best_state=best)
        monitor.log_epoch(record, config)
        bar.update(1)
        bar.set_postfix(val_acc=f"{record['val_acc']:.3f}", gap=f"{record['acc_gap']:+.3f}")
    except KeyboardInterrupt:
      logging.warning("Interrupted; waiting for checkpoint writes. Rerun with the same "
                      "--workdir to resume from the last completed epoch (%s).",
                      ckpt.latest_epoch())
      ckpt.wait()
      raise
    finally:
      bar.close()
    ckpt.wait()
    return evaluation.report_best(run, workdir, ckpt, records, es, t_start,
                                  on_best=export_lib.export_if_possible)

"""The train loop: jitted epochs, evaluation, early stopping, checkpoints, report.

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
"""
from __future__ import annotations

import collections
import functools
import hashlib
import json
import math
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
from cardiac_jax import fileio
from cardiac_jax import models
from cardiac_jax import monitor
from cardiac_jax import optim
from cardiac_jax import parallel
from cardiac_jax import report as report_lib
from cardiac_jax import scaling
from cardiac_jax import schedules as schedules_lib
from cardiac_jax.data import splits as splits_lib

METRICS_FILE = "metrics.jsonl"
SPLIT_IDS = splits_lib.SPLIT_IDS


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


# ---------------------------------------------------------------- placement


def data_sharding() -> jax.sharding.Sharding:
  """Where the dataset and the train state live: replicated on every device.

  Data parallelism (``parallel.py``): a full copy on each device of the "data"
  mesh axis, so each device gathers its own batch rows locally; only the
  batches (``batch_sharding``) are split. Checkpoint restore targets follow.
  """
  return parallel.replicated()


def batch_sharding(batch_axis: int = 0) -> jax.sharding.Sharding:
  """Batch rows split over the devices (axis 1 for an epoch's (steps, batch) indices)."""
  return parallel.batch_sharding(batch_axis=batch_axis)


def place(tree: Any) -> Any:
  """Puts a pytree of arrays on the device(s) given by ``data_sharding``."""
  return jax.device_put(tree, data_sharding())


def place_batches(tree: Any, batch_axis: int = 0) -> Any:
  """Puts index/weight arrays on the devices, split along ``batch_axis``."""
  return jax.device_put(tree, batch_sharding(batch_axis))


def abstract_like(tree: Any) -> Any:
  """ShapeDtypeStruct tree with the placement sharding (a restore target)."""
  sharding = data_sharding()
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding),
                      tree)


# ---------------------------------------------------------------- pure steps


def cross_entropy(logits: jax.Array, labels: jax.Array, smoothing: Any = 0.0) -> jax.Array:
  """Per-example softmax cross-entropy in float32 against smoothed one-hot targets."""
  logits = logits.astype(jnp.float32)
  onehot = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32)
  targets = optax.smooth_labels(onehot, jnp.asarray(smoothing, jnp.float32))
  return optax.softmax_cross_entropy(logits, targets)


def _zero_sums() -> dict[str, jax.Array]:
  return {"loss": jnp.zeros((), jnp.float32), "correct": jnp.zeros((), jnp.float32),
          "count": jnp.zeros((), jnp.float32)}


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
  }
  return new_state, metrics


def _gather(data: dict[str, jax.Array], idx: jax.Array) -> dict[str, jax.Array]:
  return {k: jnp.take(v, idx, axis=0) for k, v in data.items()}


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
  """Eval-mode sums (unsmoothed loss) over examples with weight > 0, and probabilities."""
  logits = model.apply({"params": state.params, "batch_stats": state.batch_stats},
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


def train_compiler_options() -> dict[str, Any] | None:
  """XLA options for the epoch scan: on CPU, the concurrency-optimised scheduler.

  It orders independent ops (the backward's weight- and input-gradient
  matmuls, the forward's dropout masks) so the CPU runtime overlaps them:
  ~9% faster scale3 steps in alternating A/B runs on a 2-core host. Only the
  order changes: the epoch's parameters are bitwise identical with it off.
  """
  if jax.default_backend() == "cpu":
    return {"xla_cpu_enable_concurrency_optimized_scheduler": True}
  return None


class Compiled(NamedTuple):
  """The jitted functions of one run, built once so they compile once."""
  init: Callable[..., TrainState]
  train_epoch: Callable[..., tuple[TrainState, dict[str, jax.Array]]]
  eval_chunk: Callable[..., tuple[dict[str, jax.Array], jax.Array]]


def compile_fns(model: Any, tx: optax.GradientTransformation,
                schedules: optim.Schedules) -> Compiled:
  """Binds the static model/optimizer/schedules and jits; the state is donated.

  Batches are split over the data-parallel mesh of all devices (one device:
  a no-op); the state and dataset stay replicated (``data_sharding``).
  """
  return Compiled(
      init=functools.partial(init_state, model=model, opt_init=jax.jit(tx.init)),
      train_epoch=jax.jit(
          functools.partial(train_epoch, model=model, tx=tx, schedules=schedules,
                            batch_sharding=batch_sharding()),
          donate_argnums=0, compiler_options=train_compiler_options()),
      eval_chunk=functools.partial(eval_chunk, model=model, batch_sharding=batch_sharding()),
  )


# ---------------------------------------------------------------- host helpers


def stratified_order(labels: np.ndarray, batch_size: int, seed: int,
                     epoch: int) -> np.ndarray:
  """(steps, batch_size) positions into ``labels``: shuffled, classes in proportion.

  Each class is shuffled and its members spread evenly over [0, 1) (member k
  of n_c at (k + u_c) / n_c, u_c a random phase); sorting all members by that
  key interleaves the classes so any run of ``batch_size`` consecutive
  positions holds each class within about one of its share. The remainder is
  dropped (``schedules.steps_per_epoch``); the random phase and shuffle make a
  different remainder every epoch. Deterministic from (seed, epoch).
  """
  labels = np.asarray(labels)
  rng = np.random.default_rng([int(seed), int(epoch)])
  keys = np.empty(len(labels), np.float64)
  for c in np.unique(labels):
    members = np.flatnonzero(labels == c)
    members = members[rng.permutation(len(members))]
    keys[members] = (np.arange(len(members)) + rng.random()) / len(members)
  order = np.lexsort((rng.random(len(labels)), keys))
  steps = schedules_lib.steps_per_epoch(len(labels), batch_size)
  return order[:steps * batch_size].reshape(steps, batch_size)


def eval_chunks(positions: np.ndarray, chunk_size: int) -> list[tuple[jax.Array, jax.Array]]:
  """Fixed-size (rows, weights) chunks covering ``positions`` exactly once.

  The last chunk is padded with row ``positions[0]`` at weight 0, so every
  chunk has one shape (one compilation) and padding never counts. The chunk
  size is rounded up to a multiple of the device count (chunks are split
  over the data-parallel mesh).
  """
  chunk_size = parallel.round_up(chunk_size)
  positions = np.asarray(positions, np.int32)
  n = len(positions)
  n_chunks = max(1, math.ceil(n / chunk_size))
  idx = np.full(n_chunks * chunk_size, positions[0] if n else 0, np.int32)
  idx[:n] = positions
  weight = np.zeros(n_chunks * chunk_size, np.float32)
  weight[:n] = 1.0
  return [place_batches((idx[i * chunk_size:(i + 1) * chunk_size],
                         weight[i * chunk_size:(i + 1) * chunk_size]))
          for i in range(n_chunks)]


def eval_sums(eval_fn: Callable, state: TrainState, data: dict[str, jax.Array],
              chunks: list[tuple[jax.Array, jax.Array]], *,
              with_probs: bool = False) -> tuple[dict[str, jax.Array], list[jax.Array]]:
  """On-device loss/correct/count sums over a split (and its per-chunk probabilities)."""
  total, probs = None, []
  for idx, weight in chunks:
    sums, p = eval_fn(state, data, idx, weight)
    total = sums if total is None else jax.tree.map(jnp.add, total, sums)
    if with_probs:
      probs.append(p)
  return total, probs


def summarise_eval(total: dict[str, Any]) -> dict[str, Any]:
  """Host-side averages from fetched sums: summed loss over count, not means of means."""
  count = float(total["count"])
  return {"loss": float(total["loss"]) / max(count, 1.0),
          "acc": float(total["correct"]) / max(count, 1.0), "count": int(count)}


def evaluate(eval_fn: Callable, state: TrainState, data: dict[str, jax.Array],
             chunks: list[tuple[jax.Array, jax.Array]], *,
             with_probs: bool = False) -> dict[str, Any]:
  """Eval-mode loss/accuracy over a split (and optionally its class probabilities).

  Sums stay on device across chunks; the host fetches them once.
  """
  total, probs = eval_sums(eval_fn, state, data, chunks, with_probs=with_probs)
  out = summarise_eval(jax.device_get(total))
  if with_probs:
    out["probs"] = np.asarray(jax.device_get(jnp.concatenate(probs)))[:out["count"]]
  return out


def read_metrics(path: str) -> list[dict[str, Any]]:
  """The per-epoch records of ``metrics.jsonl`` (empty if absent)."""
  return report_lib.load_records(path) if os.path.exists(path) else []


def truncate_metrics(path: str, last_epoch: int) -> list[dict[str, Any]]:
  """Keeps only records of epochs <= ``last_epoch`` (a resume must not duplicate them)."""
  stored = read_metrics(path)
  records = [r for r in stored if r["epoch"] <= last_epoch]
  if len(records) < len(stored):
    fileio.atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))
  return records


def _append_metrics(path: str, record: dict[str, Any]) -> None:
  with open(path, "a") as f:
    f.write(json.dumps(record) + "\n")
    f.flush()


def data_key(ds: Any) -> str:
  """The dataset's cache key, or a content hash for datasets built in memory."""
  key = (getattr(ds, "meta", None) or {}).get("cache_key")
  if key:
    return str(key)
  h = hashlib.sha1()
  for a in (ds.x, ds.y, ds.mask, ds.split):
    h.update(np.ascontiguousarray(a).tobytes())
  return "sha1:" + h.hexdigest()


def _load_dataset(config: ml_collections.ConfigDict) -> Any:
  from cardiac_jax.data import dataset as dataset_lib  # pylint: disable=g-import-not-at-top
  return dataset_lib.build_dataset(config.data)


# ---------------------------------------------------------------- a run


_FNS_CACHE: collections.OrderedDict[tuple, tuple] = collections.OrderedDict()
_FNS_CACHE_SIZE = 4


def _model_and_fns(config: ml_collections.ConfigDict, num_classes: int, length: int,
                   spe: int) -> tuple[Any, optim.Schedules, Compiled]:
  """Model, schedules and jitted functions, reused for an identical config.

  A resumed run, or a notebook calling ``train_and_evaluate`` again, then skips
  recompiling (seconds on a CPU): the jitted functions close over the
  optimizer and schedules, so they are only reusable as a unit keyed by the
  whole resolved config.
  """
  key = (config.to_json_best_effort(sort_keys=True), num_classes, length, spe)
  if key not in _FNS_CACHE:
    scheds = optim.make_schedules(config, spe, spe * config.train.num_epochs)
    tx = optim.make_optimizer(config, scheds)
    model = models.model_from_config(config, num_classes, length)
    _FNS_CACHE[key] = (model, scheds, compile_fns(model, tx, scheds))
    while len(_FNS_CACHE) > _FNS_CACHE_SIZE:
      _FNS_CACHE.popitem(last=False)
  _FNS_CACHE.move_to_end(key)
  return _FNS_CACHE[key]


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


def build_run(config: ml_collections.ConfigDict, dataset: Any) -> Run:
  """Resolves the config for this dataset and builds model, optimizer and jitted fns."""
  split = np.asarray(dataset.split)
  for name, sid in SPLIT_IDS.items():
    if not np.any(split == sid):
      raise ValueError(f"the dataset has no {name!r} sequences; check data.split.fractions.")
  config = scaling.resolve_config(config, len(dataset.y))
  parallel.check_divisible(config.train.batch_size, "train.batch_size")
  train_pos = np.flatnonzero(split == SPLIT_IDS["train"])
  spe = schedules_lib.steps_per_epoch(len(train_pos), config.train.batch_size)
  model, scheds, fns = _model_and_fns(config, dataset.num_classes, dataset.length, spe)
  data = place({"x": np.asarray(dataset.x, np.float32), "y": np.asarray(dataset.y, np.int32),
                "mask": np.asarray(dataset.mask, np.float32)})
  chunk = max(1, min(int(config.train.eval_batch_size), len(dataset.y)))
  chunks = {name: eval_chunks(np.flatnonzero(split == sid), chunk)
            for name, sid in SPLIT_IDS.items()}
  init_rng, train_rng = jax.random.split(jax.random.key(config.seed))
  sample_x, sample_mask = data["x"][:1], data["mask"][:1]
  abstract_state = abstract_like(jax.eval_shape(fns.init, init_rng, sample_x, sample_mask))
  fp = checkpoint_lib.fingerprint(config, data_key(dataset))
  return Run(config, dataset, model, scheds, fns, data, train_pos, chunks, spe,
             abstract_state, fp, init_rng, train_rng)


def _check_resume(run: Run, workdir: str, meta: dict[str, Any] | None) -> None:
  """Refuses to continue a run in ``workdir`` made with an incompatible config."""
  stored = checkpoint_lib.read_config_file(workdir)
  if stored is not None:
    checkpoint_lib.check_compatible(stored["fingerprint"], run.fingerprint, workdir,
                                    checkpoint_lib.CONFIG_FILE)
  if meta is not None:
    checkpoint_lib.check_compatible(meta["fingerprint"], run.fingerprint, workdir,
                                    f"checkpoint of epoch {meta['epoch']}")


def _epoch_record(run: Run, epoch: int, step: int, sums: dict[str, Any],
                  train_eval: dict[str, Any], val_eval: dict[str, Any],
                  seconds: float) -> dict[str, Any]:
  mon = run.config.monitor
  count = max(float(sums["count"]), 1.0)
  gaps = monitor.gaps(train_eval["acc"], val_eval["acc"], train_eval["loss"], val_eval["loss"])
  return {
      "epoch": epoch,
      "step": step,
      "lr": float(sums["lr"]),
      "label_smoothing": float(sums["label_smoothing"]),
      "weight_decay": float(sums["weight_decay"]),
      "train_loss": train_eval["loss"],
      "train_acc": train_eval["acc"],
      "train_loss_running": float(sums["loss"]) / count,
      "train_acc_running": float(sums["correct"]) / count,
      "val_loss": val_eval["loss"],
      "val_acc": val_eval["acc"],
      **gaps,
      "overfitting": monitor.overfitting_level(gaps["acc_gap"], mon.moderate_gap,
                                               mon.significant_gap),
      "seconds": seconds,
  }


def _raise_nonfinite(epoch: int, step: int, what: str) -> None:
  raise FloatingPointError(
      f"non-finite {what} at epoch {epoch}, optimizer step {step}; stopped without saving "
      "this epoch. Try a lower --config.train.learning_rate, check the input features for "
      "NaN/Inf, and use --config.model.dtype=float32.")


def _run_epoch(run: Run, state: TrainState, epoch: int) -> tuple[TrainState, dict[str, Any]]:
  """Trains one epoch (one jitted call) and evaluates train and val, with ONE host fetch.

  Returns the state and the fetched {"train_sums", "train_eval", "val_eval", "step"}.
  """
  order = stratified_order(run.dataset.y[run.train_pos], run.config.train.batch_size,
                           run.config.seed, epoch)
  idx = place_batches(run.train_pos[order].astype(np.int32), batch_axis=1)
  state, sums = run.fns.train_epoch(state, run.data, idx, run.train_rng)
  train_total, _ = eval_sums(run.fns.eval_chunk, state, run.data, run.chunks["train"])
  val_total, _ = eval_sums(run.fns.eval_chunk, state, run.data, run.chunks["val"])
  fetched = jax.device_get({"train_sums": sums, "train_eval": train_total,
                            "val_eval": val_total, "step": state.step})
  return state, fetched


def _checkpoint_meta(run: Run, epoch: int, es: monitor.EarlyStopping) -> dict[str, Any]:
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
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  dataset = _load_dataset(config) if dataset is None else dataset
  run = build_run(config, dataset)
  config = run.config
  metrics_path = os.path.join(workdir, METRICS_FILE)
  es = monitor.EarlyStopping.for_metric(config.train.early_stopping_metric,
                                        config.train.early_stopping_patience)

  with checkpoint_lib.Checkpointer(workdir, config.train.keep_checkpoints) as ckpt:
    _check_resume(run, workdir, None)
    restored = ckpt.restore_latest(run.abstract_state)
    if restored is None:
      state, start = place(run.fns.init(run.init_rng, run.data["x"][:1],
                                        run.data["mask"][:1])), 0
    else:
      state, meta = restored
      state = place(state)
      _check_resume(run, workdir, meta)
      start = int(meta["epoch"])
      # Patience may change on resume; the counters carry over.
      es = monitor.EarlyStopping.from_dict(
          {**meta["early_stopping"], "patience": config.train.early_stopping_patience})
      logging.info("Resuming %s from epoch %d (step %d).", workdir, start,
                   int(jax.device_get(state.step)))
    checkpoint_lib.write_config_file(workdir, config, run.fingerprint)
    records = truncate_metrics(metrics_path, start)
    logging.info("%d training sequences, %d steps/epoch, %d epochs, %d parameters.",
                 len(run.train_pos), run.steps_per_epoch, config.train.num_epochs,
                 models.count_params(state.params))

    bar = _progress(config, start, config.train.num_epochs)
    try:
      for epoch in range(start + 1, config.train.num_epochs + 1):
        if es.should_stop:
          break
        t0 = time.time()
        state, fetched = _run_epoch(run, state, epoch)
        sums, step = fetched["train_sums"], int(fetched["step"])
        if int(sums["first_bad_step"]) >= 0:
          _raise_nonfinite(epoch, int(sums["first_bad_step"]), "training loss")
        train_eval = summarise_eval(fetched["train_eval"])
        val_eval = summarise_eval(fetched["val_eval"])
        for name, ev in (("train", train_eval), ("validation", val_eval)):
          if not math.isfinite(ev["loss"]):
            _raise_nonfinite(epoch, step - 1, f"{name} loss (eval mode)")
        record = _epoch_record(run, epoch, step, sums, train_eval, val_eval,
                               time.time() - t0)
        es = es.update(record[config.train.early_stopping_metric])
        record["best_epoch"] = es.best_epoch
        _append_metrics(metrics_path, record)
        records.append(record)
        ckpt.save(epoch, state, _checkpoint_meta(run, epoch, es), best=es.improved)
        _log_epoch(record, config)
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
    return _finish(run, workdir, ckpt, records, es, t_start)


def _log_epoch(r: dict[str, Any], config: ml_collections.ConfigDict) -> None:
  msg = ("epoch %d/%d step %d: train loss %.4f acc %.4f | val loss %.4f acc %.4f | "
         "gap %+.4f (%s) | lr %.2e ls %.3f wd %.3f | %.1fs")
  args = (r["epoch"], config.train.num_epochs, r["step"], r["train_loss"], r["train_acc"],
          r["val_loss"], r["val_acc"], r["acc_gap"], r["overfitting"], r["lr"],
          r["label_smoothing"], r["weight_decay"], r["seconds"])
  if r["overfitting"] == monitor.OK:
    logging.info(msg, *args)
  else:
    logging.warning(msg + " -- %s overfitting: train accuracy exceeds validation by more "
                    "than %.2f", *args, r["overfitting"],
                    config.monitor.moderate_gap if r["overfitting"] == monitor.MODERATE
                    else config.monitor.significant_gap)


def _finish(run: Run, workdir: str, ckpt: checkpoint_lib.Checkpointer,
            records: list[dict[str, Any]], es: monitor.EarlyStopping,
            t_start: float) -> dict[str, Any]:
  """Evaluates the best checkpoint's weights on every split and writes the report."""
  state, meta = ckpt.restore_best(run.abstract_state)
  evals = {name: evaluate(run.fns.eval_chunk, state, run.data, run.chunks[name],
                          with_probs=(name == "test"))
           for name in ("train", "val", "test")}
  y_test = np.asarray(run.dataset.y)[np.asarray(run.dataset.split) == SPLIT_IDS["test"]]
  results = report_lib.summarise(
      config=run.config,
      evals=evals,
      y_test=y_test,
      class_names=tuple(run.dataset.class_names),
      records=records,
      best_epoch=int(meta["epoch"]),
      early_stopped=es.should_stop,
      num_params=models.count_params(state.params),
      wall_seconds=time.time() - t_start,
  )
  report_lib.write_report(workdir, results, records)
  logging.info("Test accuracy %.4f, macro-F1 %.4f (best epoch %d of %d); report in %s",
               results["test_acc"], results["macro_f1"], results["best_epoch"],
               results["epochs_run"], workdir)
  return results


def evaluate_and_report(config: ml_collections.ConfigDict, workdir: str, *,
                        dataset: Any = None) -> dict[str, Any]:
  """Restores the workdir's best checkpoint and rewrites the report; no training."""
  t_start = time.time()
  workdir = os.path.abspath(workdir)
  dataset = _load_dataset(config) if dataset is None else dataset
  run = build_run(config, dataset)
  with checkpoint_lib.Checkpointer(workdir, run.config.train.keep_checkpoints) as ckpt:
    if ckpt.latest_epoch() is None and ckpt.best_epoch() is None:
      raise checkpoint_lib.CheckpointError(
          f"no checkpoint in {workdir}; train first (--mode=train) with this --workdir.")
    _check_resume(run, workdir, None)
    restored = ckpt.restore_latest(run.abstract_state)
    if restored is None:
      raise checkpoint_lib.CheckpointError(f"no readable checkpoint in {workdir}.")
    _, meta = restored
    _check_resume(run, workdir, meta)
    es = monitor.EarlyStopping.from_dict(meta["early_stopping"])
    records = truncate_metrics(os.path.join(workdir, METRICS_FILE), int(meta["epoch"]))
    return _finish(run, workdir, ckpt, records, es, t_start)


def restore_best(config: ml_collections.ConfigDict, workdir: str, *,
                 dataset: Any = None) -> tuple[Run, TrainState, dict[str, Any]]:
  """The best checkpoint of ``workdir`` and the run it belongs to, for inspection.

  Refuses a config whose fingerprint differs from the one the run was trained
  with, so predictions never come from weights of another model or dataset.
  """
  workdir = os.path.abspath(workdir)
  dataset = _load_dataset(config) if dataset is None else dataset
  run = build_run(config, dataset)
  _check_resume(run, workdir, None)
  with checkpoint_lib.Checkpointer(workdir, run.config.train.keep_checkpoints) as ckpt:
    state, meta = ckpt.restore_best(run.abstract_state)
  _check_resume(run, workdir, meta)
  return run, state, meta


def predict(run: Run, state: TrainState, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """Class probabilities (N, C) for new, unlabelled sequences in eval mode."""
  x = np.asarray(x, np.float32)
  data = place({"x": x, "y": np.zeros(len(x), np.int32),
                "mask": np.asarray(mask, np.float32)})
  chunks = eval_chunks(np.arange(len(x)), max(1, min(int(run.config.train.eval_batch_size),
                                                     len(x))))
  return evaluate(run.fns.eval_chunk, state, data, chunks, with_probs=True)["probs"]

"""A run: everything built from (config, dataset) before the first step.

``build_run`` resolves the config for the dataset's size (``scaling``), builds
the model, optimizer, schedules and jitted functions (``compile_fns``, reused
for an identical config), puts the dataset on the devices and derives every
key; ``open_run`` adds the workdir check that every entry point needs. The
train loop (``train``), the report (``evaluation``), inference and export all
take a ``Run``.
"""
from __future__ import annotations

import functools
import os
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from cardiac_jax import compile_cache
from cardiac_jax import fingerprint as fingerprint_lib
from cardiac_jax import input_pipeline
from cardiac_jax import members as members_lib
from cardiac_jax import models
from cardiac_jax import optim
from cardiac_jax import parallel
from cardiac_jax import scaling
from cardiac_jax import schedules as schedules_lib
from cardiac_jax import steps
from cardiac_jax.data import dataset as dataset_lib
from cardiac_jax.data import splits as splits_lib


class Compiled(NamedTuple):
  """The jitted functions of one run, built once so they compile once."""
  init: Callable[..., steps.TrainState]
  train_epoch: Callable[..., tuple[steps.TrainState, dict[str, jax.Array]]]
  eval_chunk: Callable[..., tuple[dict[str, jax.Array], jax.Array]]


def compile_fns(model: Any, tx: optax.GradientTransformation,
                schedules: optim.Schedules, num_members: int = 1,
                member_axis: str = "vmap") -> Compiled:
  """Binds the static model/optimizer/schedules and jits over the member axis.

  The state (and the keys, and the epoch's batch indices) carry a leading
  member axis of ``num_members`` K: the epoch and evaluation run over it
  vmapped or mapped (``member_axis``), init always vmapped
  (``members.over_members``; K = 1 compiles the single model's program). The
  state is donated. Batches are split over the data-parallel mesh of all
  devices (one device: a no-op); the state and dataset stay replicated
  (``parallel.place``).
  """
  k = num_members
  init = functools.partial(steps.init_state, model=model, opt_init=jax.jit(tx.init))
  epoch = functools.partial(steps.train_epoch, model=model, tx=tx, schedules=schedules,
                            batch_sharding=parallel.batch_sharding())
  evaluate = functools.partial(steps.eval_chunk, model=model,
                               batch_sharding=parallel.batch_sharding())
  return Compiled(
      init=jax.jit(members_lib.over_members(init, k, "vmap", (0, None, None))),
      train_epoch=jax.jit(members_lib.over_members(epoch, k, member_axis, (0, None, 0, 0)),
                          donate_argnums=0, compiler_options=parallel.compiler_options()),
      eval_chunk=jax.jit(members_lib.over_members(evaluate, k, member_axis,
                                                  (0, None, None, None))),
  )


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
  """Everything built from (config, dataset) before the first step.

  ``abstract_state`` is the checkpoints' restore target (the stored form,
  ``members.to_storage``); ``init_rng`` / ``train_rng`` have the member axis.
  """
  config: ml_collections.ConfigDict
  dataset: dataset_lib.SequenceDataset
  model: Any
  schedules: optim.Schedules
  fns: Compiled
  data: dict[str, jax.Array]
  train_pos: np.ndarray
  chunks: dict[str, list[tuple[jax.Array, jax.Array]]]
  steps_per_epoch: int
  abstract_state: steps.TrainState
  fingerprint: dict[str, Any]
  init_rng: jax.Array
  train_rng: jax.Array
  num_members: int


def build_run(config: ml_collections.ConfigDict, dataset: dataset_lib.SequenceDataset) -> Run:
  """Resolves the config for this dataset and builds model, optimizer and jitted fns."""
  compile_cache.enable()
  split = np.asarray(dataset.split)
  for name, sid in splits_lib.SPLIT_IDS.items():
    if not np.any(split == sid):
      raise ValueError(f"the dataset has no {name!r} sequences; check data.split.fractions.")
  config = scaling.resolve_config(config, len(dataset.y))
  parallel.check_divisible(config.train.batch_size, "train.batch_size")
  train_pos = np.flatnonzero(split == splits_lib.SPLIT_IDS["train"])
  spe = schedules_lib.steps_per_epoch(len(train_pos), config.train.batch_size)
  model, scheds, fns = _model_and_fns(config, dataset.num_classes, dataset.length, spe)
  data = input_pipeline.device_arrays(dataset.x, dataset.y, dataset.mask,
                                      dataset.targets)
  chunk = input_pipeline.chunk_size(config, len(dataset.y))
  chunks = {name: input_pipeline.eval_chunks(np.flatnonzero(split == sid), chunk)
            for name, sid in splits_lib.SPLIT_IDS.items()}
  k = members_lib.num_members(config)
  # Member k: the keys of the one-member run with seed + k.
  keys = [jax.random.split(jax.random.key(s)) for s in members_lib.seeds(config)]
  init_rng, train_rng = (jnp.stack([pair[i] for pair in keys]) for i in (0, 1))
  sample_x, sample_mask = data["x"][:1], data["mask"][:1]
  # Checkpoints hold the stored form (``members.to_storage``).
  abstract_state = parallel.abstract_like(jax.eval_shape(
      lambda *a: members_lib.to_storage(fns.init(*a)), init_rng, sample_x, sample_mask))
  fp = fingerprint_lib.fingerprint(config, input_pipeline.data_key(dataset))
  return Run(config, dataset, model, scheds, fns, data, train_pos, chunks, spe,
             abstract_state, fp, init_rng, train_rng, k)


def open_run(config: ml_collections.ConfigDict, workdir: str,
             dataset: dataset_lib.SequenceDataset | None = None) -> tuple[Run, str]:
  """The prologue of every entry point: the run and its absolute workdir.

  Builds the dataset from ``config.data`` when none is given and refuses a
  workdir whose config.json holds an incompatible run.
  """
  workdir = os.path.abspath(workdir)
  run = build_run(config, input_pipeline.load_dataset(config) if dataset is None else dataset)
  fingerprint_lib.check_workdir(workdir, run.fingerprint)
  return run, workdir

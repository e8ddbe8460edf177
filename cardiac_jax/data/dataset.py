"""The sequence dataset: built once from config.data by its task's builder, cached, split-safe.

``config.data.task`` chooses the builder in ``BUILDERS`` (the six-population
walks of ``snapshot``, the fate walks of ``fate``, ...); every builder splits
its units before any sequence exists and fits the preprocessing on training
data only. The arrays are cached under a hash of every config.data field that
changes them and the builder's code version; ``observed_fraction`` and
``time_shuffle`` are applied after the cache, so every horizon and ablation
shares one set of splits and walks.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import types
import zipfile
from typing import Any

from absl import logging
import numpy as np

from cardiac_jax import fileio
from cardiac_jax import progress as progress_lib
from cardiac_jax.data import clonal
from cardiac_jax.data import fate
from cardiac_jax.data import regions
from cardiac_jax.data import sequences
from cardiac_jax.data import snapshot
from cardiac_jax.data import splits
from cardiac_jax.data import stages as stages_lib
from cardiac_jax.data.errors import DataError

# config.data.task -> its builder: a module with ``CODE_VERSION`` (part of the
# cache key), ``stages(data_cfg)`` (the progress bar's steps) and
# ``build(data_cfg, stage, preprocessor_path, key)`` -> the SequenceDataset's fields.
BUILDERS: dict[str, types.ModuleType] = {"snapshot": snapshot, "fate": fate, "clonal": clonal,
                                         "regions": regions}

# config.data fields that do not change the cached arrays (applied after the cache).
_NOT_IN_KEY = ("cache_dir", "fate_classes", "sequences.observed_fraction",
               "sequences.time_shuffle", "spatial.predict_walks")
_ARRAYS = ("x", "y", "mask", "split", "modality", "source_index")
_TABLE = "table/"   # npz key prefix of ``SequenceDataset.tables``


@dataclasses.dataclass(frozen=True)
class SequenceDataset:
  """Sequences of cells (modality 0) and spots (modality 1), all numpy.

  Attributes:
    x: (N, L, F) float32; per step the PCA coordinates, the day in [0, 1] and the
      modality flag (F = n_pcs + 2).
    y: (N,) int32 class id into ``class_names``.
    mask: (N, L) float32, 1 = visible step.
    split: (N,) int8 index into ``splits.SPLITS``.
    modality: (N,) int8, 0 = single-cell temporal, 1 = spatial.
    source_index: (N, L) int64 row of each step in the prepared Cells (modality 0)
      or Spots (modality 1).
    class_names: the class names, in label order.
    meta: JSON-able facts (cache key, counts per split and class, time labels, ...).
    tables: named arrays of the units the sequences are drawn from, for tasks
      that score units rather than sequences (a clone's cells, a section's
      spots: ``clones``, ``regions``); not indexed by sequence, carried as they are.
    targets: optional (N, C) float32 soft labels, rows summing to one (a fate
      model's P per terminal population, ``data.fate.labels`` "forward" or "exact");
      the loss uses them instead of the one-hot of ``y`` (then their argmax).
  """
  x: np.ndarray
  y: np.ndarray
  mask: np.ndarray
  split: np.ndarray
  modality: np.ndarray
  source_index: np.ndarray
  class_names: tuple[str, ...]
  meta: dict
  tables: dict = dataclasses.field(default_factory=dict)
  targets: np.ndarray | None = None

  def __post_init__(self):
    n = self.x.shape[0]
    if self.x.ndim != 3:
      raise DataError(f"x must be (N, L, F), got shape {self.x.shape}")
    for name in ("y", "split", "modality"):
      if getattr(self, name).shape != (n,):
        raise DataError(f"{name} must have shape ({n},), got {getattr(self, name).shape}")
    for name in ("mask", "source_index"):
      if getattr(self, name).shape != self.x.shape[:2]:
        raise DataError(f"{name} must have shape {self.x.shape[:2]}, got "
                        f"{getattr(self, name).shape}")
    if self.targets is not None and self.targets.shape != (n, len(self.class_names)):
      raise DataError(f"targets must have shape ({n}, {len(self.class_names)}), got "
                      f"{self.targets.shape}")

  def __len__(self) -> int:
    return int(self.x.shape[0])

  @property
  def num_features(self) -> int:
    return int(self.x.shape[2])

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def length(self) -> int:
    return int(self.x.shape[1])

  def part(self, split_name: str) -> "SequenceDataset":
    """The sequences of one split ("train", "val" or "test")."""
    if split_name not in splits.SPLITS:
      raise ValueError(f"unknown split {split_name!r}; choose one of {splits.SPLITS}")
    return self.subset(self.split == splits.SPLITS.index(split_name))

  def subset(self, keep: np.ndarray) -> "SequenceDataset":
    """The sequences selected by a boolean mask (or index array) over the N sequences."""
    targets = None if self.targets is None else self.targets[keep]
    return dataclasses.replace(self, targets=targets,
                               **{k: getattr(self, k)[keep] for k in _ARRAYS})

  def save(self, path: str | os.PathLike) -> pathlib.Path:
    """Writes an npz (no pickle) atomically (``fileio.atomic_path``); like every
    workdir and cache write, only on the primary process of a multi-process run."""
    path = pathlib.Path(path)
    if not fileio.is_primary():
      return path
    arrays = {k: getattr(self, k) for k in _ARRAYS}
    arrays["class_names"] = np.asarray(self.class_names, dtype=np.str_)
    arrays["meta"] = np.asarray(json.dumps(self.meta, sort_keys=True))
    arrays.update({_TABLE + k: np.asarray(v) for k, v in self.tables.items()})
    if self.targets is not None:
      arrays["targets"] = self.targets
    with fileio.atomic_path(path) as tmp:
      with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    return path

  @classmethod
  def load(cls, path: str | os.PathLike) -> "SequenceDataset":
    """Reads a file written by ``save`` (np.load with allow_pickle=False)."""
    with np.load(path, allow_pickle=False) as z:
      missing = [k for k in _ARRAYS + ("class_names", "meta") if k not in z.files]
      if missing:
        raise DataError(f"{path} is not a SequenceDataset file (missing {missing}); "
                        "delete it and rebuild.")
      arrays = {k: z[k] for k in _ARRAYS}
      class_names = tuple(str(c) for c in z["class_names"])
      meta = json.loads(str(z["meta"]))
      tables = {k[len(_TABLE):]: z[k] for k in z.files if k.startswith(_TABLE)}
      targets = z["targets"] if "targets" in z.files else None
    return cls(class_names=class_names, meta=meta, tables=tables, targets=targets, **arrays)


# ---------------------------------------------------------------- cache


def _as_dict(cfg: Any) -> dict:
  if hasattr(cfg, "to_dict"):
    return cfg.to_dict()
  return {k: _as_dict(v) if isinstance(v, dict) else v for k, v in dict(cfg).items()}


def _file_stamp(path: str) -> dict | str:
  """Path, size and mtime of an input file, so editing the data invalidates the cache."""
  if not path:
    return ""
  try:
    st = os.stat(path)
  except OSError:
    return os.path.abspath(path)
  return {"path": os.path.abspath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def cache_key(data_cfg: Any) -> str:
  """sha256 of the canonical JSON of every config.data field that changes the arrays."""
  d = _as_dict(data_cfg)
  for dotted in _NOT_IN_KEY:
    *parents, leaf = dotted.split(".")
    node = d
    for p in parents:
      node = node.get(p, {})
    node.pop(leaf, None)
  if d.get("source") == "h5ad":
    d["path"] = _file_stamp(d.get("path", ""))
  spatial = d.get("spatial", {})
  if (spatial.get("enabled") or d.get("task") == "regions") and spatial.get("source") == "h5ad":
    spatial["path"] = _file_stamp(spatial.get("path", ""))
  d["_code_version"] = builder(data_cfg).CODE_VERSION
  canonical = json.dumps(d, sort_keys=True, separators=(",", ":"), default=str)
  return hashlib.sha256(canonical.encode()).hexdigest()


def cache_dir(data_cfg: Any) -> pathlib.Path:
  """config.data.cache_dir, else $CARDIAC_JAX_CACHE, else ~/.cache/cardiac_jax."""
  chosen = data_cfg.get("cache_dir", "") if hasattr(data_cfg, "get") else ""
  chosen = chosen or os.environ.get("CARDIAC_JAX_CACHE", "") or "~/.cache/cardiac_jax"
  return pathlib.Path(chosen).expanduser()


def cache_paths(data_cfg: Any) -> tuple[pathlib.Path, pathlib.Path]:
  """(dataset npz, preprocessor npz) of this config in the cache."""
  key = cache_key(data_cfg)[:20]
  root = cache_dir(data_cfg)
  return root / f"sequences-{key}.npz", root / f"preprocessor-{key}.npz"


def task(data_cfg: Any) -> str:
  """``config.data.task`` ("snapshot" when absent: configs from before tasks existed)."""
  return str(data_cfg.get("task", "snapshot") if hasattr(data_cfg, "get") else "snapshot")


def builder(data_cfg: Any) -> types.ModuleType:
  """The builder module of ``config.data.task``."""
  name = task(data_cfg)
  if name not in BUILDERS:
    raise DataError(f"config.data.task={name!r} is unknown; choose one of {sorted(BUILDERS)}.")
  return BUILDERS[name]


def planned_stages(data_cfg: Any, cache: bool) -> list[str]:
  """The stages a build of this config runs, in order (the progress bar's steps).

  "save" appears once per save: the preprocessor and, with the cache, the dataset.
  """
  return builder(data_cfg).stages(data_cfg) + (["save", "save"] if cache else [])


def post_process(ds: SequenceDataset, data_cfg: Any) -> SequenceDataset:
  """Applies the horizon and the time-shuffle ablation (both after the cache).

  The shuffle's seed derives from config.data.sequences.seed, so it is repeatable.
  """
  seq_cfg = data_cfg.sequences
  f = float(seq_cfg.observed_fraction)
  shuffle = bool(seq_cfg.time_shuffle)
  x, mask, src = ds.x, ds.mask, ds.source_index
  if f < 1.0:
    x, mask = sequences.apply_horizon(x, mask, f)
  if shuffle:
    rng = np.random.default_rng([int(seq_cfg.seed), 2])
    x, src = sequences.permute_steps(sequences.time_permutation(mask, rng), x, src)
  meta = dict(ds.meta, observed_fraction=f, time_shuffle=shuffle)
  return dataclasses.replace(ds, x=x, mask=mask, source_index=src, meta=meta)


def build_dataset(data_cfg: Any, *, cache: bool = True, timings: dict | None = None,
                  progress: bool | None = None) -> SequenceDataset:
  """Builds (or loads from the cache) the sequence dataset of ``config.data``.

  Args:
    data_cfg: ``config.data``.
    cache: read and write the on-disk cache (see ``cache_paths``); the fitted
      Preprocessor is saved next to the dataset for predicting new data.
    timings: optional dict filled with {stage: {"seconds", "peak_rss_mb"}}.
    progress: a progress bar over the build stages (``planned_stages``); None =
      in a terminal or a notebook only (``cardiac_jax.progress.enabled``).

  Returns:
    The SequenceDataset, with the horizon / time-shuffle of the config applied.

  Raises:
    DataError: bad data or a config the data cannot satisfy (the message says how
      to fix it), e.g. too few cells of a population in a split.
  """
  # Validate post-cache settings before spending minutes on a build.
  sequences.visible_steps(int(data_cfg.sequences.length),
                          float(data_cfg.sequences.observed_fraction))
  key = cache_key(data_cfg)
  ds_path, pp_path = cache_paths(data_cfg)
  if cache and ds_path.exists() and pp_path.exists():
    try:
      with stages_lib.Stages(timings)("cache_load"):
        ds = SequenceDataset.load(ds_path)
      if ds.meta.get("cache_key") != key:
        raise DataError(f"cache key mismatch in {ds_path}")
      logging.info("build_dataset: cache hit %s", ds_path)
      return post_process(ds, data_cfg)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
      logging.warning("build_dataset: unreadable cache file %s (%s); rebuilding.", ds_path, e)
  bar = progress_lib.bar(len(planned_stages(data_cfg, cache)), desc="build_dataset",
                         unit="stage", progress=progress)
  stage = stages_lib.Stages(timings, bar)
  try:
    ds = SequenceDataset(**builder(data_cfg).build(data_cfg, stage, pp_path if cache else None,
                                                   key))
    if cache:
      with stage("save"):
        ds.save(ds_path)
      logging.info("build_dataset: cached %d sequences in %s", len(ds), ds_path)
  finally:
    bar.close()
  return post_process(ds, data_cfg)

"""The sequence dataset: built once from config.data, cached on disk, split-safe.

Pipeline (``build_dataset``): load cells -> prepare -> split cells (before any
sequence exists) -> fit the preprocessor on TRAIN cells only -> transform all
cells -> per split, lineage-consistent walks among that split's cells -> spatial
spots the same way (tiles as the unit of splitting, held-out spots next to
another split left out as a buffer, the same preprocessor) ->
features. The arrays are cached under a hash of every config.data field that
changes them; ``observed_fraction`` and ``time_shuffle`` are applied after the
cache, so every horizon and ablation shares one set of splits and walks.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import pathlib
import resource
import sys
import time
import zipfile
from typing import Any, Callable, Iterator, Sequence

from absl import logging
import numpy as np

from cardiac_jax import fileio
from cardiac_jax import progress as progress_lib
from cardiac_jax.data import sequences
from cardiac_jax.data import splits
from cardiac_jax.data.errors import DataError

# Bump when the code changes what a given config produces; invalidates old caches.
CODE_VERSION = "sequences-v2"   # v2: spatial buffer, train-chosen classes
# config.data fields that do not change the cached arrays (applied after the cache).
_NOT_IN_KEY = ("cache_dir", "fate_classes", "sequences.observed_fraction",
               "sequences.time_shuffle")
# A class is a spatial label only when training promises this many anchor spots
# in every held-out split (see _spatial_plan).
MIN_SPATIAL_ANCHORS = 3
_ARRAYS = ("x", "y", "mask", "split", "modality", "source_index")


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
  """
  x: np.ndarray
  y: np.ndarray
  mask: np.ndarray
  split: np.ndarray
  modality: np.ndarray
  source_index: np.ndarray
  class_names: tuple[str, ...]
  meta: dict

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
    return dataclasses.replace(self, **{k: getattr(self, k)[keep] for k in _ARRAYS})

  def save(self, path: str | os.PathLike) -> pathlib.Path:
    """Writes an npz (no pickle) atomically (``fileio.atomic_path``); like every
    workdir and cache write, only on the primary process of a multi-process run."""
    path = pathlib.Path(path)
    if not fileio.is_primary():
      return path
    arrays = {k: getattr(self, k) for k in _ARRAYS}
    arrays["class_names"] = np.asarray(self.class_names, dtype=np.str_)
    arrays["meta"] = np.asarray(json.dumps(self.meta, sort_keys=True))
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
    return cls(class_names=class_names, meta=meta, **arrays)


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
  if spatial.get("enabled") and spatial.get("source") == "h5ad":
    spatial["path"] = _file_stamp(spatial.get("path", ""))
  d["_code_version"] = CODE_VERSION
  if d.get("fate") is not None:
    from cardiac_jax import fate  # pylint: disable=g-import-not-at-top
    d["_fate_code_version"] = fate.CODE_VERSION
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


# ---------------------------------------------------------------- build


class _Stages:
  """Wall seconds and peak RSS per pipeline stage, into an optional dict.

  Also advances ``bar`` (a progress bar, one step per stage, named in its postfix).
  """

  def __init__(self, out: dict | None, bar: Any = None):
    self.out = out
    self.bar = bar

  @contextlib.contextmanager
  def __call__(self, name: str) -> Iterator[None]:
    if self.bar is not None:
      self.bar.set_postfix_str(name)
    start = time.perf_counter()
    yield
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak_mb = peak / 2**20 if sys.platform == "darwin" else peak / 2**10
    logging.info("build_dataset: %s done in %.2f s (peak RSS %.0f MB)", name, seconds, peak_mb)
    if self.out is not None:
      prev = self.out.get(name, {"seconds": 0.0})
      self.out[name] = {"seconds": prev["seconds"] + seconds, "peak_rss_mb": peak_mb}
    if self.bar is not None:
      self.bar.update(1)


def _wants_spatial(data_cfg: Any) -> bool:
  """Whether the build makes spatial sequences (one test for ``_build`` and the bar)."""
  return bool(data_cfg.spatial.enabled) and int(data_cfg.sequences.spatial_total) > 0


def planned_stages(data_cfg: Any, cache: bool) -> list[str]:
  """The stages ``_build`` runs for this config, in order (the progress bar's steps).

  "save" appears once per save: the preprocessor and, with the cache, the dataset.
  """
  names = ["simulate" if data_cfg.source == "simulator" else "load", "prepare", "split",
           "preprocess_fit", "transform", "neighbour_tables", "walks"]
  if _wants_spatial(data_cfg):
    names.append("spatial")
  names.append("assemble")
  if cache:
    names += ["save", "save"]
  return names


def _load_anndata(source: str, path: str, simulate: Callable[[], Any], key: str,
                  empty_path_fix: str, backed: bool = False) -> "anndata.AnnData":
  """``simulate()`` or the h5ad at ``path``, as config.``key``.source says.

  ``backed`` leaves an h5ad's X on disk (``ingest.load_h5ad``).
  """
  if source == "simulator":
    return simulate()
  if source == "h5ad":
    if not path:
      raise DataError(f"config.{key}.source is 'h5ad' but config.{key}.path is empty; "
                      f"{empty_path_fix}")
    from cardiac_jax.data import ingest  # pylint: disable=g-import-not-at-top
    return ingest.load_h5ad(path, backed=backed)
  raise DataError(f"config.{key}.source must be 'simulator' or 'h5ad', got {source!r}")


def load_cells(data_cfg: Any, backed: bool = False) -> "anndata.AnnData":
  """The configured single-cell AnnData (simulated or read from config.data.path).

  ``backed=True`` leaves an h5ad's X on disk, for `ingest.prepare_cells` to stream
  (the caller closes ``adata.file``); simulated data is always in memory.
  """
  def simulate():
    from cardiac_jax.data import simulator  # pylint: disable=g-import-not-at-top
    s = data_cfg.simulator
    return simulator.simulate_cells(n_cells=s.n_cells, n_genes=s.n_genes,
                                    n_donors=s.n_donors, seed=s.seed)
  return _load_anndata(data_cfg.source, data_cfg.path, simulate, "data",
                       "set it to the .h5ad file (see cardiac_jax.data.geo for GEO downloads).",
                       backed=backed)


def load_spots(data_cfg: Any) -> "anndata.AnnData":
  """The configured spatial AnnData (simulated or read from config.data.spatial.path)."""
  sp_cfg = data_cfg.spatial

  def simulate():
    from cardiac_jax.data import simulator  # pylint: disable=g-import-not-at-top
    return simulator.simulate_spatial(n_spots=sp_cfg.n_spots, n_genes=data_cfg.simulator.n_genes,
                                      cells_per_spot=sp_cfg.cells_per_spot, seed=sp_cfg.seed)
  return _load_anndata(sp_cfg.source, sp_cfg.path, simulate, "data.spatial",
                       "set it, or set config.data.spatial.enabled = False.")


def _spatial_plan(labels: np.ndarray, spot_split: np.ndarray, class_names: Sequence[str],
                  total: int, fractions) -> tuple[np.ndarray, list[int]]:
  """Spatial sequences per (split, class): the split's share, equal over the chosen classes.

  The classes are chosen from TRAINING labels and the split sizes only, never
  from validation / test labels (that would let held-out data shape the task):
  a class is a spatial label when its training spots, scaled by the size of the
  smallest held-out split relative to training, promise >= MIN_SPATIAL_ANCHORS
  anchors there. The same classes are used in every split where they occur; a
  chosen class with no spot at all in a held-out split hands its share there to
  the other chosen classes (with a warning). A chosen class with few anchors in
  a split reuses them (``sequences.choose_anchors``, at most
  ``MAX_ANCHOR_REUSE`` times each); too few even for that raises a DataError
  that says how to fix the spatial split.

  Args:
    labels: (n_spots,) class per spot.
    spot_split: (n_spots,) split id per spot; ``splits.UNUSED`` spots are ignored.
    class_names: the class names, in label order.
    total: spatial sequences over all splits.
    fractions: split fractions.

  Returns:
    (plan (S, C) int64 sequences per split and class, chosen class ids).
  """
  used = spot_split >= 0
  per = np.zeros((len(splits.SPLITS), len(class_names)), dtype=np.int64)
  np.add.at(per, (spot_split[used].astype(np.int64), labels[used].astype(np.int64)), 1)
  sizes = per.sum(axis=1)
  plan = np.zeros_like(per)
  if sizes[0] == 0:
    raise DataError("the spatial training split has no spots; use more spots or a smaller "
                    "config.data.spatial.tile_size.")
  expected = per[0] * (sizes[1:].min() / sizes[0])      # anchors promised in the smallest
  eligible = np.flatnonzero(expected >= MIN_SPATIAL_ANCHORS)
  if total == 0:
    return plan, eligible.tolist()
  if eligible.size == 0:
    raise DataError(
        f"no population has enough training spots to expect >= {MIN_SPATIAL_ANCHORS} dominant "
        f"spots in every held-out split (training spots per class: {per[0].tolist()}, spots "
        f"per split: {sizes.tolist()}); use more spots, a smaller "
        "config.data.spatial.tile_size or buffer_spacings, or set "
        "config.data.spatial.enabled = False.")
  split_totals = splits.allocate(total, fractions)
  for s, n in enumerate(split_totals):   # three splits
    # A chosen class absent from a held-out split (a small region whose tiles all
    # went elsewhere) gives its share to the other chosen classes there.
    present = eligible[per[s, eligible] > 0]
    if present.size < eligible.size:
      logging.warning("spatial %s split has no spot of %s; its sequences go to the other "
                      "spatial classes there", splits.SPLITS[s],
                      [class_names[c] for c in eligible if per[s, c] == 0])
    if present.size == 0:
      raise DataError(
          f"the spatial {splits.SPLITS[s]} split has no spot of any spatial class "
          f"{[class_names[c] for c in eligible]} (spots per split x class: {per.tolist()}); "
          "use more spots, a smaller config.data.spatial.tile_size or buffer_spacings, or "
          "another config.data.split.seed.")
    plan[s, present] = splits.allocate(n, np.full(present.size, 1.0 / present.size))
  short = (plan > 0) & (plan > sequences.MAX_ANCHOR_REUSE * per)
  if short.any():
    s, c = (int(v[0]) for v in np.nonzero(short))
    raise DataError(
        f"spatial population {class_names[c]!r} was chosen from the training spots but the "
        f"{splits.SPLITS[s]} split has only {per[s, c]} spot(s) of it for {plan[s, c]} "
        f"sequences (spots per split x class: {per.tolist()}); use more spots, a smaller "
        "config.data.spatial.tile_size or buffer_spacings, another "
        "config.data.split.seed, or a smaller config.data.sequences.spatial_total.")
  return plan, eligible.tolist()


def counts_table(y: np.ndarray, split: np.ndarray, class_names) -> dict:
  """Sequences per split x class, the meta's "counts" (every builder's, fate's too)."""
  return {name: {c: int(np.sum((split == s) & (y == i))) for i, c in enumerate(class_names)}
          for s, name in enumerate(splits.SPLITS)}


def embedded_cells(data_cfg: Any, stage: _Stages | None = None) -> tuple[Any, np.ndarray,
                                                                         Any, np.ndarray]:
  """Loads, prepares and splits the cells, then embeds them with a TRAIN-fitted preprocessor.

  The one prologue of every sequence builder (``_build``, ``cardiac_jax.fate``),
  so they all split before any walk and fit the preprocessing on training cells.

  Returns:
    (cells, cell_split (n,) int8, the fitted Preprocessor, pcs (n, n_pcs) float32).
  """
  from cardiac_jax.data import ingest  # pylint: disable=g-import-not-at-top
  from cardiac_jax.data import preprocess  # pylint: disable=g-import-not-at-top

  stage = stage or _Stages(None)
  split_cfg = data_cfg.split
  fractions = tuple(split_cfg.fractions)
  with stage("simulate" if data_cfg.source == "simulator" else "load"):
    # X stays on disk: prepare reads it once, in chunks, into its float32 copy, so the
    # file's integer matrix is never held as well (half the peak at full size).
    adata = load_cells(data_cfg, backed=True)
  with stage("prepare"):
    try:
      cells = ingest.prepare_cells(adata, data_cfg)
    finally:
      if adata.isbacked:
        adata.file.close()
    del adata
  class_names = tuple(cells.class_names)
  logging.info("build_dataset: %d cells x %d genes, %d days, classes %s", cells.counts.shape[0],
               cells.counts.shape[1], len(cells.time_labels), class_names)

  with stage("split"):
    groups = None
    if split_cfg.group_by_donor:
      if cells.donors is None:
        raise DataError("config.data.split.group_by_donor is set but the cells have no donor "
                        "column; set config.data.donor_key or turn group_by_donor off.")
      groups = cells.donors
    cell_split = splits.split_cells(cells.labels, fractions, split_cfg.seed, groups)

  with stage("preprocess_fit"):
    train_rows = np.flatnonzero(cell_split == 0)
    pp = preprocess.fit_preprocessor(cells.counts, cells.gene_names, train_rows,
                                     data_cfg.preprocess)
  with stage("transform"):
    pcs = np.asarray(pp.transform(cells.counts, cells.gene_names), dtype=np.float32)
  return cells, cell_split, pp, pcs


def _build(data_cfg: Any, stage: _Stages, preprocessor_path: pathlib.Path | None,
           key: str) -> SequenceDataset:
  from cardiac_jax.data import ingest  # pylint: disable=g-import-not-at-top
  from cardiac_jax.data import preprocess  # pylint: disable=g-import-not-at-top

  seq_cfg = data_cfg.sequences
  fractions = tuple(data_cfg.split.fractions)
  length, k = int(seq_cfg.length), int(seq_cfg.k_neighbors)
  cells, cell_split, pp, pcs = embedded_cells(data_cfg, stage)
  class_names = tuple(cells.class_names)
  n_cells = cells.n_cells
  # The transform was the counts' last use: free them (most of the full-size peak)
  # before the walks and the spatial section.
  cells = dataclasses.replace(cells, counts=None)

  per_split = splits.allocate(int(seq_cfg.per_population), fractions)    # (S,)
  with stage("neighbour_tables"):
    graphs = [sequences.temporal_graph(pcs, cells.time_index, cells.labels,
                                       np.flatnonzero(cell_split == s), k)
              for s in range(len(splits.SPLITS))]
  temporal = []
  with stage("walks"):
    for s, name in enumerate(splits.SPLITS):
      rng = np.random.default_rng([int(seq_cfg.seed), 0, s])
      src, y = sequences.temporal_walks(graphs[s], np.full(len(class_names), per_split[s]),
                                        length, rng, class_names, name)
      temporal.append((src, y, np.full(y.size, s, np.int8)))
      logging.info("build_dataset: %s: %d temporal sequences from %d cells", name, y.size,
                   graphs[s].size)
  del graphs

  spatial, spots, spatial_classes, spot_split, buffered = [], None, [], None, {}
  if _wants_spatial(data_cfg):
    with stage("spatial"):
      spots = ingest.prepare_spots(load_spots(data_cfg), data_cfg, class_names)
      preprocess.shared_gene_count(pp, spots.gene_names, int(data_cfg.spatial.min_shared_genes))
      spacing = splits.spot_spacing(spots.coords)
      tiles = splits.spatial_tiles(spots.coords, data_cfg.spatial.tile_size, spacing)
      tiled = splits.split_spots(spots.labels, tiles, fractions, data_cfg.split.seed)
      spot_split = splits.buffer_spots(spots.coords, tiled, float(data_cfg.spatial.buffer_spacings),
                                       spacing)
      buffered = {name: int(np.sum((tiled == s) & (spot_split == splits.UNUSED)))
                  for s, name in enumerate(splits.SPLITS)}
      logging.info("build_dataset: spots left out as a buffer between splits: %s", buffered)
      spot_pcs = np.asarray(pp.transform(spots.counts, spots.gene_names), dtype=np.float32)
      plan, spatial_classes = _spatial_plan(spots.labels, spot_split, class_names,
                                            int(seq_cfg.spatial_total), fractions)
      for s, name in enumerate(splits.SPLITS):
        graph = sequences.spatial_graph(spots.coords, spots.labels,
                                        np.flatnonzero(spot_split == s), spacing)
        rng = np.random.default_rng([int(seq_cfg.seed), 1, s])
        src, y = sequences.spatial_walks(graph, plan[s], length, rng, class_names, name)
        spatial.append((src, y, np.full(y.size, s, np.int8)))

  with stage("assemble"):
    n_t = sum(p[1].size for p in temporal)
    n_s = sum(p[1].size for p in spatial)
    n_pcs = pcs.shape[1]
    x = np.empty((n_t + n_s, length, n_pcs + 2), dtype=np.float32)
    src_t = np.concatenate([p[0] for p in temporal])
    sequences.assemble_features(
        pcs, src_t, sequences.time_feature(cells.time_index, len(cells.time_labels)), 0,
        out=x[:n_t])
    parts_src, parts_y, parts_split = [src_t], [p[1] for p in temporal], [p[2] for p in temporal]
    if spatial:
      src_s = np.concatenate([p[0] for p in spatial])
      sequences.assemble_features(spot_pcs, src_s, sequences.SPATIAL_TIME, 1, out=x[n_t:])
      parts_src.append(src_s)
      parts_y += [p[1] for p in spatial]
      parts_split += [p[2] for p in spatial]
    y = np.concatenate(parts_y).astype(np.int32)
    split = np.concatenate(parts_split).astype(np.int8)
    modality = np.concatenate([np.zeros(n_t, np.int8), np.ones(n_s, np.int8)])
    meta = {
        "cache_key": key,
        "code_version": CODE_VERSION,
        "class_names": list(class_names),
        "time_labels": list(cells.time_labels),
        "n_pcs": int(n_pcs),
        "num_features": int(n_pcs + 2),
        "length": length,
        "n_cells": int(n_cells),
        "n_spots": int(spots.counts.shape[0]) if spots is not None else 0,
        "cells_per_split": np.bincount(cell_split, minlength=3).tolist(),
        "counts": counts_table(y, split, class_names),
        "temporal_counts": counts_table(y[:n_t], split[:n_t], class_names),
        "spatial_counts": counts_table(y[n_t:], split[n_t:], class_names),
        "spatial_classes": [class_names[c] for c in spatial_classes],
        "spots_per_split": ({name: int(np.sum(spot_split == s))
                             for s, name in enumerate(splits.SPLITS)}
                            if spot_split is not None else {}),
        "spots_buffered": buffered,
        "spatial_time_feature": sequences.SPATIAL_TIME,
        "preprocessor": preprocessor_path.name if preprocessor_path is not None else "",
        "data_config": json.loads(json.dumps(_as_dict(data_cfg), default=str)),
    }
    ds = SequenceDataset(x=x, y=y, mask=np.ones((n_t + n_s, length), np.float32), split=split,
                         modality=modality, source_index=np.concatenate(parts_src),
                         class_names=class_names, meta=meta)
  if preprocessor_path is not None:
    with stage("save"):
      pp.save(preprocessor_path)   # atomic itself
  return ds


def _builder(data_cfg: Any) -> Callable[..., SequenceDataset]:
  """``_build``, or the fate builder when the config has a ``data.fate`` section."""
  if data_cfg.get("fate") is None:
    return _build
  from cardiac_jax import fate  # pylint: disable=g-import-not-at-top
  return fate.build


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
      with _Stages(timings)("cache_load"):
        ds = SequenceDataset.load(ds_path)
      if ds.meta.get("cache_key") != key:
        raise DataError(f"cache key mismatch in {ds_path}")
      logging.info("build_dataset: cache hit %s", ds_path)
      return post_process(ds, data_cfg)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
      logging.warning("build_dataset: unreadable cache file %s (%s); rebuilding.", ds_path, e)
  bar = progress_lib.bar(len(planned_stages(data_cfg, cache)), desc="build_dataset",
                         unit="stage", progress=progress)
  stage = _Stages(timings, bar)
  try:
    ds = _builder(data_cfg)(data_cfg, stage, pp_path if cache else None, key)
    if cache:
      with stage("save"):
        ds.save(ds_path)
      logging.info("build_dataset: cached %d sequences in %s", len(ds), ds_path)
  finally:
    bar.close()
  return post_process(ds, data_cfg)

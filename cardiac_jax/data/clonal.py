"""Clones as sequences: a barcoded clone's early cells, predicting the fate its later cells show.

Lineage tracing (LARRY, CellTag) labels cells early; cells sampled on later days
that share a barcode are one clone. Unlike a walk through a snapshot (a Markov
chain from its anchor, which carries nothing beyond the anchor cell), a clone's
cells are related by descent and share a heritable fate bias that each cell's
transcriptome shows only in part: pooling them is where a sequence knows more
than a cell.

1. Clones (``read_clones``): ``obs[data.clone_key]`` (""/NaN = no barcode) or
   ``obsm[data.clone_obsm]`` (cells x clones, 0/1, the CoSpar/CellRank convention).
2. Fates (``clone_fates``): a clone's cells on ``data.clonal.fate_day`` (default the
   last time label) among ``data.clonal.fate_classes`` (default: the populations
   present that day): the fraction in each, and the majority as its label (an
   exact tie has none). A clone with cells both before and on the fate day is
   labelled; one seen only early is predicted but never scored.
3. Splits by clone (``splits.rotation_split``, stratified by label): no clone
   crosses splits, and over the rotations every labelled clone is tested once.
   The preprocessing is fitted on the cells of training clones and of cells with no
   labelled clone; a validation or test clone's cells never shape it.
4. Sequences (``clone_sequences``): a unit is (clone, observation day d): the
   clone's cells on days <= d before the fate day, ordered by day, in random order
   within a day, at most ``data.sequences.length`` of them (a random subset of
   larger clones, drawn anew for every draw: augmentation in training, averaged
   draws in evaluation). Fate-day cells never enter a sequence. Every sampling
   day before the fate day is an observation day: the early-fate question.

The dataset's ``tables`` hold every barcoded clone's early cells (PCs, day, clone)
and each clone's split, label and fate fractions, so ``clones.report`` can score
every held-out clone at every observation day and the baselines read the same
cells (``clone_baselines``).
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any, Sequence

from absl import logging
import numpy as np

from cardiac_jax.data import sequences
from cardiac_jax.data import sources
from cardiac_jax.data import splits
from cardiac_jax.data import stages as stages_lib
from cardiac_jax.data.errors import DataError

# Bump when the code changes what a given config produces (cache key).
CODE_VERSION = "clonal-v2"   # v2: the clone-size feature
NO_CLONE = -1
# The last feature of a step (the modality flag elsewhere, constant here) carries how many
# of the clone's cells were sampled on that step's day: log(1 + n) / log(1 + SIZE_SCALE).
# A sequence holds at most ``length`` cells and the model pools them by a mean, so without
# it the clone's size per day (heritable, and read by the pooled baselines) would be lost.
SIZE_SCALE = 100.0
UNLABELLED = -1      # a clone's split / label when it has no fate-day cell


@dataclasses.dataclass(frozen=True)
class Clones:
  """Each cell's clone and each clone's fate (``read_clones`` + ``clone_fates``)."""
  cell_clone: np.ndarray     # (n_cells,) int64 index into names, NO_CLONE for none
  names: np.ndarray          # (n_clones,) str
  fate_day: int              # time index of the fate day
  fate_classes: tuple[str, ...]
  fractions: np.ndarray      # (n_clones, F) float32 fate-day composition (NaN: none)
  fate_cells: np.ndarray     # (n_clones,) int64 fate-day cells among the fate classes
  label: np.ndarray          # (n_clones,) int64 majority fate, UNLABELLED when none or tied
  early_cells: np.ndarray    # (n_clones,) int64 cells before the fate day


def clone_column(adata: Any, data_cfg: Any) -> np.ndarray:
  """Each cell's clone name ("" = no barcode), from obs or obsm as the config says.

  Read while the AnnData is open (``sources.prepared_cells``), aligned later by name.
  """
  obsm_key = str(data_cfg.get("clone_obsm", "") or "")
  obs_key = str(data_cfg.get("clone_key", "") or "")
  if obsm_key:
    if obsm_key not in adata.obsm:
      raise DataError(f"obsm has no {obsm_key!r} (config.data.clone_obsm); obsm keys present: "
                      f"{list(adata.obsm.keys())}; set config.data.clone_obsm to the cells x "
                      "clones matrix, or to '' and config.data.clone_key to an obs column")
    return _names_from_matrix(adata.obsm[obsm_key], adata.uns.get("clone_names"), obsm_key)
  if not obs_key or obs_key not in adata.obs.columns:
    raise DataError(f"obs has no clone column {obs_key!r} (config.data.clone_key); obs keys "
                    f"present: {list(adata.obs.columns)}; set config.data.clone_key to the "
                    "column of barcodes, or config.data.clone_obsm to a cells x clones matrix "
                    "in obsm (e.g. 'X_clone')")
  column = adata.obs[obs_key]
  names = column.astype(object).where(column.notna(), "").astype(str).to_numpy()
  return np.where(np.isin(names, ["nan", "None"]), "", names)


def clones_by_cell(adata: Any, data_cfg: Any) -> Any:
  """``clone_column`` as a pandas Series indexed by cell name (names must be unique)."""
  import pandas as pd  # pylint: disable=g-import-not-at-top
  if not adata.obs_names.is_unique:
    raise DataError("cell names (obs_names) repeat, so clones cannot be matched to cells; "
                    "make them unique (adata.obs_names_make_unique()) and write the h5ad again")
  return pd.Series(clone_column(adata, data_cfg), index=np.asarray(adata.obs_names).astype(str))


def _names_from_matrix(matrix: Any, clone_names: Any, key: str) -> np.ndarray:
  import scipy.sparse as sp  # pylint: disable=g-import-not-at-top
  m = sp.csr_matrix(matrix)
  m.eliminate_zeros()
  per_cell = np.diff(m.indptr)
  if (per_cell > 1).any():
    bad = int((per_cell > 1).sum())
    raise DataError(f"{bad} cell(s) belong to two or more clones in obsm[{key!r}] (e.g. row "
                    f"{int(np.argmax(per_cell > 1))}); a cell has one barcode: keep one clone per "
                    "cell (or drop those cells) before training")
  names = (np.asarray(clone_names).astype(str) if clone_names is not None
           and len(clone_names) == m.shape[1] else
           np.asarray([f"clone{j}" for j in range(m.shape[1])]))
  out = np.full(m.shape[0], "", dtype=object)
  rows = np.flatnonzero(per_cell == 1)
  out[rows] = names[m.indices[m.indptr[rows]]]
  return out.astype(str)


def read_clones(names: np.ndarray, population: np.ndarray, time_index: np.ndarray,
                time_labels: Sequence[str], class_names: Sequence[str],
                clonal_cfg: Any) -> Clones:
  """Clones and their fates from each cell's clone name, population and day."""
  names = np.asarray(names).astype(str)
  barcoded = names != ""
  if not barcoded.any():
    raise DataError("no cell has a clone barcode (every clone name is empty); check "
                    "config.data.clone_key / config.data.clone_obsm")
  clone_names, inverse = np.unique(names[barcoded], return_inverse=True)
  cell_clone = np.full(names.size, NO_CLONE, np.int64)
  cell_clone[barcoded] = inverse
  fate_day = _fate_day(clonal_cfg, time_labels)
  present = sorted({str(class_names[c]) for c in np.unique(population[time_index == fate_day])})
  fate_classes = tuple(str(c) for c in clonal_cfg.get("fate_classes", ()) or ()) or tuple(
      c for c in class_names if c in present)
  absent = [c for c in fate_classes if c not in present]
  if absent:
    raise DataError(f"fate classes {absent} have no cell on the fate day "
                    f"{time_labels[fate_day]!r} (populations present that day: {present}); "
                    "fix config.data.clonal.fate_classes or config.data.clonal.fate_day")
  if len(fate_classes) < 2:
    raise DataError(f"a clone's fate needs two or more fate classes, got {list(fate_classes)} on "
                    f"{time_labels[fate_day]!r}; set config.data.clonal.fate_classes, e.g. "
                    "('CM', 'CF')")
  return clone_fates(cell_clone, clone_names, population, time_index, fate_day,
                     [list(class_names).index(c) for c in fate_classes], fate_classes)


def _fate_day(clonal_cfg: Any, time_labels: Sequence[str]) -> int:
  day = str(clonal_cfg.get("fate_day", "") or "")
  if not day:
    return len(time_labels) - 1
  if day not in time_labels:
    raise DataError(f"config.data.clonal.fate_day={day!r} is not a time label of the data "
                    f"{list(time_labels)}; set it to one of them ('' = the last)")
  return list(time_labels).index(day)


def clone_fates(cell_clone: np.ndarray, names: np.ndarray, population: np.ndarray,
                time_index: np.ndarray, fate_day: int, fate_ids: Sequence[int],
                fate_classes: Sequence[str]) -> Clones:
  """Each clone's fate-day composition over the fate classes, and its majority label."""
  n_clones, n_fates = len(names), len(fate_ids)
  column = np.full(int(max(np.max(population), max(fate_ids))) + 1, -1, np.int64)
  column[np.asarray(fate_ids)] = np.arange(n_fates)
  on_fate = (cell_clone >= 0) & (time_index == fate_day) & (column[population] >= 0)
  counts = np.zeros((n_clones, n_fates), np.int64)
  np.add.at(counts, (cell_clone[on_fate], column[population[on_fate]]), 1)
  total = counts.sum(axis=1)
  with np.errstate(invalid="ignore", divide="ignore"):
    fractions = (counts / total[:, None]).astype(np.float32)
  top = counts.max(axis=1)
  tied = (counts == top[:, None]).sum(axis=1) > 1
  label = np.where((total > 0) & ~tied, counts.argmax(axis=1), UNLABELLED)
  early = np.bincount(cell_clone[(cell_clone >= 0) & (time_index < fate_day)],
                      minlength=n_clones)
  return Clones(cell_clone=cell_clone, names=np.asarray(names).astype(str), fate_day=fate_day,
                fate_classes=tuple(fate_classes), fractions=fractions, fate_cells=total,
                label=label.astype(np.int64), early_cells=early.astype(np.int64))


def observation_days(clonal_cfg: Any, time_labels: Sequence[str], fate_day: int,
                     present: np.ndarray) -> list[int]:
  """Time indices of the observation days: configured, else every day before the fate
  day on which an early cell of a clone was sampled."""
  chosen = [str(d) for d in clonal_cfg.get("observation_days", ()) or ()]
  if chosen:
    unknown = [d for d in chosen if d not in time_labels]
    late = [d for d in chosen if d in time_labels and list(time_labels).index(d) >= fate_day]
    if unknown or late:
      raise DataError(f"config.data.clonal.observation_days {unknown + late} are not days "
                      f"before the fate day {time_labels[fate_day]!r} among {list(time_labels)}")
    return sorted(list(time_labels).index(d) for d in chosen)
  return sorted(int(d) for d in np.unique(present) if d < fate_day)


def clone_sequences(cell_clone: np.ndarray, cell_time: np.ndarray, unit_clone: np.ndarray,
                    unit_day: np.ndarray, length: int, rng: np.random.Generator
                    ) -> tuple[np.ndarray, np.ndarray]:
  """One sequence per unit (clone, observation day): the clone's cells up to that day.

  Vectorised over all (unit, cell) pairs: each pair gets a random priority, the
  ``length`` highest of a unit are kept (all when it has fewer), then ordered by
  day with the random priority breaking ties, so cells of one day come in random
  order and a large clone is a random subset, both drawn anew per call.

  Args:
    cell_clone: (n,) clone index of each (early) cell.
    cell_time: (n,) time index of each cell.
    unit_clone, unit_day: (U,) the units' clones and observation days.
    length: the longest sequence.
    rng: the draws' generator.

  Returns:
    (source_index (U, length) int64 rows of ``cell_clone``, mask (U, length) float32);
    hidden steps point at row 0.
  """
  unit_clone = np.asarray(unit_clone, np.int64)
  unit_day = np.asarray(unit_day, np.int64)
  order = np.argsort(cell_clone, kind="stable")
  n_clones = int(max(cell_clone.max(initial=-1), unit_clone.max(initial=-1))) + 1
  counts = np.bincount(cell_clone, minlength=n_clones)
  starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
  size = counts[unit_clone]
  pair_unit = np.repeat(np.arange(unit_clone.size), size)
  offset = np.arange(pair_unit.size) - np.repeat(np.cumsum(size) - size, size)
  cell = order[starts[unit_clone][pair_unit] + offset]
  keep = cell_time[cell] <= unit_day[pair_unit]
  pair_unit, cell = pair_unit[keep], cell[keep]
  priority = rng.random(cell.size)
  by_priority = np.lexsort((-priority, pair_unit))          # within a unit, highest first
  pair_unit, cell, priority = pair_unit[by_priority], cell[by_priority], priority[by_priority]
  n_pairs = np.bincount(pair_unit, minlength=unit_clone.size)
  if (n_pairs == 0).any():
    raise DataError(f"{int((n_pairs == 0).sum())} unit(s) have no cell up to their observation "
                    "day; only clones observed by that day can be sequences")
  rank = np.arange(pair_unit.size) - np.repeat(np.cumsum(n_pairs) - n_pairs, n_pairs)
  kept = rank < length
  pair_unit, cell, priority = pair_unit[kept], cell[kept], priority[kept]
  by_day = np.lexsort((priority, cell_time[cell], pair_unit))
  pair_unit, cell = pair_unit[by_day], cell[by_day]
  n_kept = np.minimum(n_pairs, length)
  step = np.arange(pair_unit.size) - np.repeat(np.cumsum(n_kept) - n_kept, n_kept)
  src = np.zeros((unit_clone.size, length), np.int64)
  mask = np.zeros((unit_clone.size, length), np.float32)
  src[pair_unit, step] = cell
  mask[pair_unit, step] = 1.0
  return src, mask


def sequence_features(cell_pcs: np.ndarray, cell_time: np.ndarray, cell_clone: np.ndarray,
                      src: np.ndarray, n_times: int) -> np.ndarray:
  """(U, L, n_pcs + 2) features of clone sequences: per step the cell's PCs, its day in
  [0, 1] and the clone's size that day (``SIZE_SCALE``); used in training, scoring and
  prediction alike."""
  x = sequences.assemble_features(cell_pcs, src, sequences.time_feature(cell_time, n_times), 0)
  counts = np.zeros((int(cell_clone.max(initial=0)) + 1, n_times), np.float32)
  np.add.at(counts, (cell_clone, cell_time), 1.0)
  size = np.log1p(counts[cell_clone[src], cell_time[src]]) / np.log1p(SIZE_SCALE)
  x[..., -1] = size.astype(np.float32)
  return x


def units(clone_ids: np.ndarray, cell_clone: np.ndarray, cell_time: np.ndarray,
          days: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
  """Every (clone, observation day) of ``clone_ids`` with a cell up to that day."""
  first = np.full(int(cell_clone.max(initial=-1)) + 1, np.iinfo(np.int64).max, np.int64)
  np.minimum.at(first, cell_clone, cell_time)
  clone_ids = np.asarray(clone_ids, np.int64)
  days = np.asarray(days, np.int64)
  seen = first[clone_ids][:, None] <= days[None, :]
  c, d = np.nonzero(seen)
  return clone_ids[c], days[d]


def stages(data_cfg: Any) -> list[str]:
  """The stages ``build`` runs, in order (the progress bar's steps)."""
  return ["simulate" if data_cfg.source == "simulator" else "load", "prepare", "split",
          "preprocess_fit", "transform", "sequences", "assemble"]


def task_info(data_cfg: Any, clones: Clones, time_labels: Sequence[str],
              days: Sequence[int]) -> dict[str, Any]:
  """What a predictor needs to rebuild a clone's sequences on new data (model.json)."""
  c = data_cfg.clonal
  return {"clone_key": str(data_cfg.get("clone_key", "") or ""),
          "clone_obsm": str(data_cfg.get("clone_obsm", "") or ""),
          "population_key": str(data_cfg.population_key),
          "fate_day": str(time_labels[clones.fate_day]),
          "fate_classes": list(clones.fate_classes),
          "observation_days": [str(time_labels[d]) for d in days],
          "length": int(data_cfg.sequences.length),
          "eval_draws": int(c.eval_draws),
          "last_feature": f"log(1 + the clone's cells that day) / log(1 + {SIZE_SCALE:g})"}


def build(data_cfg: Any, stage: stages_lib.Stages, preprocessor_path: pathlib.Path | None,
          key: str) -> dict[str, Any]:
  """The clone sequences of ``config.data``: the fields of a ``SequenceDataset``."""
  c = data_cfg.clonal
  length = int(data_cfg.sequences.length)
  cells, by_name = sources.prepared_cells(data_cfg, stage,
                                          read=lambda adata: clones_by_cell(adata, data_cfg))
  cell_names = by_name.reindex(np.asarray(cells.obs_names).astype(str)).to_numpy().astype(str)
  with stage("split"):
    clones = read_clones(cell_names, cells.labels, cells.time_index, cells.time_labels,
                         cells.class_names, c)
    labelled = np.flatnonzero((clones.label >= 0) & (clones.early_cells > 0))
    if labelled.size == 0:
      raise DataError(
          f"no clone has cells both before and on the fate day "
          f"{cells.time_labels[clones.fate_day]!r} among the fate classes "
          f"{list(clones.fate_classes)}; check config.data.clonal.fate_day / fate_classes and "
          "that the clone column is the barcode")
    counts = np.bincount(clones.label[labelled], minlength=len(clones.fate_classes))
    if labelled.size < splits.ROTATION_SLICES or (counts < 2).any():
      raise DataError(
          f"only {labelled.size} clone(s) have cells both before and on the fate day (per fate "
          f"{dict(zip(clones.fate_classes, counts.tolist()))}); training, validation and test "
          f"need at least {splits.ROTATION_SLICES} labelled clones, two of each fate: use a "
          "larger time course or check the fate day")
    clone_split = np.full(len(clones.names), UNLABELLED, np.int8)
    clone_split[labelled] = splits.rotation_split(
        clones.label[labelled], tuple(data_cfg.split.fractions), int(data_cfg.split.seed),
        int(c.rotation))
  # Cells of validation and test clones never shape the preprocessing.
  cell_split = np.where(clones.cell_clone >= 0, clone_split[np.maximum(clones.cell_clone, 0)],
                        UNLABELLED)
  pp, pcs = sources.embed_cells(cells, np.flatnonzero((cell_split != 1) & (cell_split != 2)),
                                data_cfg, stage)
  early = np.flatnonzero((clones.cell_clone >= 0) & (cells.time_index < clones.fate_day))
  days = observation_days(c, cells.time_labels, clones.fate_day, cells.time_index[early])
  cell_clone, cell_time = clones.cell_clone[early], cells.time_index[early].astype(np.int64)
  with stage("sequences"):
    parts = []
    for s, name in enumerate(splits.SPLITS):
      unit_clone, unit_day = units(np.flatnonzero(clone_split == s), cell_clone, cell_time,
                                   days)
      draws = int(c.draws_per_unit) if name == "train" else 1
      rng = np.random.default_rng([int(data_cfg.sequences.seed), 4, s])
      src, mask = clone_sequences(cell_clone, cell_time, np.tile(unit_clone, draws),
                                  np.tile(unit_day, draws), length, rng)
      parts.append((src, mask, np.tile(clones.label[unit_clone], draws),
                    np.full(src.shape[0], s, np.int8)))
      logging.info("clonal: %s: %d clones, %d sequences over %d observation days", name,
                   int(np.sum(clone_split == s)), src.shape[0], len(days))
  with stage("assemble"):
    src = np.concatenate([p[0] for p in parts])
    mask = np.concatenate([p[1] for p in parts])
    y = np.concatenate([p[2] for p in parts]).astype(np.int32)
    split = np.concatenate([p[3] for p in parts])
    x = sequence_features(pcs[early], cell_time, cell_clone, src, len(cells.time_labels))
    class_names = tuple(clones.fate_classes)
    info = task_info(data_cfg, clones, cells.time_labels, days)
    meta = {
        "cache_key": key, "code_version": CODE_VERSION, "task": "clonal", "task_info": info,
        "class_names": list(class_names), "populations": list(cells.class_names),
        "time_labels": list(cells.time_labels), "n_pcs": int(pcs.shape[1]),
        "num_features": int(pcs.shape[1] + 2), "length": length,
        "n_cells": int(cells.n_cells), "n_early_cells": int(early.size),
        "n_clones": int(len(clones.names)), "n_labelled_clones": int(labelled.size),
        "clones_per_split": {n: int(np.sum(clone_split == s))
                             for s, n in enumerate(splits.SPLITS)},
        "counts": splits.counts_table(y, split, class_names),
        "preprocessor": preprocessor_path.name if preprocessor_path is not None else "",
        "data_config": json.loads(json.dumps(data_cfg.to_dict(), default=str)),
    }
    fields = dict(
        x=x, y=y, mask=mask, split=split, modality=np.zeros(y.size, np.int8),
        source_index=src, class_names=class_names, meta=meta,
        tables={"cell_pcs": pcs[early], "cell_time": cell_time, "cell_clone": cell_clone,
                "clone_names": clones.names.astype(np.str_), "clone_split": clone_split,
                "clone_label": clones.label, "clone_fractions": clones.fractions,
                "clone_fate_cells": clones.fate_cells,
                "observation_days": np.asarray(days, np.int64)})
  if preprocessor_path is not None:
    with stage("save"):
      pp.save(preprocessor_path)
  return fields

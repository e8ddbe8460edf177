"""Fate probabilities per pre-branch cell: which progenitors will become CM, which CF.

The six-class model says which population a path ENDS in; a user holding
today's progenitors wants to know where each one is GOING. No cell carries its
future, but the walks do: a walk from a cardiomyocyte backwards in time passes
through the progenitors (and earlier cells) that lead to it. So:

1. Labels from the graph of one split's cells (``sequences.temporal_graph``:
   same-day and previous-day kNN tables). Three ways (``data.fate.labels``):
   - ``"forward"`` (default), as CellRank: the probability that a chain moving
     FORWARD from the cell (same-day neighbours, or next-day cells whose
     backward tables hold it) first reaches a CM rather than a CF cell
     (``absorption.forward_absorption``), as soft labels P(CM), P(CF); the loss
     is the cross-entropy against them (``SequenceDataset.targets``). On data we
     did not generate it labels progenitors far better than the backward rules
     (docs/results/fate_forward.md).
   - ``"exact"``: backward walks start at every terminal cell (CM or CF,
     ``sequences.walk``, paced by that cell's day over ``data.fate.label_length``
     steps) and a pre-branch cell (PROG and earlier, ``data.fate.pre_branch``) is
     labelled by how much of them pass through it: the EXPECTED visits, solved without sampling
     (``absorption.expected_visits``, sparse products over the same kNN tables
     and pacing), soft labels as ``"forward"``.
   - ``"walks"``: ``walks_per_anchor`` sampled walks per terminal cell, each
     counting one visit per cell it passes (``path_visits``); a sequence's hard
     label is drawn by the cell's visit fractions. Kept for comparison: its
     sampling noise cost about 0.012 AUC (docs/results/fate.md).
2. Inputs like the query's. A query progenitor has no anchor day beyond its
   own, so the training walks are NOT the cut prefixes of the terminal walks
   (those are paced by the terminal cell's later day): each training sequence is
   a fresh walk ending at a labelled pre-branch cell, paced by that cell's day,
   exactly as ``prediction.predict`` walks from a query cell (``fate_walks``;
   with ``data.sequences.length = 1`` the sequence is the cell alone: its PCA
   coordinates and its day; per pre-branch population
   ``data.fate.per_population`` sequences over all splits, cells drawn
   uniformly among the visited ones; most of them on PROG, where the fate shows).
3. The sequence model, its training loop, checkpoints, report and export are the
   package's own: this module only builds the sequences (classes
   ``data.fate.terminal``), the builder of ``config.data.task = "fate"``
   (``configs/fate.py``) in ``dataset.BUILDERS``.

Nothing crosses splits: labels of validation / test cells come from walks among
their own split's cells only, and the preprocessing is fitted on training cells
(``sources.embedded_cells``).
"""
from __future__ import annotations

import json
import pathlib
from typing import Any, Sequence

from absl import logging
import numpy as np

from cardiac_jax.data import absorption
from cardiac_jax.data import sequences
from cardiac_jax.data import sources
from cardiac_jax.data import splits
from cardiac_jax.data import stages as stages_lib
from cardiac_jax.data.errors import DataError

# Bump when the code changes what a given config.data.fate builds (cache key).
CODE_VERSION = "fate-v2"
PRE_BRANCH = ("IPSC", "MES", "CMES", "PROG")
TERMINAL = ("CM", "CF")
LABELS = ("exact", "forward", "walks")


def fate_info(data_cfg: Any) -> dict[str, Any]:
  """The fate settings of ``config.data.fate`` as plain JSON (stored in meta and model.json)."""
  f = data_cfg.fate
  return {"pre_branch": [str(p) for p in f.pre_branch],
          "terminal": [str(t) for t in f.terminal],
          "population_key": str(data_cfg.population_key),
          "walks_per_anchor": int(f.walks_per_anchor),
          "labels": labels(data_cfg), "label_length": label_length(data_cfg),
          "per_population": per_population(data_cfg)}


def labels(data_cfg: Any) -> str:
  """``config.data.fate.labels``: "exact" (expected visits, soft), "forward" (forward
  absorption, soft) or "walks" (sampled)."""
  chosen = str(data_cfg.fate.get("labels", "walks"))
  if chosen not in LABELS:
    raise DataError(f"config.data.fate.labels={chosen!r} is unknown; choose one of "
                    f"{list(LABELS)} (exact: expected visits of the backward walks; forward: "
                    "absorption of a forward chain; walks: sampled backward walks).")
  return chosen


def label_length(data_cfg: Any) -> int:
  """Steps of the labelling walks: ``data.fate.label_length``, else the sequences' length.

  Separate from the input sequences' length: a model may read one cell
  (``sequences.length = 1``) and still learn from labels of 32-step walks.
  """
  n = int(data_cfg.fate.get("label_length", 0) or data_cfg.sequences.length)
  if n < 1:
    raise DataError(f"config.data.fate.label_length must be >= 1, got {n}.")
  return n


def per_population(data_cfg: Any) -> list[int]:
  """Sequences per pre-branch population (all splits): one count each, or one for all.

  Not every pre-branch population is worth the same: before the priming genes
  switch on (PROG) a cell's fate barely shows, so configs/fate.py spends most
  sequences on the progenitors.
  """
  f = data_cfg.fate
  n = f.per_population
  counts = [int(n)] * len(f.pre_branch) if np.ndim(n) == 0 else [int(v) for v in n]
  if len(counts) != len(f.pre_branch) or min(counts) < 0:
    raise DataError(f"config.data.fate.per_population must be one count >= 0 or one per "
                    f"pre-branch population {list(f.pre_branch)}, got {n!r}")
  return counts


def _class_ids(class_names: Sequence[str], wanted: Sequence[str], what: str) -> np.ndarray:
  missing = [w for w in wanted if w not in class_names]
  if missing:
    raise DataError(f"config.data.fate.{what} names {missing}, which are not among the "
                    f"populations {list(class_names)}; fix config.data.fate.{what} (or "
                    "config.data.classes).")
  return np.asarray([list(class_names).index(w) for w in wanted], np.int32)


def path_visits(graph: sequences.WalkGraph, pre_ids: np.ndarray, term_ids: np.ndarray,
                walks_per_anchor: int, length: int, rng: np.random.Generator) -> np.ndarray:
  """Visits of each item of ``graph`` by backward walks from each terminal population.

  Args:
    graph: one split's ``temporal_graph``.
    pre_ids: class ids of the pre-branch populations.
    term_ids: class ids of the terminal populations (the label columns).
    walks_per_anchor: walks started at every terminal item.
    length: steps per walk (paced over the days as ``sequences.step_times``).
    rng: the walks' generator.

  Returns:
    (graph.size, len(term_ids)) int64: per local item and terminal population, the
    number of walks from that population whose path holds the item (a walk counts
    once per item); zero rows for items that are not pre-branch.
  """
  visits = np.zeros((graph.size, len(term_ids)), np.int64)
  column = np.full(int(graph.labels.max(initial=0)) + 1, -1, np.int64)
  column[term_ids] = np.arange(len(term_ids))
  anchors = np.flatnonzero(np.isin(graph.labels, term_ids))
  if anchors.size == 0 or walks_per_anchor < 1:
    return visits
  anchors = np.repeat(anchors, int(walks_per_anchor))
  local_of = np.full(int(graph.rows.max()) + 1, -1, np.int64)
  local_of[graph.rows] = np.arange(graph.size)
  path = local_of[sequences.walk(graph, anchors, length, rng)]          # (W, L) local
  on_path = np.isin(graph.labels[path], pre_ids)
  which, _ = np.nonzero(on_path)
  items = path[on_path]
  pairs = np.unique(which * graph.size + items)                          # once per walk
  walk_of, item_of = np.divmod(pairs, graph.size)
  np.add.at(visits, (item_of, column[graph.labels[anchors[walk_of]]]), 1)
  return visits


def fate_walks(graph: sequences.WalkGraph, visits: np.ndarray, pre_ids: np.ndarray,
               n_per_population: Sequence[int], length: int, rng: np.random.Generator,
               split_name: str = "", soft: bool = False
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
  """Query-like walks ending at labelled pre-branch cells, and a label for each.

  Per pre-branch population, ``n_per_population[i]`` cells are drawn uniformly among
  its visited cells (every labelled cell weighs the same: on the simulator this beat
  weighting cells by their visit counts, which favour the graph's hubs). Each
  becomes a walk ending at the cell, paced by the cell's own day (as
  ``prediction.predict``). With ``soft`` its targets are the cell's visit
  fractions and y their argmax; otherwise y is drawn by the fractions.

  Returns:
    source_index (n, length) int64 global rows ending at the labelled cell; y (n,)
    int32 the terminal population (column of ``visits``); targets (n, C) float32
    visit fractions (None unless ``soft``).
  """
  anchors, labels_, targets = [], [], []
  total = visits.sum(axis=1)
  for p, want in zip(pre_ids, n_per_population):     # a handful of populations
    own = np.flatnonzero((graph.labels == p) & (total > 0))
    if want == 0:
      continue
    if own.size == 0:
      logging.warning("fate: split %s has no visited cell of population id %d; none of its "
                      "sequences", split_name, int(p))
      continue
    cell = own[rng.integers(0, own.size, size=int(want))]
    fractions, _ = absorption.fate_probabilities(visits[cell])
    if soft:
      labels_.append(np.argmax(fractions, axis=1))
      targets.append(fractions.astype(np.float32))
    else:
      # Integer cumsum over the total: the last column is exactly 1, so a draw in [0, 1)
      # never falls past it (a cumsum of the fractions could end a hair below 1).
      cum = np.cumsum(visits[cell], axis=1) / total[cell][:, None]
      labels_.append((rng.random(cell.size)[:, None] >= cum).sum(axis=1))
    anchors.append(cell)
  if not anchors:
    raise DataError(f"fate: no walk from a terminal cell reached a pre-branch cell in split "
                    f"{split_name!r}; use more cells or longer walks "
                    "(config.data.fate.label_length), or check config.data.fate.pre_branch.")
  anchors = np.concatenate(anchors)
  return (sequences.walk(graph, anchors, length, rng),
          np.concatenate(labels_).astype(np.int32),
          np.concatenate(targets) if soft else None)


def split_visits(graph: sequences.WalkGraph, pre_ids: np.ndarray, term_ids: np.ndarray,
                 info: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
  """The visits that label one split's pre-branch cells (``data.fate.labels``)."""
  if info["labels"] == "walks":
    return path_visits(graph, pre_ids, term_ids, info["walks_per_anchor"],
                       info["label_length"], rng)
  if info["labels"] == "forward":
    visits = absorption.forward_absorption(graph, term_ids)
  else:
    visits = absorption.expected_visits(graph, term_ids, info["label_length"])
  visits[~np.isin(graph.labels, pre_ids)] = 0.0
  return visits


def graph_probabilities(data_cfg: Any, cells: Any, pcs: np.ndarray,
                        rows: np.ndarray, labels_: str | None = None) -> np.ndarray:
  """P per terminal population of the pre-branch cells among ``rows``, from their graph alone.

  The labels' solve (``split_visits`` with ``labels = labels_``, "exact" or
  "forward"; None = the config's: the same kNN tables, pacing and label length)
  on the graph of the cells ``rows`` only.
  With ``rows`` = one split's cells this is that split's labels; with every
  cell it is the transductive solve a benchmark uses as an ablation (it reads
  the held-out cells' expression, never their labels).

  Returns:
    (n_cells, len(terminal)) float64 over all of ``cells``' rows; NaN for cells
    outside ``rows``, cells that are not pre-branch and cells no walk reached.
  """
  labels_ = labels(data_cfg) if labels_ is None else labels_
  if labels_ not in ("exact", "forward"):
    raise ValueError(f"graph_probabilities solves exact or forward labels, not {labels_!r}")
  info = dict(fate_info(data_cfg), labels=labels_)
  populations = tuple(cells.class_names)
  pre_ids = _class_ids(populations, info["pre_branch"], "pre_branch")
  term_ids = _class_ids(populations, info["terminal"], "terminal")
  graph = sequences.temporal_graph(pcs, cells.time_index, cells.labels, rows,
                                   int(data_cfg.sequences.k_neighbors))
  visits = split_visits(graph, pre_ids, term_ids, info, np.random.default_rng(0))
  probs, reached = absorption.fate_probabilities(visits)
  out = np.full((pcs.shape[0], len(term_ids)), np.nan)
  out[graph.rows[reached]] = probs[reached]
  return out


def stages(data_cfg: Any) -> list[str]:
  """The stages ``build`` runs, in order (the progress bar's steps)."""
  return ["simulate" if data_cfg.source == "simulator" else "load", "prepare", "split",
          "preprocess_fit", "transform", "neighbour_tables", "walks", "assemble"]


def build(data_cfg: Any, stage: stages_lib.Stages, preprocessor_path: pathlib.Path | None,
          key: str) -> dict[str, Any]:
  """The fate sequences of ``config.data``: the fields of a ``SequenceDataset``."""
  info = fate_info(data_cfg)
  seq_cfg = data_cfg.sequences
  fractions = tuple(data_cfg.split.fractions)
  length, k = int(seq_cfg.length), int(seq_cfg.k_neighbors)
  cells, cell_split, pp, pcs = sources.embedded_cells(data_cfg, stage)
  populations = tuple(cells.class_names)
  pre_ids = _class_ids(populations, info["pre_branch"], "pre_branch")
  term_ids = _class_ids(populations, info["terminal"], "terminal")
  per_split = splits.allocate(np.asarray(info["per_population"]), fractions)   # (P, S)
  with stage("neighbour_tables"):
    graphs = [sequences.temporal_graph(pcs, cells.time_index, cells.labels,
                                       np.flatnonzero(cell_split == s), k)
              for s in range(len(splits.SPLITS))]
  parts, labelled = [], {}
  with stage("walks"):
    for s, name in enumerate(splits.SPLITS):
      rng = np.random.default_rng([int(seq_cfg.seed), 3, s])
      visits = split_visits(graphs[s], pre_ids, term_ids, info, rng)
      labelled[name] = int(np.sum(visits.sum(axis=1) > 0))
      src, y, soft = fate_walks(graphs[s], visits, pre_ids, per_split[:, s], length, rng,
                                name, soft=info["labels"] != "walks")
      parts.append((src, y, np.full(y.size, s, np.int8), soft))
      logging.info("fate: %s: %d sequences ending at %d labelled pre-branch cells", name,
                   y.size, labelled[name])
  with stage("assemble"):
    src = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    split = np.concatenate([p[2] for p in parts])
    targets = None if parts[0][3] is None else np.concatenate([p[3] for p in parts])
    x = sequences.assemble_features(
        pcs, src, sequences.time_feature(cells.time_index, len(cells.time_labels)), 0)
    class_names = tuple(info["terminal"])
    counts = splits.counts_table(y, split, class_names)
    meta = {
        "cache_key": key, "code_version": CODE_VERSION, "task": "fate", "fate": info,
        "labelled_cells": labelled, "class_names": list(class_names),
        "populations": list(populations), "time_labels": list(cells.time_labels),
        "n_pcs": int(pcs.shape[1]), "num_features": int(pcs.shape[1] + 2), "length": length,
        "n_cells": int(pcs.shape[0]),
        "cells_per_split": np.bincount(cell_split, minlength=3).tolist(),
        "counts": counts, "temporal_counts": counts,
        "preprocessor": preprocessor_path.name if preprocessor_path is not None else "",
        "data_config": json.loads(json.dumps(data_cfg.to_dict(), default=str)),
    }
    fields = dict(
        x=x, y=y, mask=np.ones(src.shape, np.float32), split=split,
        modality=np.zeros(y.size, np.int8), source_index=src, class_names=class_names,
        meta=meta, targets=targets)
  if preprocessor_path is not None:
    with stage("save"):
      pp.save(preprocessor_path)
  return fields


# ---------------------------------------------------------------- query side


def pre_branch_cells(populations: np.ndarray, pre_branch: Sequence[str]) -> np.ndarray:
  """Bool mask of the cells whose population is pre-branch (the ones that get a fate)."""
  return np.isin(np.asarray(populations).astype(str), [str(p) for p in pre_branch])


def cell_split_of(data_cfg: Any) -> tuple[np.ndarray, np.ndarray]:
  """(obs_names, split id per cell) of the prepared cells of ``config.data``.

  The build's own prologue (``sources.embedded_cells``, deterministic in
  ``data.split``), so a benchmark scores exactly the held-out cells.
  """
  cells, cell_split, _, _ = sources.embedded_cells(data_cfg)
  return np.asarray(cells.obs_names).astype(str), cell_split

"""The six-population builder: lineage walks among each split's cells, and spatial walks.

Pipeline (``build``): ``sources.embedded_cells`` (load -> prepare -> split cells
before any sequence exists -> fit the preprocessor on TRAIN cells only ->
transform all cells) -> per split, lineage-consistent walks among that split's
cells -> spatial spots the same way (tiles as the unit of splitting, held-out
spots next to another split left out as a buffer, the same preprocessor) ->
features.
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

# Bump when the code changes what a given config produces; invalidates old caches.
CODE_VERSION = "sequences-v2"   # v2: spatial buffer, train-chosen classes
# A class is a spatial label only when training promises this many anchor spots
# in every held-out split (see spatial_plan).
MIN_SPATIAL_ANCHORS = 3


def wants_spatial(data_cfg: Any) -> bool:
  """Whether the build makes spatial sequences (one test for ``build`` and ``stages``)."""
  return bool(data_cfg.spatial.enabled) and int(data_cfg.sequences.spatial_total) > 0


def stages(data_cfg: Any) -> list[str]:
  """The stages ``build`` runs for this config, in order (the progress bar's steps)."""
  names = ["simulate" if data_cfg.source == "simulator" else "load", "prepare", "split",
           "preprocess_fit", "transform", "neighbour_tables", "walks"]
  if wants_spatial(data_cfg):
    names.append("spatial")
  return names + ["assemble"]


def spatial_plan(labels: np.ndarray, spot_split: np.ndarray, class_names: Sequence[str],
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


def build(data_cfg: Any, stage: stages_lib.Stages, preprocessor_path: pathlib.Path | None,
          key: str) -> dict[str, Any]:
  """The six-population sequences of ``config.data``: the fields of a ``SequenceDataset``."""
  from cardiac_jax.data import ingest  # pylint: disable=g-import-not-at-top
  from cardiac_jax.data import preprocess  # pylint: disable=g-import-not-at-top
  seq_cfg = data_cfg.sequences
  fractions = tuple(data_cfg.split.fractions)
  length, k = int(seq_cfg.length), int(seq_cfg.k_neighbors)
  cells, cell_split, pp, pcs = sources.embedded_cells(data_cfg, stage)
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
  if wants_spatial(data_cfg):
    with stage("spatial"):
      spots = ingest.prepare_spots(sources.load_spots(data_cfg), data_cfg, class_names)
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
      plan, spatial_classes = spatial_plan(spots.labels, spot_split, class_names,
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
        # The training walks' graph density: predict's walks match it (prediction.py).
        "train_cells_per_day": int(np.bincount(cells.time_index[cell_split == 0]).max()),
        "counts": splits.counts_table(y, split, class_names),
        "temporal_counts": splits.counts_table(y[:n_t], split[:n_t], class_names),
        "spatial_counts": splits.counts_table(y[n_t:], split[n_t:], class_names),
        "spatial_classes": [class_names[c] for c in spatial_classes],
        "spots_per_split": ({name: int(np.sum(spot_split == s))
                             for s, name in enumerate(splits.SPLITS)}
                            if spot_split is not None else {}),
        "spots_buffered": buffered,
        "spatial_time_feature": sequences.SPATIAL_TIME,
        "preprocessor": preprocessor_path.name if preprocessor_path is not None else "",
        "data_config": json.loads(json.dumps(data_cfg.to_dict(), default=str)),
    }
    fields = dict(x=x, y=y, mask=np.ones((n_t + n_s, length), np.float32), split=split,
                  modality=modality, source_index=np.concatenate(parts_src),
                  class_names=class_names, meta=meta)
  if preprocessor_path is not None:
    with stage("save"):
      pp.save(preprocessor_path)   # atomic itself
  return fields

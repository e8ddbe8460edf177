"""Annotate new cells with an exported model: ``predict(adata, model)`` into the AnnData.

How a query cell is classified: the model reads lineage paths, not single
cells, so every query cell becomes the anchor of ``n_walks`` walks built
exactly as in training (``sequences.temporal_graph`` + ``walk``: backwards in
time through the k nearest neighbours on the same or the previous day, same
length and k) - but among the NEW data's own cells, which form one "split".
Each walk is classified and the probabilities are averaged per cell.

Consequences worth knowing:
- The new data's time labels are mapped onto the model's by name (numeric
  labels compared as numbers); the time feature is the model's day scaling. A
  sample of a single day still gets predictions, but its walks stay within that
  day, so they carry no path information (``uns[key]["single_day"]``).
- The label is always one of the model's classes: a population the model never
  saw (e.g. ``UNK``) is assigned to the nearest class it knows, usually with low
  confidence; the confidence (max probability) is not a novelty detector.
- Cells are embedded with the TRAINING preprocessor (genes matched by name,
  missing genes at their training mean). Library sizes are taken over the genes
  the new data has, so a very different gene panel shifts the embedding.

Memory: the embedding is computed in row chunks and walks/predictions in blocks
of ``BLOCK_CELLS`` anchors, one walk per anchor at a time (x: BLOCK_CELLS x L x F
floats, 34 MB at L = 80, F = 52; the walks' probabilities are summed per anchor),
so 230K cells stream through in bounded memory; the walk streams are seeded per
(seed, block, walk), so results do not depend on the prediction chunk size.
"""
from __future__ import annotations

import contextlib
import os
import pathlib
from typing import Any, Callable, Sequence

from absl import logging
import numpy as np

from cardiac_jax import clones
from cardiac_jax import export as export_lib
from cardiac_jax import fileio
from cardiac_jax import progress as progress_lib
from cardiac_jax import query
from cardiac_jax import regions
from cardiac_jax.data.errors import DataError

BLOCK_CELLS = 2048          # anchors per walk/prediction block (fixes the rng streams)
# Cells whose first walk's top-two probability margin is below this get all n_walks:
# on 8,000 of 230,786 simulated cells 0.1 kept 99.5 % of the 8-walk labels (docs/performance.md).
WALK_MARGIN = 0.1
# model.info["task"] -> the predictor of a unit task (its own keys, table and plots).
UNIT_PREDICTORS: dict[str, Callable[..., Any]] = {"clonal": clones.predict,
                                                   "regions": regions.predict}
UNIT_TABLES = {"clonal": (clones.predictions_table, clones.PREDICTIONS_CSV,
                          clones.plot_predictions),
               "regions": (regions.predictions_table, regions.PREDICTIONS_CSV,
                           regions.plot_predictions)}


def predict(adata: Any, model: Any, *, time_key: str = "diffday",
            counts_layer: str | None = None, n_walks: int = 8,
            key_added: str = "cardiac_jax", copy: bool = False, seed: int = 0,
            min_gene_fraction: float = query.MIN_GENE_FRACTION, progress: bool | None = None,
            population_key: str = "", walk_margin: float | None = None,
            graph_cells_per_day: int | None = None, **unit_kwargs: Any) -> Any:
  """Predicts the population each cell's lineage path ends in, into the AnnData.

  With a fate model (``configs/fate.py``: ``model.info["fate"]``) it predicts
  instead where each PRE-BRANCH cell is going (``_write_fate``): only cells
  whose ``obs[population_key]`` is a pre-branch population get walks, and
  ``obsm[f"{key_added}_fate"]`` (cells x terminal populations, NaN rows for the
  others, names in ``uns[key_added]["fate_names"]``) and
  ``obs[f"{key_added}_p_CM"]`` are written.

  Args:
    adata: cells x genes with raw counts in X (or ``layers[counts_layer]``) and a
      time column ``obs[time_key]`` whose labels are among the model's.
    model: a ``export.Model`` or the path of an exported model folder (or workdir).
    time_key: obs column of the time points.
    counts_layer: layer with raw counts; None or "" = X.
    n_walks: at most this many walks end at each cell; their probabilities are averaged.
    walk_margin: cells whose first walk's top-two probability margin is at least
      this keep that one walk; the others get ``n_walks`` (``walk_probabilities``).
      None = ``WALK_MARGIN`` for labels, 1 (every cell ``n_walks``) for a fate
      model, whose output is the probability itself; >= 1 = every cell ``n_walks``.
    graph_cells_per_day: the walks' steps after their anchor go to at most this many
      random cells of each day (every cell is still an anchor); None = as many as
      the model's training walks had (``model.info["walks"]["train_cells_per_day"]``;
      all the cells for models exported without it), 0 = all the cells. Why: the
      model learned walks of that density, and the neighbour search then costs
      cells x that, not cells squared (docs/performance.md).
    key_added: prefix of the keys written.
    copy: annotate and return a copy instead of ``adata`` itself.
    seed: seed of the walks (the result is deterministic given it).
    min_gene_fraction: the fraction of the model's genes the data must carry.
    progress: a tqdm progress bar over the prediction blocks; None (default) = in
      a terminal or a notebook only (``cardiac_jax.progress.enabled``).
    population_key: fate models only: the obs column of the populations ("" = the
      training data's, usually "type").
    **unit_kwargs: a unit task's own keys (``UNIT_PREDICTORS``): clonal models
      ``clone_key`` / ``clone_obsm``; region models (``configs/spatial.py``)
      ``section_key``, the obs column of the sections ("" = the training data's),
      and write the region of every spot instead (``regions.predict``).

  Returns:
    The annotated AnnData (``adata`` itself unless ``copy``), with
    ``obs[f"{key_added}_label"]`` (categorical over the model's classes),
    ``obs[f"{key_added}_confidence"]`` (max averaged probability),
    ``obsm[f"{key_added}_probs"]`` (cells x classes, names in ``uns``),
    ``obsm[f"X_pca_{key_added}"]`` (the embedding), ``obs[f"{key_added}_no_counts"]``
    (cells without counts: no prediction, NaN), ``obs[f"{key_added}_n_walks"]`` (walks
    averaged per cell, 0 = not predicted) and ``uns[key_added]``.

  Raises:
    DataError: no time column, unknown time labels, non-count data, too few of
      the model's genes, or a model that cannot be loaded.
  """
  import pandas as pd  # pylint: disable=g-import-not-at-top

  if not isinstance(model, export_lib.Model):
    model = export_lib.load_model(model)
  unit_predict = UNIT_PREDICTORS.get(model.info.get("task", "snapshot"))
  if unit_predict is not None:
    if walk_margin is not None or graph_cells_per_day is not None:
      raise DataError("walk_margin and graph_cells_per_day apply to cell-state and fate "
                      f"models; this {model.info['task']} model averages all n_walks walks "
                      "of its own units: drop them")
    return unit_predict(adata, model, time_key=time_key, counts_layer=counts_layer,
                        n_walks=n_walks, key_added=key_added, copy=copy, seed=seed,
                        min_gene_fraction=min_gene_fraction, progress=progress, **unit_kwargs)
  if n_walks < 1:
    raise DataError(f"n_walks must be >= 1, got {n_walks}")
  if graph_cells_per_day is None:
    graph_cells_per_day = int(model.info["walks"].get("train_cells_per_day", 0))
  if graph_cells_per_day < 0:
    raise DataError(f"graph_cells_per_day must be >= 0 (0 = all cells), got "
                    f"{graph_cells_per_day}")
  time_index = query.map_time_labels(query.time_column(adata, time_key), model.time_labels)
  counts = query.read_counts(adata, model, counts_layer=counts_layer,
                             min_gene_fraction=min_gene_fraction, key_added=key_added)
  if copy:
    adata = adata.copy()
  if not adata.obs_names.is_unique:
    logging.warning("obs_names repeat; making them unique (AnnData.obs_names_make_unique)")
    adata.obs_names_make_unique()

  n, length, k = adata.n_obs, model.length, model.k_neighbors
  fate_cfg = model.info.get("fate")
  anchors = np.arange(n, dtype=np.int64)
  if fate_cfg:   # before the embedding: a missing population column fails fast
    anchors = np.flatnonzero(_pre_branch(adata, fate_cfg, population_key))
  empty = counts.empty
  kept = np.flatnonzero(~empty)
  anchors = anchors[~empty[anchors]]
  pcs = query.embed(counts.matrix, counts.gene_names, model.preprocessor)
  probs = np.full((n, len(model.class_names)), np.nan, np.float32)
  if walk_margin is None:
    walk_margin = 1.0 if fate_cfg else WALK_MARGIN
  used = np.zeros(n, np.int32)
  probs[anchors], used[anchors] = walk_probabilities(
      model, pcs[kept], time_index[kept], np.searchsorted(kept, anchors), n_walks=n_walks,
      walk_margin=walk_margin, seed=seed, graph_cells_per_day=graph_cells_per_day,
      progress=progress)
  adata.obs[f"{key_added}_no_counts"] = empty
  adata.obs[f"{key_added}_n_walks"] = used
  fraction = float(model.info["walks"].get("observed_fraction", 1.0))
  params = {"time_key": time_key, "counts_layer": counts_layer or "", "n_walks": int(n_walks),
            "walk_margin": float(walk_margin), "seed": int(seed), "walk_length": int(length),
            "k_neighbors": int(k), "graph_cells_per_day": int(graph_cells_per_day),
            "observed_fraction": fraction, "min_gene_fraction": float(min_gene_fraction)}
  days = [model.time_labels[i] for i in np.unique(time_index)]
  common = {"model_path": str(model.path), "model_hash": model.hash,
            "model_time_labels": list(model.time_labels), "time_labels_present": days,
            "single_day": len(days) == 1,
            "n_genes_model": int(len(model.preprocessor.gene_names)),
            "n_genes_used": len(counts.used), "genes_missing": counts.missing}
  adata.obsm[f"X_pca_{key_added}"] = pcs
  # A UMAP of an earlier embedding would be reused by viz.embedding_2d_for: drop it.
  adata.obsm.pop(f"X_umap_{key_added}", None)
  if len(days) == 1:
    logging.warning("the data holds a single time point (%s): walks stay within it, so the "
                    "predictions use no lineage path", days[0])
  common["n_no_counts"] = int(empty.sum())
  common["mean_walks"] = float(used[anchors].mean()) if anchors.size else 0.0
  if fate_cfg:
    return _write_fate(adata, model, anchors, probs[anchors], key_added, common,
                       dict(params, population_key=population_key or fate_cfg["population_key"]))

  names = list(model.class_names)
  best = np.where(empty, -1, np.argmax(np.nan_to_num(probs, nan=-1.0), axis=1))
  adata.obs[f"{key_added}_label"] = pd.Categorical.from_codes(best, categories=names)
  adata.obs[f"{key_added}_confidence"] = np.max(probs, axis=1)
  adata.obsm[f"{key_added}_probs"] = probs
  adata.uns[key_added] = {
      **common,
      "class_names": names,
      "params": params,
      "keys": {"label": f"{key_added}_label", "confidence": f"{key_added}_confidence",
               "probs": f"{key_added}_probs", "embedding": f"X_pca_{key_added}"},
  }
  counts = np.bincount(best[~empty], minlength=len(names))
  logging.info("predicted %d cells: %s", int((~empty).sum()),
               {c: int(k) for c, k in zip(names, counts)})
  return adata


def walk_probabilities(model: Any, pcs: np.ndarray, time_index: np.ndarray,
                       anchors: np.ndarray, *, n_walks: int = 8,
                       walk_margin: float = WALK_MARGIN, seed: int = 0,
                       graph_cells_per_day: int = 0,
                       progress: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Mean class probabilities of the walks ending at each anchor, and how many walks.

  Every anchor gets one walk; those whose probabilities' top-two margin is below
  ``walk_margin`` get the other ``n_walks - 1`` (``walk_margin`` >= 1: every anchor
  gets ``n_walks``, the same walks as before walks were adaptive). Why: a walk adds
  nothing to its anchor's label on snapshot data (docs/results/ceiling.md), so
  more walks only average the sequence branch's noise, which moves labels of
  uncertain cells only (docs/performance.md). The walks run among ALL
  the given cells (one ``temporal_graph``, as one split in training), in blocks of
  ``BLOCK_CELLS`` anchors seeded per (seed, block, walk). With ``graph_cells_per_day``
  their steps after the anchor go only to at most that many random cells per day
  (``sequences.reference_points``, drawn with ``seed``; 0 = all the cells).

  Returns:
    probabilities (len(anchors), C) and walks used (len(anchors),) int32.
  """
  from cardiac_jax.data import sequences  # pylint: disable=g-import-not-at-top
  if model.length == 1:
    return cell_probabilities(model, pcs, time_index, anchors, progress=progress)
  n = pcs.shape[0]
  points = (sequences.reference_points(time_index, graph_cells_per_day, seed)
            if graph_cells_per_day else None)
  graph = sequences.temporal_graph(pcs, time_index, np.zeros(n, np.int32), np.arange(n),
                                   model.k_neighbors, points=points)
  time_value = sequences.time_feature(time_index, len(model.time_labels))
  fraction = float(model.info["walks"].get("observed_fraction", 1.0))
  anchors = np.asarray(anchors, np.int64)
  probs = np.empty((anchors.size, len(model.class_names)), np.float32)
  n_used = np.empty(anchors.size, np.int32)
  bar = progress_lib.bar(anchors.size, desc="predict", unit="cells", progress=progress)
  try:
    for b, start in enumerate(range(0, anchors.size, BLOCK_CELLS)):
      block = anchors[start:start + BLOCK_CELLS]
      total = np.zeros((block.size, len(model.class_names)), np.float32)
      used = np.zeros(block.size, np.int32)
      todo = np.arange(block.size)
      for w in range(n_walks):    # one walk per anchor at a time: x is BLOCK_CELLS x L x F
        if w == 1:                # the first walk settled the confident cells
          todo = np.flatnonzero(top_margin(total) < walk_margin)
        if todo.size == 0:
          break
        src = sequences.walk(graph, block[todo], model.length,
                             np.random.default_rng([seed, b, w]))
        x = sequences.assemble_features(pcs, src, time_value, 0)
        mask = np.ones(src.shape, np.float32)
        if fraction < 1.0:
          x, mask = sequences.apply_horizon(x, mask, fraction)
        total[todo] += model.predict_sequences(x, mask)
        used[todo] += 1
      probs[start:start + block.size] = total / used[:, None]
      n_used[start:start + block.size] = used
      bar.update(block.size)
  finally:
    bar.close()
  return probs, n_used


def cell_probabilities(model: Any, pcs: np.ndarray, time_index: np.ndarray,
                       anchors: np.ndarray, *,
                       progress: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
  """A length-1 model's probabilities: each anchor read alone (its PCA and day).

  Every walk of length 1 is the anchor itself, so no kNN graph is built and one
  pass suffices (``walk_probabilities``' return, with one "walk" per anchor).
  """
  from cardiac_jax.data import sequences  # pylint: disable=g-import-not-at-top
  time_value = sequences.time_feature(time_index, len(model.time_labels))
  anchors = np.asarray(anchors, np.int64)
  probs = np.empty((anchors.size, len(model.class_names)), np.float32)
  bar = progress_lib.bar(anchors.size, desc="predict", unit="cells", progress=progress)
  try:
    for start in range(0, anchors.size, BLOCK_CELLS):
      block = anchors[start:start + BLOCK_CELLS, None]
      x = sequences.assemble_features(pcs, block, time_value, 0)
      probs[start:start + block.shape[0]] = model.predict_sequences(
          x, np.ones(block.shape, np.float32))
      bar.update(block.shape[0])
  finally:
    bar.close()
  return probs, np.ones(anchors.size, np.int32)


def top_margin(probs: np.ndarray) -> np.ndarray:
  """(N,) difference between each row's two largest probabilities (1 with one class)."""
  if probs.shape[1] < 2:
    return np.ones(probs.shape[0], probs.dtype)
  top2 = np.partition(probs, probs.shape[1] - 2, axis=1)[:, -2:]
  return top2[:, 1] - top2[:, 0]


def _pre_branch(adata: Any, fate_cfg: dict, population_key: str) -> np.ndarray:
  """Bool mask of the cells a fate model predicts: their population is pre-branch."""
  key = population_key or fate_cfg["population_key"]
  if key not in adata.obs.columns:
    raise DataError(f"a fate model predicts only pre-branch cells ({fate_cfg['pre_branch']}), "
                    f"found by obs[{key!r}], which is missing (obs keys: "
                    f"{list(adata.obs.columns)}); pass population_key= (--population_key) "
                    "naming the column of populations")
  mask = np.isin(adata.obs[key].astype(str).to_numpy(), fate_cfg["pre_branch"])
  if not mask.any():
    raise DataError(f"no cell of obs[{key!r}] is pre-branch ({fate_cfg['pre_branch']}); "
                    f"present: {sorted(set(adata.obs[key].astype(str)))[:10]}")
  return mask


def _write_fate(adata: Any, model: Any, anchors: np.ndarray, probs: np.ndarray,
                key_added: str, common: dict, params: dict) -> Any:
  """Fate probabilities of the pre-branch cells into obsm / obs / uns (NaN elsewhere)."""
  names = list(model.class_names)
  fate = np.full((adata.n_obs, len(names)), np.nan, np.float32)
  fate[anchors] = probs
  adata.obsm[f"{key_added}_fate"] = fate
  p_key = f"{key_added}_p_{names[0]}"
  adata.obs[p_key] = fate[:, 0]
  adata.uns[key_added] = {
      **common, "task": "fate", "fate_names": names,
      "pre_branch": list(model.info["fate"]["pre_branch"]), "n_pre_branch": int(anchors.size),
      "params": params,
      "keys": {"fate": f"{key_added}_fate", f"p_{names[0]}": p_key,
               "embedding": f"X_pca_{key_added}"},
  }
  logging.info("fate of %d pre-branch cells: mean P(%s) %.3f", anchors.size, names[0],
               float(np.mean(probs[:, 0])) if anchors.size else float("nan"))
  return adata


def predictions_table(adata: Any, key_added: str = "cardiac_jax") -> Any:
  """A DataFrame: cell, label, confidence, then one probability column per class.

  For fate predictions: cell, population, then P per terminal population, for the
  pre-branch cells only.
  """
  import pandas as pd  # pylint: disable=g-import-not-at-top
  info = adata.uns[key_added]
  if info.get("task") == "fate":
    fate = np.asarray(adata.obsm[info["keys"]["fate"]])
    rows = np.flatnonzero(~np.isnan(fate[:, 0]))
    pop_key = info["params"]["population_key"]
    table = pd.DataFrame({
        "cell": np.asarray(adata.obs_names).astype(str)[rows],
        "population": np.asarray(adata.obs[pop_key]).astype(str)[rows]})
    for c, name in enumerate(info["fate_names"]):
      table[f"p_{name}"] = fate[rows, c]
    return table
  table = pd.DataFrame({"cell": np.asarray(adata.obs_names).astype(str),
                        "label": np.asarray(adata.obs[f"{key_added}_label"]).astype(str),
                        "confidence": np.asarray(adata.obs[f"{key_added}_confidence"])})
  probs = np.asarray(adata.obsm[f"{key_added}_probs"])
  for c, name in enumerate(info["class_names"]):
    table[f"prob_{name}"] = probs[:, c]
  return table


def predict_file(model_path: str | os.PathLike, input_path: str | os.PathLike,
                 output_path: str | os.PathLike, *, csv_path: str | os.PathLike | None = None,
                 plots_dir: str | os.PathLike | None = None, true_key: str = "",
                 **kwargs: Any) -> dict[str, pathlib.Path]:
  """Reads an h5ad, predicts, writes the annotated h5ad and predictions.csv atomically.

  Nothing is written unless prediction succeeded; both files appear together
  (each under a temporary name first, renamed at the end). Plots (optional) are
  written after that, each PNG atomically. A unit task's model (clones) writes
  its own table (``clone_predictions.csv``) and plots.
  """
  from cardiac_jax.data import ingest  # pylint: disable=g-import-not-at-top
  key = kwargs.get("key_added", "cardiac_jax")
  output_path = pathlib.Path(output_path)
  model = export_lib.load_model(model_path)
  table, csv_name, plot = UNIT_TABLES.get(model.info.get("task", "snapshot"),
                                          (predictions_table, "predictions.csv", None))
  csv_path = pathlib.Path(csv_path) if csv_path else output_path.with_name(csv_name)
  if pathlib.Path(input_path).resolve() == output_path.resolve():
    raise DataError(f"--output {output_path} is the input file; write to a new file")
  adata = ingest.load_h5ad(input_path)
  if not adata.obs_names.is_unique:
    repeated = adata.obs_names[adata.obs_names.duplicated()].unique()
    raise DataError(
        f"{input_path}: {len(repeated)} cell name(s) repeat (e.g. {list(repeated[:3])}), so "
        "the rows of predictions.csv could not be joined back to the cells; make them unique "
        "first (adata.obs_names_make_unique(), then write the h5ad again)")
  adata = predict(adata, model, **kwargs)
  written = write_predictions(adata, output_path, csv_path, key_added=key, table=table)
  if plots_dir and plot is not None:
    written.update(plot(adata, plots_dir, key_added=key,
                        time_key=kwargs.get("time_key", "diffday"), true_key=true_key))
  elif plots_dir and adata.uns[key].get("task") == "fate":
    from cardiac_jax import viz  # pylint: disable=g-import-not-at-top
    written.update(viz.plot_fate(adata, plots_dir, key_added=key,
                                 time_key=kwargs.get("time_key", "diffday")))
  elif plots_dir:
    from cardiac_jax import viz  # pylint: disable=g-import-not-at-top
    written.update(viz.plot_predictions(
        adata, plots_dir, key_added=key, time_key=kwargs.get("time_key", "diffday"),
        true_key=true_key))
  return written


def write_predictions(adata: Any, output_path: str | os.PathLike, csv_path: str | os.PathLike,
                      *, key_added: str = "cardiac_jax",
                      table: Callable[..., Any] | None = None) -> dict[str, pathlib.Path]:
  """Writes the annotated h5ad and the predictions table together, atomically
  (``table(adata, key_added)``: the task's table, default ``predictions_table``)."""
  table = table or predictions_table
  output_path, csv_path = pathlib.Path(output_path), pathlib.Path(csv_path)
  with contextlib.ExitStack() as stack:
    tmp_h5ad = stack.enter_context(fileio.atomic_path(output_path))
    tmp_csv = stack.enter_context(fileio.atomic_path(csv_path))
    adata.write_h5ad(tmp_h5ad)
    table(adata, key_added).to_csv(tmp_csv, index=False)
  return {"h5ad": output_path, "csv": csv_path}

"""Reading a new AnnData the way the model was trained: counts, genes, days, embedding.

Every predictor (cells and fates in ``prediction``, clones in ``clones``,
regions in ``regions``) goes through these checks, so a bad input gets the
same message whatever the task: no time column, unknown time labels, non-count
data, too few of the model's genes, repeated gene names, cells without counts.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from absl import logging
import numpy as np

from cardiac_jax.data.errors import DataError

TRANSFORM_CHUNK = 5_000     # rows embedded at once (dense temporaries: ~4 x rows x genes floats)
MIN_GENE_FRACTION = 0.5     # of the model's genes the new data must carry


def map_time_labels(labels: np.ndarray, model_labels: Sequence[str]) -> np.ndarray:
  """int32 index into ``model_labels`` of each label: exact string, else equal as numbers."""
  labels = np.asarray(labels).astype(str)
  model_labels = [str(t) for t in model_labels]
  exact = {t: i for i, t in enumerate(model_labels)}
  numeric = {}
  for i, t in enumerate(model_labels):
    try:
      numeric[float(t)] = i
    except ValueError:
      pass
  uniq, inverse = np.unique(labels, return_inverse=True)
  index, unknown = [], []
  for u in uniq:
    if u in exact:
      index.append(exact[u])
      continue
    try:
      index.append(numeric[float(u)])
    except (ValueError, KeyError):
      unknown.append(str(u))
      index.append(-1)
  if unknown:
    raise DataError(f"time labels {unknown} are not among the model's time labels "
                    f"{model_labels}; relabel them (e.g. adata.obs[time_key] = "
                    "adata.obs[time_key].map({...})) or drop those cells")
  return np.asarray(index, np.int32)[inverse]


def time_column(adata: Any, time_key: str) -> np.ndarray:
  if not time_key or time_key not in adata.obs.columns:
    raise DataError(f"obs has no time column {time_key!r}; obs keys present: "
                    f"{list(adata.obs.columns)}; pass time_key= (--time_key) naming the column "
                    "with each cell's time point")
  column = adata.obs[time_key]
  if column.isna().any():
    raise DataError(f"obs[{time_key!r}] has {int(column.isna().sum())} missing values; fill "
                    "them or drop those cells before predicting")
  return column.astype(str).to_numpy().astype(str)


def gene_overlap(pp: Any, gene_names: np.ndarray, min_fraction: float
                  ) -> tuple[list[str], list[str]]:
  present = set(gene_names.tolist())
  used = [g for g in pp.gene_names.tolist() if g in present]
  missing = [g for g in pp.gene_names.tolist() if g not in present]
  need = int(np.ceil(min_fraction * len(pp.gene_names)))
  if len(used) < need:
    raise DataError(f"only {len(used)} of the model's {len(pp.gene_names)} genes are in the "
                    f"data (the minimum is {need}, {min_fraction:.0%}); use the same gene "
                    "identifiers as the training data (symbols vs Ensembl IDs; first missing: "
                    f"{missing[:5]}) or lower min_gene_fraction")
  return used, missing


def embed(counts: Any, gene_names: np.ndarray, pp: Any,
          chunk_rows: int = TRANSFORM_CHUNK) -> np.ndarray:
  """PCA coordinates (n, n_pcs) with the training preprocessor, in row chunks.

  The columns of each chunk are put in gene-name order first, so the same cells
  with their genes in another order give bit-identical coordinates.
  """
  import scipy.sparse as sp  # pylint: disable=g-import-not-at-top
  order = np.argsort(gene_names, kind="stable")
  names = gene_names[order]
  if sp.issparse(counts) and counts.format != "csr":
    counts = sp.csr_matrix(counts)
  out = np.empty((counts.shape[0], pp.n_pcs), np.float32)
  for start in range(0, counts.shape[0], chunk_rows):
    block = counts[start:start + chunk_rows]
    block = sp.csr_matrix(block if sp.issparse(block) else np.asarray(block))[:, order]
    out[start:start + block.shape[0]] = pp.transform(block, names, chunk_rows=chunk_rows)
  return out


@dataclasses.dataclass(frozen=True)
class Counts:
  """The raw counts of a query and what they share with the model."""
  matrix: Any                 # cells x genes raw counts (X or the layer)
  gene_names: np.ndarray
  used: list[str]             # the model's genes present
  missing: list[str]          # the model's genes absent (set to their training mean)
  empty: np.ndarray           # (n,) bool: cells without counts (left unpredicted)


def read_counts(adata: Any, model: Any, *, counts_layer: str | None = None,
                min_gene_fraction: float = MIN_GENE_FRACTION,
                key_added: str = "cardiac_jax") -> Counts:
  """The checked raw counts of ``adata`` for ``model`` (see the module docstring).

  A cell without counts has no expression to read: it would sit at the training
  mean, and on its neighbours' walks too. It is flagged (``Counts.empty``) and
  left unpredicted rather than failing a whole file for a few empty droplets.
  """
  from cardiac_jax.data import ingest  # pylint: disable=g-import-not-at-top
  if adata.n_obs == 0:
    raise DataError("the AnnData has no cells")
  layer = counts_layer or ""
  matrix = ingest.counts_matrix(adata, layer, "counts_layer (--counts_layer)")
  ingest.check_counts(matrix, f"layers[{layer!r}]" if layer else "X",
                      "counts_layer= (--counts_layer)")
  gene_names = np.asarray(adata.var_names).astype(str)
  if len(np.unique(gene_names)) != len(gene_names):
    raise DataError("gene names (var_names) repeat; call adata.var_names_make_unique() so "
                    "genes can be matched to the model's by name")
  used, missing = gene_overlap(model.preprocessor, gene_names, min_gene_fraction)
  if missing:
    logging.warning("%d of the model's %d genes are missing from the data (set to their "
                    "training mean); listed in uns[%r]['genes_missing']", len(missing),
                    len(model.preprocessor.gene_names), key_added)
  empty = np.asarray(matrix.sum(axis=1)).ravel() == 0
  if empty.all():
    raise DataError("every cell has zero counts; pass the raw counts (counts_layer= / "
                    "--counts_layer) or filter the empty droplets out")
  if empty.any():
    logging.warning("%d of %d cells have no counts (empty droplets?): they get no prediction "
                    "(NaN) and obs[%r] = True", int(empty.sum()), adata.n_obs,
                    f"{key_added}_no_counts")
  return Counts(matrix, gene_names, used, missing, empty)

"""Standard scRNA-seq preprocessing, fitted on training cells only.

normalise each cell to ``target_sum`` -> log1p -> highly variable genes -> scale
-> clip -> PCA, as scanpy does, but with every statistic taken from the training
rows so that validation/test cells (and spatial spots) never leak into the
features. All of it is sparse: the only dense blocks are ``chunk_rows x n_hvg``
in `Preprocessor.transform` and the PCA fitting block (at most
``pca_max_cells x n_hvg`` float32: 50,000 x 2,000 = 400 MB, 20K training cells
x 2,000 HVGs = 160 MB). The fit reads the training rows in blocks of ~16 M stored
values (two passes: all genes for the HVGs, then the HVGs), never a copy of the
training matrix, so at GSE175634's size (38,943 genes, 312 M stored values) it
adds ~0.6 GB to the counts it is given.

HVG selection is scanpy's ``flavor="seurat"``: on the normalised (not logged)
training expression, the log dispersion (variance / mean) of each gene is
z-scored within 20 equal-width bins of log1p(mean); the genes with the highest
normalised dispersion are kept, in their original order. Genes never detected in
the training cells are never selected.

Library size: a cell is normalised by the total of ALL genes of the matrix it
comes in (not only the HVGs, not only the genes shared with the model). For the
cells that is the same gene set as at fitting time; for spatial spots with a
different gene panel it is their own panel's total.
"""
from __future__ import annotations

import dataclasses
import io
import os
import pathlib
from typing import Any, Callable, Sequence

from absl import logging
import numpy as np
import scipy.sparse as sp
from sklearn.utils.extmath import randomized_svd

from cardiac_jax import fileio
from cardiac_jax.data import ingest
from cardiac_jax.data.errors import DataError

N_DISPERSION_BINS = 20
DEFAULT_CHUNK_ROWS = 20_000
DEFAULT_PCA_MAX_CELLS = 50_000
# Stored values per float64 temporary in the column statistics (128 MB), so their
# memory does not grow with the training matrix.
_STATS_CHUNK_VALUES = 1 << 24
_FORMAT_VERSION = 1


def _rows(counts: Any, start: int, stop: int) -> sp.csr_matrix:
  """Rows [start, stop) as float32 CSR, from sparse or dense input."""
  block = counts[start:stop]
  block = block if sp.issparse(block) else sp.csr_matrix(np.asarray(block))
  return sp.csr_matrix(block, dtype=np.float32)


def log_normalise(block: sp.csr_matrix, target_sum: float, *,
                  copy: bool = True) -> sp.csr_matrix:
  """log1p(target_sum * x / library size), per row, on stored values only.

  The library size is the row total over every column of ``block``. Rows with no
  counts stay zero. ``copy=False`` works in place when ``block`` is float32 CSR
  (callers that own a fresh copy save one matrix of memory).
  """
  block = sp.csr_matrix(block, dtype=np.float32, copy=copy)
  library = np.asarray(block.sum(axis=1), dtype=np.float64).ravel()
  factor = np.where(library > 0, target_sum / np.maximum(library, 1e-12), 0.0)
  block.data *= np.repeat(factor.astype(np.float32), np.diff(block.indptr))
  np.log1p(block.data, out=block.data)
  return block


class _Moments:
  """Column sums and sums of squares (float64), accumulated over row blocks.

  Bincounts over the column indices in chunks of stored values, so neither a
  block nor a float64 copy of all its values is ever made, and the training
  matrix can arrive in row blocks (`fit_preprocessor` never copies it whole).
  """

  def __init__(self, n_genes: int):
    self.n = 0
    self.total, self.total_sq = np.zeros(n_genes), np.zeros(n_genes)

  def add(self, block: sp.csr_matrix,
          fn: Callable[[np.ndarray], np.ndarray] | None = None) -> None:
    """Adds the rows of ``block`` (``fn`` maps stored values; it must keep zeros zero)."""
    g = len(self.total)
    self.n += block.shape[0]
    for start in range(0, block.nnz, _STATS_CHUNK_VALUES):
      values = block.data[start:start + _STATS_CHUNK_VALUES].astype(np.float64)
      if fn is not None:
        values = fn(values)
      cols = block.indices[start:start + _STATS_CHUNK_VALUES]
      self.total += np.bincount(cols, values, minlength=g)
      self.total_sq += np.bincount(cols, values * values, minlength=g)

  def mean_var(self) -> tuple[np.ndarray, np.ndarray]:
    """Column mean and unbiased variance of every row added."""
    n = self.n
    mean, mean_sq = self.total / n, self.total_sq / n
    var = np.maximum(mean_sq - mean**2, 0.0) * (n / max(n - 1, 1))
    return mean, var


def _mean_var(block: sp.csr_matrix, fn: Callable[[np.ndarray], np.ndarray] | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
  """Column mean and unbiased variance (float64) of ``block`` (of ``fn`` of its values)."""
  moments = _Moments(block.shape[1])
  moments.add(block, fn)
  return moments.mean_var()


def seurat_dispersion(logged: sp.csr_matrix, n_bins: int = N_DISPERSION_BINS) -> np.ndarray:
  """Normalised dispersion per gene (scanpy flavor="seurat"); -inf for undetected genes."""
  return _normalised_dispersion(*_mean_var(logged, np.expm1), n_bins)


def _normalised_dispersion(mean: np.ndarray, var: np.ndarray,
                           n_bins: int = N_DISPERSION_BINS) -> np.ndarray:
  """`seurat_dispersion` from the normalised expression's column mean and variance."""
  detected = mean > 0
  with np.errstate(divide="ignore", invalid="ignore"):
    dispersion = np.where(detected & (var > 0), np.log(var / np.where(detected, mean, 1.0)),
                          np.nan)
  log_mean = np.log1p(mean)
  valid = ~np.isnan(dispersion)
  if not valid.any():
    return np.full(len(mean), -np.inf)
  edges = np.linspace(log_mean[valid].min(), log_mean[valid].max(), n_bins + 1)
  bins = np.clip(np.searchsorted(edges, log_mean, side="right") - 1, 0, n_bins - 1)
  count = np.bincount(bins[valid], minlength=n_bins).astype(np.float64)
  total = np.bincount(bins[valid], dispersion[valid], minlength=n_bins)
  bin_mean = total / np.maximum(count, 1)
  dev = np.where(valid, dispersion - bin_mean[bins], 0.0)
  bin_std = np.sqrt(np.bincount(bins[valid], dev[valid]**2, minlength=n_bins)
                    / np.maximum(count - 1, 1))
  # As scanpy: a bin holding one gene gives it a normalised dispersion of 1.
  single = count == 1
  bin_std[single] = bin_mean[single]
  bin_mean[single] = 0.0
  bin_std[bin_std == 0] = 1.0
  norm = (dispersion - bin_mean[bins]) / bin_std[bins]
  return np.where(valid, norm, -np.inf)


@dataclasses.dataclass
class Preprocessor:
  """Fitted preprocessing: which genes, how to scale them, which PCA axes.

  Attributes:
    gene_names: (n_hvg,) the selected genes, in the input's original order.
    mean: (n_hvg,) float32 mean of the log-normalised training expression.
    scale: (n_hvg,) float32 its standard deviation (1 where it is 0).
    components: (n_hvg, n_pcs) float32 PCA axes of the scaled, clipped training block.
    pca_mean: (n_hvg,) float32 mean of that block (it is centred before projecting).
    explained_variance_ratio: (n_pcs,) float32, of the PCA fitting block.
    target_sum: library size each cell is normalised to.
    max_value: clip of the scaled values.
  """
  gene_names: np.ndarray
  mean: np.ndarray
  scale: np.ndarray
  components: np.ndarray
  pca_mean: np.ndarray
  explained_variance_ratio: np.ndarray
  target_sum: float
  max_value: float

  @property
  def n_pcs(self) -> int:
    return self.components.shape[1]

  def _alignment(self, gene_names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(input column, fitted position) of every fitted gene the input carries."""
    names = np.asarray(gene_names).astype(str)
    if not len(names):
      return np.zeros(0, np.int64), np.zeros(0, np.int64)
    order = np.argsort(names, kind="stable")
    column = order[np.minimum(np.searchsorted(names, self.gene_names, sorter=order),
                              len(names) - 1)]
    hit = names[column] == self.gene_names
    return column[hit], np.flatnonzero(hit)

  def transform(self, counts: Any, gene_names: Sequence[str], *,
                chunk_rows: int = DEFAULT_CHUNK_ROWS) -> np.ndarray:
    """Projects raw counts onto the fitted PCA axes.

    Args:
      counts: (n, g) raw counts, scipy sparse (any format) or dense.
      gene_names: (g,) names of the columns; matched to the fitted genes by name.
        Fitted genes missing from the input are set to their training mean (zero
        after scaling).
      chunk_rows: rows processed at once (memory ~ chunk_rows x n_hvg x 4 bytes).

    Returns:
      (n, n_pcs) float32.
    """
    if counts.ndim != 2 or counts.shape[1] != len(gene_names):
      raise DataError(f"counts have shape {counts.shape} but {len(gene_names)} gene names were "
                      "given; pass the gene names of the matrix's columns")
    if len(np.unique(np.asarray(gene_names).astype(str))) != len(gene_names):
      raise DataError("gene names repeat; make them unique (AnnData.var_names_make_unique) "
                      "so genes can be matched by name")
    if chunk_rows < 1:
      raise ValueError(f"chunk_rows must be positive, got {chunk_rows}")
    columns, positions = self._alignment(gene_names)
    n_hvg = len(self.gene_names)
    logging.info("transform: %d of %d model genes present in the input%s", len(positions),
                 n_hvg, "" if len(positions) == n_hvg else "; the rest are set to their "
                 "training mean")
    if sp.issparse(counts) and counts.format != "csr":
      counts = sp.csr_matrix(counts)
    mean, scale = self.mean[positions], self.scale[positions]
    out = np.empty((counts.shape[0], self.n_pcs), np.float32)
    for start in range(0, counts.shape[0], chunk_rows):
      stop = min(start + chunk_rows, counts.shape[0])
      logged = log_normalise(_rows(counts, start, stop), self.target_sum)
      z = np.zeros((stop - start, n_hvg), np.float32)
      z[:, positions] = (logged[:, columns].toarray() - mean) / scale
      out[start:stop] = self._project(z)
    return out

  def _project(self, z: np.ndarray) -> np.ndarray:
    """Clips scaled values and projects them; the one place for that arithmetic."""
    np.clip(z, -self.max_value, self.max_value, out=z)
    z -= self.pca_mean
    return z @ self.components

  def save(self, path: str | os.PathLike) -> pathlib.Path:
    """Writes an .npz (no pickle) atomically (``fileio``)."""
    buffer = io.BytesIO()
    self.save_to(buffer)
    return fileio.atomic_write_bytes(path, buffer.getvalue())

  def save_to(self, fh: Any) -> None:
    """Writes the .npz into an open binary file (the portable model embeds it)."""
    np.savez(fh, format_version=np.int64(_FORMAT_VERSION),
             gene_names=np.asarray(self.gene_names).astype(str), mean=self.mean,
             scale=self.scale, components=self.components, pca_mean=self.pca_mean,
             explained_variance_ratio=self.explained_variance_ratio,
             target_sum=np.float64(self.target_sum), max_value=np.float64(self.max_value))

  @classmethod
  def load(cls, path: str | os.PathLike) -> "Preprocessor":
    """Reads a file written by `save` (or `save_to`)."""
    path = pathlib.Path(path)
    if not path.is_file():
      raise DataError(f"no preprocessor file at {path}; fit one with fit_preprocessor and save it")
    try:
      with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError) as e:
      raise DataError(f"{path} is not a preprocessor .npz ({e}); delete it and refit") from e
    if int(arrays.pop("format_version", -1)) != _FORMAT_VERSION:
      raise DataError(f"{path} has an unknown format version; delete it and refit")
    return cls(gene_names=arrays["gene_names"].astype(str), mean=arrays["mean"],
               scale=arrays["scale"], components=arrays["components"],
               pca_mean=arrays["pca_mean"],
               explained_variance_ratio=arrays["explained_variance_ratio"],
               target_sum=float(arrays["target_sum"]), max_value=float(arrays["max_value"]))


def _train_indices(train_rows: Any, n: int) -> np.ndarray:
  rows = np.asarray(train_rows)
  if rows.dtype == bool:
    if rows.shape != (n,):
      raise DataError(f"train_rows mask has shape {rows.shape}; expected ({n},)")
    rows = np.flatnonzero(rows)
  rows = rows.astype(np.int64).ravel()
  if not len(rows):
    raise DataError("no training rows to fit the preprocessing on; check the split fractions")
  if rows.min() < 0 or rows.max() >= n:
    raise DataError(f"train_rows index outside [0, {n}); pass row indices of the counts matrix")
  return np.unique(rows)


def _row_blocks(counts: Any, rows: np.ndarray) -> np.ndarray:
  """Boundaries into ``rows`` of blocks of about ``_STATS_CHUNK_VALUES`` stored values.

  ``counts`` is CSR or dense (a dense row stores every gene).

  A single block when the training rows fit in one (the moments are then summed
  exactly as over the whole matrix).
  """
  if sp.issparse(counts):
    per_row = np.diff(counts.indptr)[rows]
  else:
    per_row = np.full(len(rows), counts.shape[1], np.int64)
  ends = np.cumsum(per_row)
  cuts = np.searchsorted(ends, np.arange(_STATS_CHUNK_VALUES, int(ends[-1]),
                                         _STATS_CHUNK_VALUES), side="right")
  return np.unique(np.concatenate([[0], cuts, [len(rows)]]))


def _train_block(counts: Any, rows: np.ndarray, target_sum: float) -> sp.csr_matrix:
  """Log-normalised float32 CSR of ``counts[rows]`` (a fresh copy, normalised in place)."""
  if sp.issparse(counts):
    block = sp.csr_matrix(counts[rows], dtype=np.float32)
  else:
    block = sp.csr_matrix(np.asarray(counts[rows]), dtype=np.float32)
  return log_normalise(block, target_sum, copy=False)


def fit_preprocessor(counts: Any, gene_names: Sequence[str], train_rows: Any,
                     pp_cfg: Any) -> Preprocessor:
  """Fits HVGs, scaling and PCA on the training rows of a raw counts matrix.

  Args:
    counts: (n, g) raw counts, scipy sparse (CSR preferred) or dense.
    gene_names: (g,) unique gene names.
    train_rows: int indices or a boolean mask of the training rows; no other row
      is read.
    pp_cfg: ``config.data.preprocess`` (target_sum, n_hvg, n_pcs, max_value;
      optional pca_max_cells (default 50,000) and seed (default 0) for the PCA
      subsample and the randomized SVD).

  Returns:
    The fitted Preprocessor.
  """
  gene_names = np.asarray(gene_names).astype(str)
  if counts.ndim != 2 or counts.shape[1] != len(gene_names):
    raise DataError(f"counts have shape {counts.shape} but {len(gene_names)} gene names were "
                    "given; pass the gene names of the matrix's columns")
  if len(np.unique(gene_names)) != len(gene_names):
    raise DataError("gene names repeat; make them unique (AnnData.var_names_make_unique)")
  rows = _train_indices(train_rows, counts.shape[0])
  target_sum, max_value = float(pp_cfg.target_sum), float(pp_cfg.max_value)
  n_hvg, n_pcs = int(pp_cfg.n_hvg), int(pp_cfg.n_pcs)
  pca_max_cells = int(ingest.config_get(pp_cfg, "pca_max_cells", DEFAULT_PCA_MAX_CELLS))
  seed = int(ingest.config_get(pp_cfg, "seed", 0))
  if target_sum <= 0 or max_value <= 0 or n_hvg < 1 or n_pcs < 1:
    raise DataError("config.data.preprocess needs target_sum > 0, max_value > 0, n_hvg >= 1 "
                    f"and n_pcs >= 1 (got {target_sum}, {max_value}, {n_hvg}, {n_pcs})")

  # Two passes over the training rows in blocks (HVG statistics on all genes, then
  # the HVGs' scaling and the PCA rows): no copy of the training matrix is made,
  # so the peak is the input plus one block, whatever the number of cells.
  if sp.issparse(counts) and counts.format != "csr":
    counts = sp.csr_matrix(counts)   # once, not per block
  starts = _row_blocks(counts, rows)
  moments = _Moments(len(gene_names))
  for a, b in zip(starts[:-1], starts[1:]):
    moments.add(_train_block(counts, rows[a:b], target_sum), np.expm1)
  dispersion = _normalised_dispersion(*moments.mean_var())
  n_detected = int(np.isfinite(dispersion).sum())
  if n_hvg > n_detected:
    logging.warning("n_hvg=%d but only %d genes vary in the training cells; keeping %d", n_hvg,
                    n_detected, n_detected)
    n_hvg = n_detected
  if n_hvg < 1:
    raise DataError("no gene varies across the training cells; check the counts")
  ranked = np.argsort(-dispersion, kind="stable")
  hvg = np.sort(ranked[:n_hvg])

  if n_pcs > min(len(rows), n_hvg):
    raise DataError(f"n_pcs={n_pcs} exceeds min(training cells={len(rows)}, genes={n_hvg}); "
                    "lower config.data.preprocess.n_pcs")
  rng = np.random.default_rng(seed)
  pca_rows = (np.arange(len(rows)) if len(rows) <= pca_max_cells
              else np.sort(rng.choice(len(rows), pca_max_cells, replace=False)))
  # The PCA rows are kept as logged HVG values, then scaled once mean and scale are known.
  block = np.empty((len(pca_rows), n_hvg), np.float32)
  moments = _Moments(n_hvg)
  for a, b in zip(starts[:-1], starts[1:]):
    logged = _train_block(counts, rows[a:b], target_sum)
    if n_hvg < logged.shape[1]:
      logged = logged[:, hvg]
    moments.add(logged)
    lo, hi = np.searchsorted(pca_rows, [a, b])
    block[lo:hi] = logged[pca_rows[lo:hi] - a].toarray()
  mean, var = moments.mean_var()
  scale = np.sqrt(var)
  scale[scale == 0] = 1.0
  mean32, scale32 = mean.astype(np.float32), scale.astype(np.float32)
  for start in range(0, len(block), DEFAULT_CHUNK_ROWS):
    part = block[start:start + DEFAULT_CHUNK_ROWS]
    part -= mean32
    part /= scale32
  np.clip(block, -max_value, max_value, out=block)
  pca_mean = block.mean(axis=0)
  block -= pca_mean
  _, singular, vt = randomized_svd(block, n_pcs, n_iter=7, random_state=seed)
  total_var = sum(float(np.square(block[i:i + DEFAULT_CHUNK_ROWS], dtype=np.float64).sum())
                  for i in range(0, len(block), DEFAULT_CHUNK_ROWS))
  explained = (singular.astype(np.float64)**2 / max(total_var, 1e-30)).astype(np.float32)
  pp = Preprocessor(gene_names=gene_names[hvg], mean=mean32, scale=scale32,
                    components=np.ascontiguousarray(vt.T, dtype=np.float32),
                    pca_mean=pca_mean.astype(np.float32), explained_variance_ratio=explained,
                    target_sum=target_sum, max_value=max_value)
  logging.info("fitted preprocessing on %d training cells: %d HVGs of %d genes, %d PCs "
               "(PCA on %d cells) explaining %.1f%% of the variance", len(rows), n_hvg,
               len(gene_names), n_pcs, len(pca_rows), 100 * explained.sum())
  return pp


def shared_gene_count(pp: Preprocessor, gene_names: Sequence[str],
                      min_shared_genes: int = 0) -> int:
  """Counts the model genes present in ``gene_names``; raises if fewer than the minimum.

  Use before projecting spatial spots (``config.data.spatial.min_shared_genes``).
  """
  _, positions = pp._alignment(gene_names)  # pylint: disable=protected-access
  shared = len(positions)
  if shared < min_shared_genes:
    raise DataError(f"only {shared} of the {len(pp.gene_names)} model genes are present in the "
                    "spatial data; use the same gene identifiers in both (symbols vs Ensembl "
                    "IDs) or lower config.data.spatial.min_shared_genes "
                    f"(now {min_shared_genes})")
  return shared

"""Real-data ingest: AnnData in, validated `Cells` / `Spots` out.

Everything downstream (splits, preprocessing, walks) indexes the arrays built
here, so this is the one place that checks the input: obs keys, labels, time
points and that the matrix holds raw counts. The checks look only at the stored
values of a sparse matrix (``.data``) or at row chunks of a dense one, so a
230K-cell matrix is validated without a dense copy. An h5ad read with
``load_h5ad(path, backed=True)`` keeps X on disk; `prepare_cells` then reads it in
chunks straight into its float32 CSR, so a GSE175634-sized matrix (312 M stored
values) is held once, not as the file's integers plus the float32 copy.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
import re
from typing import Any, Iterable, Sequence

from absl import logging
import anndata as ad
import h5py
import numpy as np
import scipy.sparse as sp

from cardiac_jax.data.errors import DataError

try:   # a backed (on-disk) sparse X, as ``anndata.read_h5ad(..., backed="r")`` gives it
  _CSRDataset, _CSCDataset = ad.abc.CSRDataset, ad.abc.CSCDataset
except AttributeError:   # anndata < 0.11
  from anndata.experimental import CSCDataset as _CSCDataset  # pylint: disable=g-import-not-at-top
  from anndata.experimental import CSRDataset as _CSRDataset  # pylint: disable=g-import-not-at-top

# A log1p(1e4-normalised) matrix tops out near log1p(1e4) ~ 9.2; raw counts with
# non-integer values and a maximum this small are almost surely log-normalised.
_LOG_NORMALISED_MAX = 20.0
_DENSE_CHUNK_ROWS = 8_192
# Stored values handled at once by the sparse paths: bounds the temporaries of the
# checks and of the row gather to ~100 MB whatever the matrix size.
_SPARSE_CHUNK_VALUES = 1 << 24
_TIME_LABEL = re.compile(r"^\s*([A-Za-z]*)[\s_.:-]*(\d+(?:\.\d+)?)\s*$")


@dataclasses.dataclass
class Cells:
  """Single cells ready for splitting and preprocessing (see ARCHITECTURE.md)."""
  counts: sp.csr_matrix          # (n, g) float32 raw counts
  gene_names: np.ndarray         # (g,) str
  labels: np.ndarray             # (n,) int32 index into class_names
  time_index: np.ndarray         # (n,) int32 index into time_labels
  time_labels: tuple[str, ...]
  donors: np.ndarray | None      # (n,) str
  class_names: tuple[str, ...]
  obs_names: np.ndarray          # (n,) str

  @property
  def n_cells(self) -> int:
    return self.counts.shape[0]


@dataclasses.dataclass
class Spots:
  """Spatial spots labelled by their dominant population."""
  counts: sp.csr_matrix          # (n, g) float32 raw counts
  gene_names: np.ndarray         # (g,) str
  labels: np.ndarray             # (n,) int32 index into class_names
  coords: np.ndarray             # (n, 2) float32
  obs_names: np.ndarray          # (n,) str

  @property
  def n_spots(self) -> int:
    return self.counts.shape[0]


def config_get(cfg: Any, name: str, default: Any = None) -> Any:
  """Reads an optional field from a ConfigDict, dict or plain object (None: default)."""
  if cfg is None:
    return default
  if hasattr(cfg, "get"):
    return cfg.get(name, default)
  return getattr(cfg, name, default)


def _index_of(values: np.ndarray, vocabulary: Sequence[str]) -> np.ndarray:
  """Maps each value to its int32 position in ``vocabulary`` (all values must be in it)."""
  uniq, inverse = np.unique(values, return_inverse=True)
  position = {v: i for i, v in enumerate(vocabulary)}
  return np.asarray([position[u] for u in uniq], np.int32)[inverse]   # loop over distinct values


def load_h5ad(path: str | os.PathLike, *, backed: bool = False) -> ad.AnnData:
  """Reads an .h5ad, turning the common failures into DataErrors.

  ``backed=True`` keeps X on disk (read-only; obs, var and layers are read), so
  `prepare_cells` streams it straight into its float32 copy instead of holding
  the file's integer matrix as well; close it with ``adata.file.close()``.
  """
  path = pathlib.Path(path).expanduser()
  if not str(path) or str(path) == ".":
    raise DataError("no .h5ad path given; set config.data.path (or config.data.spatial.path)")
  if not path.exists():
    raise DataError(f"no such file: {path}; check config.data.path (for GEO GSE175634 "
                    "convert the supplementary files first with cardiac_jax.data.geo.convert_geo)")
  if path.is_dir():
    raise DataError(f"{path} is a directory, not an .h5ad file; point the path at the file")
  if not h5py.is_hdf5(path):
    raise DataError(f"{path} is not an h5ad (HDF5) file; write it with AnnData.write_h5ad "
                    "or convert GEO MatrixMarket files with cardiac_jax.data.geo.convert_geo")
  try:
    adata = ad.read_h5ad(path, backed="r" if backed else None)
  except (OSError, KeyError, TypeError, ValueError) as e:
    raise DataError(f"{path} is HDF5 but not a readable AnnData file ({e}); "
                    "re-write it with AnnData.write_h5ad") from e
  logging.info("loaded %s: %d obs x %d vars%s", path, adata.n_obs, adata.n_vars,
               " (X backed on disk)" if backed else "")
  return adata


def order_time_labels(labels: Iterable[Any], explicit: Sequence[str] = ()) -> tuple[str, ...]:
  """Orders the time labels present in the data.

  Args:
    labels: the time label of each cell (duplicates fine).
    explicit: ``config.data.time_order``; when set it wins and must contain every
      label present. Labels in it that no cell carries are kept here; callers that
      need every time point populated check that themselves.

  Returns:
    The ordered labels as strings. Without ``explicit`` they are derived: labels
    that are all numbers ("0", "2", "10", "0.5", "-1", "1e2") order by value;
    otherwise the number in labels such as "day0", "D3" or "day 11" is parsed.
  """
  present = np.unique(np.asarray(list(labels) if not isinstance(labels, np.ndarray) else labels)
                      .astype(str)).tolist()
  if len(explicit):
    order = tuple(str(t) for t in explicit)
    if len(set(order)) != len(order):
      raise DataError(f"config.data.time_order {list(order)} repeats a label; list each time once")
    unknown = sorted(set(present) - set(order))
    if unknown:
      raise DataError(f"time labels {unknown} are not in config.data.time_order {list(order)}; "
                      "add them in their place or drop those cells")
    return order
  if not len(present):
    raise DataError("no time labels to order; the data holds no cells")
  values = _numeric_times(present)
  if values is None:
    values = _parsed_times(present)
  if len(np.unique(values)) != len(values):
    raise DataError(f"cannot order time labels {list(present)}: two labels parse to the same "
                    "time; set config.data.time_order or harmonise the labels")
  return tuple(present[i] for i in np.argsort(values, kind="stable"))


def _numeric_times(present: Sequence[str]) -> np.ndarray | None:
  """The labels' values when every label is a finite number (a numeric obs column), else None."""
  try:
    values = np.asarray([float(label) for label in present])
  except ValueError:
    return None
  return values if np.isfinite(values).all() else None


def _parsed_times(present: Sequence[str]) -> np.ndarray:
  """The number in each label such as "day11" or "D3"; DataError when one has none."""
  values = []
  for label in present:   # one per distinct label, not per cell
    match = _TIME_LABEL.match(label)
    if match is None:
      raise DataError(f"cannot order time labels {list(present)}; set config.data.time_order "
                      "to the labels in time order")
    values.append(float(match.group(2)))
  return np.asarray(values)


def obs_column(adata: ad.AnnData, key: str, what: str) -> np.ndarray:
  if not key or key not in adata.obs.columns:
    raise DataError(f"obs has no column {key!r} for the {what}; present obs keys: "
                    f"{list(adata.obs.columns)}; set the config key to one of them")
  column = adata.obs[key]
  if column.isna().any():
    raise DataError(f"obs[{key!r}] ({what}) has {int(column.isna().sum())} missing values; "
                    "fill them or drop those cells before ingest")
  return column.astype(str).to_numpy().astype(str)


def counts_matrix(adata: ad.AnnData, layer: str, config_field: str) -> Any:
  if layer:
    if layer not in adata.layers:
      raise DataError(f"counts layer {layer!r} not found; layers present: {list(adata.layers)}; "
                      f"set {config_field} to one of them or to '' for X")
    return adata.layers[layer]
  if adata.X is None:
    raise DataError(f"AnnData has no X; set {config_field} to the layer holding raw counts "
                    f"(layers present: {list(adata.layers)})")
  matrix = adata.X
  if isinstance(matrix, _CSCDataset):
    # Rows of a CSC file are scattered over all of it: read it whole, once.
    logging.info("X is stored as CSC on disk; reading it into memory to select rows")
    matrix = matrix.to_memory()
  return matrix


def check_counts(matrix: Any, where: str, config_field: str = "config.data.counts_layer") -> None:
  """Raises DataError unless ``matrix`` holds finite, non-negative integer counts.

  Sparse input is checked on its stored values only; dense input in row chunks.
  """
  if sp.issparse(matrix) or isinstance(matrix, _CSRDataset):
    if isinstance(matrix, _CSRDataset):
      data = matrix.group["data"]   # h5py: each slice below is one bounded read
    else:
      stored = matrix if matrix.format in ("csr", "csc", "coo", "bsr") else matrix.tocsr()
      data = np.asarray(stored.data)
    chunks: Iterable[np.ndarray] = (
        np.asarray(data[i:i + _SPARSE_CHUNK_VALUES])
        for i in range(0, max(data.shape[0], 1), _SPARSE_CHUNK_VALUES))
  else:
    matrix = np.asarray(matrix) if not hasattr(matrix, "shape") else matrix
    chunks = (np.asarray(matrix[i:i + _DENSE_CHUNK_ROWS])
              for i in range(0, matrix.shape[0], _DENSE_CHUNK_ROWS))
  vmax, non_integer, dtype_checked = 0.0, 0, False
  for values in chunks:
    if not dtype_checked:
      dtype_checked = True
      if not (np.issubdtype(values.dtype, np.number) or values.dtype == bool):
        raise DataError(f"{where} has dtype {values.dtype}, not numbers; point {config_field} at "
                        "raw counts")
    if not values.size:
      continue
    if np.issubdtype(values.dtype, np.floating):
      if not np.isfinite(values).all():
        n_bad = int(values.size - np.isfinite(values).sum())
        raise DataError(f"{where} holds {n_bad} NaN/Inf values; raw counts are finite - fix or "
                        f"drop those cells, or point {config_field} at raw counts")
      non_integer += int(np.count_nonzero(values != np.floor(values)))
    if values.min() < 0:
      raise DataError(f"{where} holds negative values (min {values.min():g}); it looks scaled or "
                      f"centred, not raw counts; point {config_field} at raw counts")
    vmax = max(vmax, float(values.max()))
  if non_integer:
    if vmax < _LOG_NORMALISED_MAX:
      raise DataError(f"{where} holds {non_integer} non-integer values with max {vmax:.3g}: it "
                      f"looks log-normalised; point {config_field} at raw counts")
    raise DataError(f"{where} holds {non_integer} non-integer values (max {vmax:.3g}); raw counts "
                    f"are integers; point {config_field} at raw counts")


def _take_rows_float32(csr: Any, rows: np.ndarray) -> sp.csr_matrix:
  """``csr[rows]`` as float32, gathered in row chunks into preallocated arrays.

  ``csr`` is a scipy CSR matrix or a backed (on-disk) one, whose chunks are
  single contiguous reads of its data and indices. Indexing then casting would
  hold the input, an integer copy and the float32 copy at once (~3x the matrix);
  this holds the output and one chunk (plus the input when it is in memory).
  """
  rows = np.asarray(rows, np.int64)
  if np.any(np.diff(rows) <= 0):
    raise ValueError("rows must be strictly increasing")
  if isinstance(csr, _CSRDataset):
    source = csr.group        # h5py datasets: each slice is one read
  else:                       # numpy arrays: each slice is a view
    source = {"data": csr.data, "indices": csr.indices, "indptr": csr.indptr}
  source_indptr = np.asarray(source["indptr"][:], np.int64)
  n_source, n_genes = csr.shape
  lengths = np.diff(source_indptr)[rows]
  indptr = np.zeros(len(rows) + 1, np.int64)
  np.cumsum(lengths, out=indptr[1:])
  nnz = int(indptr[-1])
  index_dtype = np.int32 if max(nnz, n_genes) < np.iinfo(np.int32).max else np.int64
  data = np.empty(nnz, np.float32)
  indices = np.empty(nnz, index_dtype)
  mean_row = max(1, int(source_indptr[-1]) // max(n_source, 1))
  step = max(1, _SPARSE_CHUNK_VALUES // mean_row)
  for first in range(0, n_source, step):
    stop = min(first + step, n_source)
    a, b = np.searchsorted(rows, [first, stop])
    if a == b:
      continue
    lo, hi = source_indptr[first], source_indptr[stop]
    values, genes = source["data"][lo:hi], source["indices"][lo:hi]
    if b - a < stop - first:   # some rows of the range are not wanted
      wanted = np.zeros(stop - first, bool)
      wanted[rows[a:b] - first] = True
      take = np.repeat(wanted, np.diff(source_indptr[first:stop + 1]))
      values, genes = values[take], genes[take]
    data[indptr[a]:indptr[b]] = values
    indices[indptr[a]:indptr[b]] = genes
  return sp.csr_matrix((data, indices, indptr.astype(index_dtype, copy=False)),
                       shape=(len(rows), n_genes))


def to_csr_float32(matrix: Any, rows: np.ndarray) -> sp.csr_matrix:
  """Selects ``rows`` as canonical float32 CSR without a dense copy of the whole matrix."""
  if isinstance(matrix, _CSRDataset):
    out = _take_rows_float32(matrix, rows)
  elif sp.issparse(matrix):
    out = _take_rows_float32(sp.csr_matrix(matrix), rows)
  else:
    blocks = [sp.csr_matrix(np.asarray(matrix[rows[i:i + _DENSE_CHUNK_ROWS]]))
              for i in range(0, len(rows), _DENSE_CHUNK_ROWS)]
    out = sp.vstack(blocks, format="csr") if blocks else sp.csr_matrix((0, matrix.shape[1]))
  out = out.astype(np.float32, copy=False)
  out.sum_duplicates()
  out.eliminate_zeros()
  return out


def _names(index: Any, what: str) -> np.ndarray:
  names = np.asarray(index).astype(str)
  if what == "gene" and len(np.unique(names)) != len(names):
    raise DataError("gene names (var_names) are not unique; call adata.var_names_make_unique() "
                    "before ingest so genes can be matched by name")
  return names


def derive_classes(population: np.ndarray, time_index: np.ndarray) -> tuple[str, ...]:
  """Every label in ``population``, ordered by its cells' mean time index (ties by name).

  Label ids then follow the course (root first, terminal fates last), which is
  what the fixed cardiac class list does by hand.
  """
  names, inverse = np.unique(np.asarray(population).astype(str), return_inverse=True)
  mean = (np.bincount(inverse, weights=np.asarray(time_index, np.float64), minlength=names.size)
          / np.bincount(inverse, minlength=names.size))
  return tuple(str(names[i]) for i in sorted(range(names.size), key=lambda i: (mean[i], names[i])))


def _donors(adata: ad.AnnData, data_cfg: Any) -> np.ndarray | None:
  """The donor of each cell, or None when the data has none (fine unless grouping by donor)."""
  donor_key = config_get(data_cfg, "donor_key", "") or ""
  split_cfg = config_get(data_cfg, "split", None)
  grouping = split_cfg is not None and bool(config_get(split_cfg, "group_by_donor", False))
  if donor_key and donor_key in adata.obs.columns:
    return obs_column(adata, donor_key, "donors (config.data.donor_key)")
  if grouping:
    if not donor_key:
      raise DataError("config.data.split.group_by_donor is set but config.data.donor_key is "
                      "empty; set donor_key to the obs column naming each cell's donor, or set "
                      "group_by_donor = False")
    obs_column(adata, donor_key, "donors (config.data.donor_key, needed because "
               "config.data.split.group_by_donor is set)")
  if donor_key:
    logging.info("obs has no donor column %r: no donors, splits are by cell (obs keys: %s); "
                 "set config.data.donor_key='' to silence this", donor_key,
                 list(adata.obs.columns))
  else:
    logging.info("config.data.donor_key is empty: no donors, splits are by cell")
  return None


def prepare_cells(adata: ad.AnnData, data_cfg: Any) -> Cells:
  """Validates a single-cell AnnData and turns it into `Cells`.

  Args:
    adata: cells x genes, raw counts in X or ``layers[data_cfg.counts_layer]``.
    data_cfg: ``config.data`` (counts_layer, population_key, time_key, donor_key,
      classes, drop_labels, time_order). ``classes = ()`` takes every population
      left after ``drop_labels``, so a new data set runs without listing them.

  Returns:
    Cells with the ``drop_labels`` cells removed and labels/time as int32 ids;
    ``class_names`` is the configured class list, or the derived one (see
    ``derive_classes``), which the dataset, the model and the report then use.
  """
  classes = tuple(str(c) for c in data_cfg.classes)
  drop = {str(c) for c in data_cfg.drop_labels}
  if len(set(classes)) != len(classes):
    raise DataError(f"config.data.classes {list(classes)} repeats a label; list each once "
                    "(or set it to () to take every population present)")
  if set(classes) & drop:
    raise DataError(f"labels {sorted(set(classes) & drop)} are both in config.data.classes and "
                    "config.data.drop_labels; keep them in one")
  population = obs_column(adata, data_cfg.population_key, "population labels "
                          "(config.data.population_key)")
  times = obs_column(adata, data_cfg.time_key, "time labels (config.data.time_key)")
  donors = _donors(adata, data_cfg)

  present = np.unique(population).tolist()
  keep = ~np.isin(population, list(drop))
  kept_pop = population[keep]
  kept_present = np.unique(kept_pop).tolist()
  if not kept_present:
    raise DataError(f"no cells left after dropping {sorted(drop)} (populations present: "
                    f"{present}); shorten config.data.drop_labels")
  if classes:
    unknown = sorted(set(present) - set(classes) - drop)
    if unknown:
      raise DataError(f"population labels {unknown} are neither in config.data.classes nor in "
                      "config.data.drop_labels; add them to one of the two (or set "
                      "config.data.classes = () to take every population present)")
    missing = [c for c in classes if c not in kept_present]
    if missing:
      raise DataError(f"configured populations {missing} have no cells; populations present: "
                      f"{kept_present}; fix config.data.classes or "
                      "config.data.population_key")

  time_labels = order_time_labels(times[keep], config_get(data_cfg, "time_order", ()))
  time_index = _index_of(times[keep], time_labels)
  per_time = np.bincount(time_index, minlength=len(time_labels))
  if (per_time == 0).any():
    empty = [t for t, n in zip(time_labels, per_time) if n == 0]
    raise DataError(f"time points {empty} of config.data.time_order have no cells (after "
                    f"dropping {sorted(drop)}); remove them from config.data.time_order")
  if not classes:
    classes = derive_classes(kept_pop, time_index)
    logging.info("config.data.classes is empty: using every population present, by mean time: "
                 "%s", list(classes))

  layer = config_get(data_cfg, "counts_layer", "")
  matrix = counts_matrix(adata, layer, "config.data.counts_layer")
  where = f"layers[{layer!r}]" if layer else "X"
  check_counts(matrix, where)
  rows = np.flatnonzero(keep)
  counts = to_csr_float32(matrix, rows)
  labels = _index_of(kept_pop, classes)
  logging.info("prepared %d cells x %d genes (%d dropped as %s); %d time points %s",
               counts.shape[0], counts.shape[1], int((~keep).sum()), sorted(drop),
               len(time_labels), list(time_labels))
  return Cells(counts=counts, gene_names=_names(adata.var_names, "gene"), labels=labels,
               time_index=time_index, time_labels=time_labels,
               donors=None if donors is None else donors[keep], class_names=classes,
               obs_names=_names(adata.obs_names, "obs")[keep])


def spot_coordinates(adata: ad.AnnData) -> np.ndarray:
  """``obsm["spatial"]``'s x/y as float32 (n_spots, 2); a DataError naming the fix when
  they are absent, misshapen or not finite (nothing is dropped silently)."""
  if "spatial" not in adata.obsm:
    raise DataError("spatial data has no obsm['spatial'] coordinates; store the spot x/y "
                    "positions there (n_spots x 2) as scanpy/squidpy do")
  coords = np.asarray(adata.obsm["spatial"])
  if coords.ndim != 2 or coords.shape[1] < 2 or coords.shape[0] != adata.n_obs:
    raise DataError(f"obsm['spatial'] has shape {coords.shape}; expected (n_spots, 2)")
  coords = coords[:, :2].astype(np.float32)
  bad = ~np.isfinite(coords).all(axis=1)
  if bad.any():
    raise DataError(
        f"obsm['spatial'] holds NaN/Inf coordinates for {int(bad.sum())} of {len(bad)} spots "
        f"(e.g. {np.asarray(adata.obs_names)[bad][:3].tolist()}); drop those spots first: "
        "adata = adata[np.isfinite(adata.obsm['spatial']).all(axis=1)].copy()")
  return coords


def spatial_counts(adata: ad.AnnData, data_cfg: Any) -> Any:
  """The checked raw counts of a spatial AnnData: ``layers[data.spatial.counts_layer]``
  when that field is set, else the cells' layer (``data.counts_layer``), "" meaning X."""
  spatial_cfg = config_get(data_cfg, "spatial", None)
  layer = config_get(spatial_cfg, "counts_layer", None) if spatial_cfg is not None else None
  field = "config.data.spatial.counts_layer"
  if layer is None:
    layer, field = config_get(data_cfg, "counts_layer", ""), "config.data.counts_layer"
  matrix = counts_matrix(adata, layer, field)
  check_counts(matrix, f"spatial {'layers[' + repr(layer) + ']' if layer else 'X'}", field)
  return matrix


def prepare_spots(adata: ad.AnnData, data_cfg: Any, class_names: Sequence[str]) -> Spots:
  """Validates a spatial AnnData and turns it into `Spots`.

  The label is ``obs[data_cfg.population_key]`` (the spot's dominant population);
  spots whose label is not in ``class_names`` are dropped with a log line. Counts
  come from ``layers[data_cfg.spatial.counts_layer]`` when that field exists,
  else the same layer as the cells (``data_cfg.counts_layer``), "" meaning X.
  """
  class_names = tuple(str(c) for c in class_names)
  coords = spot_coordinates(adata)
  population = obs_column(adata, data_cfg.population_key, "spot population labels "
                          "(config.data.population_key)")
  keep = np.isin(population, list(class_names))
  if not keep.any():
    raise DataError(f"no spot is labelled with one of {list(class_names)}; spot labels present: "
                    f"{np.unique(population).tolist()}; relabel obs[{data_cfg.population_key!r}]")
  if not keep.all():
    dropped, n_dropped = np.unique(population[~keep], return_counts=True)
    logging.info("dropping %d spots whose dominant population is not a class: %s",
                 int((~keep).sum()), dict(zip(dropped.tolist(), n_dropped.tolist())))
  matrix = spatial_counts(adata, data_cfg)
  rows = np.flatnonzero(keep)
  counts = to_csr_float32(matrix, rows)
  labels = _index_of(population[keep], class_names)
  logging.info("prepared %d spots x %d genes", counts.shape[0], counts.shape[1])
  return Spots(counts=counts, gene_names=_names(adata.var_names, "gene"),
               labels=labels.astype(np.int32), coords=coords[keep],
               obs_names=_names(adata.obs_names, "obs")[keep])

"""GEO GSE175634 (MatrixMarket + TSV) <-> h5ad.

GEO deposits no h5ad for GSE175634: raw counts come as a gzipped MatrixMarket
coordinate file plus cell/gene index tables and a cell metadata table. The full
matrix is 230K cells x 39K genes, so `convert_geo` streams the .mtx.gz in chunks
of entries and writes the CSR arrays straight into preallocated int32 buffers
(8 bytes per stored entry plus one chunk), never a dense matrix.

The file's orientation (genes x cells or cells x genes) is not documented; it is
decided from the header dimensions against the row counts of the index files.

Entries already grouped by cell (the usual genes x cells file written by R's
``writeMM``, which is column-major) are read once. Otherwise a first pass counts
the entries of each cell and a second pass scatters them into place, so the peak
memory stays at the CSR arrays themselves.

Cells of the matrix that have no metadata row are dropped with a warning (they
carry no population or day, so nothing downstream could use them); metadata rows
of cells absent from the matrix are ignored with a log line. No overlap at all
is an error.

Usable from the command line::

  cardiac-jax convert-geo --geo_dir=/data/GSE175634 --out=/data/gse175634.h5ad
"""
from __future__ import annotations

import gzip
import io
import os
import pathlib
import zlib
from typing import IO, Any, Iterator

from absl import logging
import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from cardiac_jax import fileio
from cardiac_jax.data.errors import DataError

ORIENTATIONS = ("auto", "genes_x_cells", "cells_x_genes")
FILE_SUFFIXES = {
    "counts_mtx": "_cell_counts.mtx.gz",
    "cell_indices": "_cell_indices.tsv.gz",
    "gene_indices": "_gene_indices_counts.tsv.gz",
    "cell_metadata": "_cell_metadata.tsv.gz",
}
_INT32_MAX = np.iinfo(np.int32).max


def _open_text(path: pathlib.Path) -> IO[str]:
  """Opens plain or gzipped text by its magic bytes, not its name."""
  with open(path, "rb") as fh:
    magic = fh.read(2)
  if magic == b"\x1f\x8b":
    return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
  return open(path, "rt", encoding="utf-8")


def _require(path: Any, what: str) -> pathlib.Path:
  path = pathlib.Path(path).expanduser()
  if not path.is_file():
    raise DataError(f"{what} file not found: {path}; download it from GEO GSE175634 "
                    "(supplementary files) and pass its path")
  return path


def _read_header(fh: IO[str], path: pathlib.Path) -> tuple[int, int, int, str]:
  """Parses the banner and size line; returns (n_rows, n_cols, nnz, field)."""
  banner = fh.readline().strip().split()
  if len(banner) != 5 or banner[0].lower() != "%%matrixmarket":
    raise DataError(f"{path} does not start with a '%%MatrixMarket matrix coordinate ...' "
                    "banner; is it the GSE175634_cell_counts.mtx.gz file?")
  obj, fmt, field, symmetry = (b.lower() for b in banner[1:])
  if obj != "matrix" or fmt != "coordinate":
    raise DataError(f"{path} is a MatrixMarket {obj} {fmt} file; only sparse 'matrix "
                    "coordinate' files are supported")
  if field not in ("integer", "real", "double"):
    raise DataError(f"{path} has field {field!r}; raw counts need an 'integer' (or integral "
                    "'real') MatrixMarket file")
  if symmetry != "general":
    raise DataError(f"{path} has symmetry {symmetry!r}; a counts matrix must be 'general'")
  line = fh.readline()
  while line.startswith("%"):
    line = fh.readline()
  parts = line.split()
  try:
    n_rows, n_cols, nnz = (int(p) for p in parts)
  except ValueError:
    raise DataError(f"{path}: malformed size line {line.strip()!r}; expected "
                    "'<rows> <cols> <entries>'") from None
  if min(n_rows, n_cols, nnz) < 0 or max(n_rows, n_cols) > _INT32_MAX:
    raise DataError(f"{path}: size line {line.strip()!r} is out of range")
  return n_rows, n_cols, nnz, field


def _read_index(path: pathlib.Path, name_column: str) -> np.ndarray:
  """Reads an index table into names ordered by their (1- or 0-based) index."""
  try:
    table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
  except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError,
          EOFError, OSError) as e:
    raise DataError(f"{path} is not a readable tab-separated index table ({e}); re-download it") \
        from e
  if table.shape[1] < 2:
    raise DataError(f"{path} has columns {list(table.columns)}; expected two tab-separated "
                    f"columns '<index>\\t{name_column}'")
  try:
    index = table.iloc[:, 0].astype(np.int64).to_numpy()
  except ValueError:
    raise DataError(f"{path}: the first column {table.columns[0]!r} is not integer indices; "
                    f"expected '<index>\\t{name_column}' with a header line") from None
  names = table.iloc[:, 1].to_numpy().astype(str)
  n = len(names)
  base = index.min() if n else 1
  if base not in (0, 1) or not np.array_equal(np.sort(index), np.arange(base, base + n)):
    raise DataError(f"{path}: indices are not a permutation of 1..{n}; the table is corrupt "
                    "or truncated; re-download it")
  ordered = np.empty(n, dtype=names.dtype)
  ordered[index - base] = names
  return ordered


def _read_metadata(path: pathlib.Path) -> pd.DataFrame:
  try:
    meta = pd.read_csv(path, sep="\t", low_memory=False)
  except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError,
          EOFError, OSError) as e:
    raise DataError(f"{path} is not a readable tab-separated metadata table ({e}); "
                    "re-download it") from e
  if "cell" in meta.columns:
    meta = meta.set_index("cell")
  elif not isinstance(meta.index, pd.RangeIndex):
    pass   # R row names: header one field shorter than the rows
  else:
    logging.warning("%s has no 'cell' column; using its first column %r as cell names",
                    path, meta.columns[0])
    meta = meta.set_index(meta.columns[0])
  meta.index = meta.index.astype(str)
  meta.index.name = None
  if meta.index.has_duplicates:
    raise DataError(f"{path}: cell names repeat in the metadata; re-download the file")
  return meta


def _entry_chunks(fh: IO[str], chunk_entries: int, path: pathlib.Path) -> Iterator[np.ndarray]:
  """Yields (k, 3) float64 blocks of (row, col, value), 1-based as in the file."""
  try:
    reader = pd.read_csv(fh, sep=r"\s+", header=None, comment="%", dtype=np.float64,
                         chunksize=chunk_entries, engine="c")
    for frame in reader:
      if frame.shape[1] != 3:
        raise DataError(f"{path}: entry lines have {frame.shape[1]} fields; a coordinate "
                        "file needs '<row> <col> <value>' per line")
      block = frame.to_numpy(dtype=np.float64)
      if np.isnan(block).any():
        raise DataError(f"{path}: an entry line is incomplete; the file is truncated or "
                        "corrupt; re-download it")
      yield block
  except (EOFError, gzip.BadGzipFile, zlib.error) as e:
    raise DataError(f"{path} ends early ({e}); the download is truncated; re-download it") from e
  except (ValueError, pd.errors.ParserError) as e:
    if isinstance(e, DataError):
      raise
    raise DataError(f"{path}: malformed entry lines ({e}); the file is corrupt; "
                    "re-download it") from e


def _check_block(block: np.ndarray, n_rows: int, n_cols: int, done: int,
                 path: pathlib.Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Validates one block; returns 0-based int32 rows, cols and int32 values."""
  rows, cols, values = block[:, 0], block[:, 1], block[:, 2]
  bad = (rows < 1) | (rows > n_rows) | (cols < 1) | (cols > n_cols) | (rows != np.floor(rows)) \
      | (cols != np.floor(cols))
  if bad.any():
    i = int(np.argmax(bad))
    raise DataError(f"{path}: entry {done + i + 1} has index ({rows[i]:g}, {cols[i]:g}) outside "
                    f"the header's {n_rows} x {n_cols}; the file is corrupt; re-download it")
  frac = values != np.floor(values)
  if frac.any():
    i = int(np.argmax(frac))
    raise DataError(f"{path}: entry {done + i + 1} has non-integer value {values[i]:g}; "
                    "convert_geo needs the raw UMI counts file (cell_counts), not a "
                    "normalised matrix")
  if values.size and (values.min() < 0 or values.max() > _INT32_MAX):
    raise DataError(f"{path}: values outside [0, 2^31) (min {values.min():g}, max "
                    f"{values.max():g}); raw counts are non-negative integers")
  return (rows.astype(np.int32) - 1, cols.astype(np.int32) - 1, values.astype(np.int32))


def _decide_orientation(orientation: str, n_rows: int, n_cols: int, n_cells: int,
                        n_genes: int, path: pathlib.Path) -> str:
  fits = {"genes_x_cells": (n_rows, n_cols) == (n_genes, n_cells),
          "cells_x_genes": (n_rows, n_cols) == (n_cells, n_genes)}
  if orientation not in ORIENTATIONS:
    raise DataError(f"orientation {orientation!r} is not one of {ORIENTATIONS}")
  if orientation != "auto":
    if not fits[orientation]:
      raise DataError(f"{path} is {n_rows} x {n_cols} but orientation={orientation!r} needs "
                      f"{'genes x cells' if orientation == 'genes_x_cells' else 'cells x genes'}"
                      f" = ({n_genes}, {n_cells}) genes/cells from the index files")
    return orientation
  if fits["genes_x_cells"] and fits["cells_x_genes"]:
    raise DataError(f"{path} is square ({n_rows} x {n_cols}) with as many cells as genes, so "
                    "the orientation cannot be told from the index files; pass "
                    "orientation='genes_x_cells' or 'cells_x_genes'")
  for name, ok in fits.items():
    if ok:
      return name
  raise DataError(f"{path} header says {n_rows} x {n_cols}, but the index files list "
                  f"{n_cells} cells and {n_genes} genes; the files do not belong together")


def _read_counts(path: pathlib.Path, n_cells: int, n_genes: int, orientation: str,
                 cell_row: np.ndarray, chunk_entries: int) -> sp.csr_matrix:
  """Streams the .mtx into a canonical int32 CSR (kept cells x genes).

  Args:
    cell_row: for each cell of the file its output row, or -1 to drop it.
  """
  n_out = int((cell_row >= 0).sum())
  with _open_text(path) as fh:
    n_rows, n_cols, nnz, _ = _read_header(fh, path)
    orientation = _decide_orientation(orientation, n_rows, n_cols, n_cells, n_genes, path)
    logging.info("%s: %d x %d, %d entries, %s", path, n_rows, n_cols, nnz, orientation)
    cell_col = 1 if orientation == "genes_x_cells" else 0
    indices = np.empty(nnz, np.int32)   # gene of each entry, CSR order when grouped
    data = np.empty(nnz, np.int32)
    per_cell = np.zeros(n_out, np.int64)
    done, stored, last_cell, grouped = 0, 0, -1, True
    for block in _entry_chunks(fh, chunk_entries, path):
      if done + len(block) > nnz:
        raise DataError(f"{path} has more entries than the {nnz} its header declares; "
                        "the file is corrupt; re-download it")
      rows, cols, values = _check_block(block, n_rows, n_cols, done, path)
      del block
      cells, genes = (cols, rows) if cell_col == 1 else (rows, cols)
      out = cell_row[cells]
      keep = out >= 0
      out, genes, values = out[keep], genes[keep], values[keep]
      per_cell += np.bincount(out, minlength=n_out)
      if grouped and len(out):
        # Grouped by cell means rows never go back: the buffer is then already CSR.
        grouped = out[0] >= last_cell and bool(np.all(out[1:] >= out[:-1]))
        last_cell = int(out[-1])
        if grouped:
          indices[stored:stored + len(out)] = genes
          data[stored:stored + len(out)] = values
          stored += len(out)
      done += len(rows)
    if done < nnz:
      raise DataError(f"{path} ends after {done} of the {nnz} entries its header declares; "
                      "the download is truncated; re-download it")
  indptr = np.zeros(n_out + 1, np.int64)
  np.cumsum(per_cell, out=indptr[1:])
  total = int(indptr[-1])
  if grouped:
    logging.info("entries are grouped by cell: one pass")
  else:
    logging.info("entries are not grouped by cell: second pass to scatter them")
    fill = indptr[:-1].copy()
    with _open_text(path) as fh:
      _read_header(fh, path)
      for block in _entry_chunks(fh, chunk_entries, path):
        rows, cols, values = _check_block(block, n_rows, n_cols, 0, path)
        del block
        cells, genes = (cols, rows) if cell_col == 1 else (rows, cols)
        out = cell_row[cells]
        keep = out >= 0
        out, genes, values = out[keep], genes[keep], values[keep]
        order = np.argsort(out, kind="stable")
        out = out[order]
        # Rank of each entry among the chunk's entries of the same cell.
        starts = np.flatnonzero(np.r_[True, out[1:] != out[:-1]])
        rank = np.arange(len(out)) - np.repeat(starts, np.diff(np.r_[starts, len(out)]))
        pos = fill[out] + rank
        indices[pos] = genes[order]
        data[pos] = values[order]
        fill += np.bincount(out, minlength=n_out)
  indices.resize(total, refcheck=False)   # shrinks in place when cells were dropped
  data.resize(total, refcheck=False)
  matrix = sp.csr_matrix((data, indices, indptr), shape=(n_out, n_genes))
  if not matrix.has_canonical_format:
    matrix.sum_duplicates()   # sorts each row's genes in place; merges repeated entries
  return matrix


def convert_geo(counts_mtx: str | os.PathLike, cell_indices: str | os.PathLike,
                gene_indices: str | os.PathLike, cell_metadata: str | os.PathLike,
                out_h5ad: str | os.PathLike, *, orientation: str = "auto",
                chunk_entries: int = 5_000_000) -> pathlib.Path:
  """Converts the GSE175634 supplementary files into one cells x genes h5ad.

  Args:
    counts_mtx: ``GSE175634_cell_counts.mtx.gz`` (MatrixMarket coordinate, integer).
    cell_indices: ``GSE175634_cell_indices.tsv.gz`` (``cell_index``, ``cell_name``).
    gene_indices: ``GSE175634_gene_indices_counts.tsv.gz`` (``gene_index``, ``gene_name``).
    cell_metadata: ``GSE175634_cell_metadata.tsv.gz`` (``cell``, ``diffday``, ``type``, ...).
    out_h5ad: where to write; written to a temporary file in the same directory,
      then renamed, so a crash never leaves a half-written h5ad.
    orientation: "auto" (decide from the index files), "genes_x_cells" or
      "cells_x_genes".
    chunk_entries: entries parsed per chunk (memory ~ 100 bytes per entry of a chunk).

  Returns:
    The path of the h5ad: raw int32 counts (CSR) in X, the metadata columns in obs.
  """
  counts_mtx = _require(counts_mtx, "counts (.mtx.gz)")
  cell_indices = _require(cell_indices, "cell index (cell_indices.tsv.gz)")
  gene_indices = _require(gene_indices, "gene index (gene_indices_counts.tsv.gz)")
  cell_metadata = _require(cell_metadata, "cell metadata (cell_metadata.tsv.gz)")
  if chunk_entries < 1:
    raise DataError(f"chunk_entries must be positive, got {chunk_entries}")
  out_h5ad = pathlib.Path(out_h5ad).expanduser()
  cells = _read_index(cell_indices, "cell_name")
  genes = _read_index(gene_indices, "gene_name")
  if len(np.unique(cells)) != len(cells):
    raise DataError(f"{cell_indices}: cell names repeat; re-download the file")
  meta = _read_metadata(cell_metadata)

  in_meta = pd.Index(cells).isin(meta.index)
  if not in_meta.any():
    raise DataError(f"no cell of {cell_indices} appears in {cell_metadata} (e.g. {cells[:3]} vs "
                    f"{list(meta.index[:3])}); the files do not belong together")
  if not in_meta.all():
    logging.warning("dropping %d of %d matrix cells that have no metadata row (e.g. %s)",
                    int((~in_meta).sum()), len(cells), list(cells[~in_meta][:3]))
  n_extra = int((~meta.index.isin(cells)).sum())
  if n_extra:
    logging.info("ignoring %d metadata rows for cells absent from the matrix", n_extra)
  cell_row = np.full(len(cells), -1, np.int64)
  cell_row[in_meta] = np.arange(int(in_meta.sum()))

  matrix = _read_counts(counts_mtx, len(cells), len(genes), orientation, cell_row,
                        chunk_entries)
  kept = cells[in_meta]
  obs = meta.loc[kept]
  obs.index = pd.Index(kept)
  var = pd.DataFrame(index=pd.Index(genes))
  adata = ad.AnnData(X=matrix, obs=obs, var=var)
  if adata.var_names.has_duplicates:
    logging.warning("gene names repeat; making them unique with AnnData.var_names_make_unique")
    adata.var["gene_name"] = genes
    adata.var_names_make_unique()
  with fileio.atomic_path(out_h5ad) as tmp:
    adata.write_h5ad(tmp)
  logging.info("wrote %s: %d cells x %d genes, %d entries", out_h5ad, adata.n_obs,
               adata.n_vars, matrix.nnz)
  return out_h5ad


def _write_lines(fh: IO[bytes], columns: list[np.ndarray], sep: str) -> None:
  """Writes rows of integer or string columns with one C-level %-format per block.

  ``(fmt * n) % values`` formats a whole block in one call: no Python loop per
  entry, and 3-7x faster than joining numpy string arrays or pandas.to_csv.
  """
  n = len(columns[0])
  if not n:
    return
  integer = [np.issubdtype(np.asarray(c).dtype, np.integer) for c in columns]
  fmt = sep.join("%d" if is_int else "%s" for is_int in integer) + "\n"
  stacked = np.column_stack([np.asarray(c, np.int64 if is_int else object)
                             for c, is_int in zip(columns, integer)])
  fh.write(((fmt * n) % tuple(stacked.ravel().tolist())).encode())


def write_geo(adata: ad.AnnData, out_dir: str | os.PathLike, prefix: str = "GSE175634",
              orientation: str = "genes_x_cells", *,
              chunk_entries: int = 1_000_000) -> dict[str, pathlib.Path]:
  """Writes an AnnData as the four GEO supplementary files of GSE175634.

  Used to produce GEO-format inputs from the simulator for tests and benchmarks.
  Entries are column-major as R's ``writeMM`` writes them, so a genes x cells file
  is grouped by cell and a cells x genes file is not.

  Returns:
    Paths keyed like `convert_geo`'s arguments (counts_mtx, cell_indices,
    gene_indices, cell_metadata).
  """
  if orientation not in ORIENTATIONS[1:]:
    raise DataError(f"orientation {orientation!r} must be 'genes_x_cells' or 'cells_x_genes'")
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  paths = {key: out_dir / f"{prefix}{suffix}" for key, suffix in FILE_SUFFIXES.items()}
  x = adata.X
  if x is None:
    raise DataError("AnnData has no X to write; put raw counts in X")
  # Column-major: group entries by the file's column (cells for genes x cells).
  major = sp.csr_matrix(x) if orientation == "genes_x_cells" else sp.csc_matrix(x)
  major.sum_duplicates()
  values = major.data
  if values.size and (values != np.round(values)).any():
    raise DataError("X holds non-integer values; GEO counts are raw integers")
  n_cells, n_genes = adata.shape
  shape = (n_genes, n_cells) if orientation == "genes_x_cells" else (n_cells, n_genes)
  with gzip.open(paths["counts_mtx"], "wb", compresslevel=3) as fh:
    fh.write(b"%%MatrixMarket matrix coordinate integer general\n%\n")
    fh.write(f"{shape[0]} {shape[1]} {major.nnz}\n".encode())
    for start in range(0, major.nnz, chunk_entries):
      stop = min(start + chunk_entries, major.nnz)
      outer = np.searchsorted(major.indptr, np.arange(start, stop), side="right") - 1
      inner = major.indices[start:stop]
      vals = major.data[start:stop].astype(np.int64)
      _write_lines(fh, [inner + 1, outer + 1, vals], " ")   # row = inner, col = outer major
  for key, header, names in (("cell_indices", "cell_index\tcell_name", adata.obs_names),
                             ("gene_indices", "gene_index\tgene_name", adata.var_names)):
    names = np.asarray(names).astype(str)
    with gzip.open(paths[key], "wb", compresslevel=3) as fh:
      fh.write((header + "\n").encode())
      _write_lines(fh, [np.arange(1, len(names) + 1), names], "\t")
  adata.obs.to_csv(paths["cell_metadata"], sep="\t", index_label="cell",
                   compression={"method": "gzip", "compresslevel": 3})
  logging.info("wrote GEO files for %d cells x %d genes (%s) under %s", n_cells, n_genes,
               orientation, out_dir)
  return paths

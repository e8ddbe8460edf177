"""Where a build's cells and spots come from, and the prologue every cell builder shares.

``embedded_cells`` is the one place that loads, prepares and splits the cells and
fits the preprocessing on TRAINING cells only, so no builder can walk before
splitting or let held-out cells shape the embedding.
"""
from __future__ import annotations

from typing import Any, Callable

from absl import logging
import numpy as np

from cardiac_jax.data import stages as stages_lib
from cardiac_jax.data import splits
from cardiac_jax.data.errors import DataError


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
    s = data_cfg.simulator
    if data_cfg.get("task") == "clonal":   # a barcoded time course of the same lineage
      from cardiac_jax.data import clonal_simulator  # pylint: disable=g-import-not-at-top
      return clonal_simulator.simulate_clones(n_cells=s.n_cells, n_genes=s.n_genes,
                                              n_donors=s.n_donors, seed=s.seed)
    from cardiac_jax.data import simulator  # pylint: disable=g-import-not-at-top
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


def prepared_cells(data_cfg: Any, stage: stages_lib.Stages, read: Callable[[Any], Any] | None = None
                   ) -> tuple[Any, Any]:
  """Loads and prepares the configured cells (``ingest.prepare_cells``).

  ``read(adata)``, when given, reads what else a builder needs from the AnnData
  (e.g. the clone of each cell) while it is open; its value is returned beside the
  cells (None without it).
  """
  from cardiac_jax.data import ingest  # pylint: disable=g-import-not-at-top
  with stage("simulate" if data_cfg.source == "simulator" else "load"):
    # X stays on disk: prepare reads it once, in chunks, into its float32 copy, so the
    # file's integer matrix is never held as well (half the peak at full size).
    adata = load_cells(data_cfg, backed=True)
  with stage("prepare"):
    try:
      cells = ingest.prepare_cells(adata, data_cfg)
      extra = None if read is None else read(adata)
    finally:
      if adata.isbacked:
        adata.file.close()
    del adata
  logging.info("build_dataset: %d cells x %d genes, %d days, classes %s", cells.counts.shape[0],
               cells.counts.shape[1], len(cells.time_labels), tuple(cells.class_names))
  return cells, extra


def embed_cells(cells: Any, fit_rows: np.ndarray, data_cfg: Any,
                stage: stages_lib.Stages) -> tuple[Any, np.ndarray]:
  """The preprocessor fitted on ``fit_rows`` only (training data), and every cell's PCs."""
  from cardiac_jax.data import preprocess  # pylint: disable=g-import-not-at-top
  with stage("preprocess_fit"):
    pp = preprocess.fit_preprocessor(cells.counts, cells.gene_names, fit_rows,
                                     data_cfg.preprocess)
  with stage("transform"):
    pcs = np.asarray(pp.transform(cells.counts, cells.gene_names), dtype=np.float32)
  return pp, pcs


def split_of(cells: Any, split_cfg: Any) -> np.ndarray:
  """Each cell's split (0 train, 1 val, 2 test) under ``config.data.split``."""
  groups = None
  if split_cfg.group_by_donor:
    if cells.donors is None:
      raise DataError("config.data.split.group_by_donor is set but the cells have no donor "
                      "column; set config.data.donor_key or turn group_by_donor off.")
    groups = cells.donors
  return splits.split_cells(cells.labels, tuple(split_cfg.fractions), split_cfg.seed, groups)


def embedded_cells(data_cfg: Any, stage: stages_lib.Stages | None = None
                   ) -> tuple[Any, np.ndarray, Any, np.ndarray]:
  """Loads, prepares and splits the cells, then embeds them with a TRAIN-fitted preprocessor.

  The one prologue of the builders whose unit is the cell (``snapshot``, ``fate``),
  so they split before any walk and fit the preprocessing on training cells.

  Returns:
    (cells, cell_split (n,) int8, the fitted Preprocessor, pcs (n, n_pcs) float32).
  """
  stage = stage or stages_lib.Stages()
  split_cfg = data_cfg.split
  cells, _ = prepared_cells(data_cfg, stage)
  with stage("split"):
    cell_split = split_of(cells, split_cfg)
  pp, pcs = embed_cells(cells, np.flatnonzero(cell_split == 0), data_cfg, stage)
  return cells, cell_split, pp, pcs

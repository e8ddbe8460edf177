"""An external spatial test bed: Visium-like sections whose regions come from SimSpace.

  pip install -e ".[simspace]"
  python -m cardiac_jax.studies.simspace_testbed --out=/work/data/simspace.h5ad --seed=0 \
      --measure   # also <out>.json: per-spot vs neighbourhood logistic regressions

Why: the project's own section simulator shares its authors' assumptions with the
region model, so a good score on it proves little. SimSpace (Zhao et al. 2025,
bioRxiv 10.1101/2025.07.18.665587; MIT; pinned in the ``simspace`` extra) lays
cells out on a lattice with two Markov random fields: one draws the niches
(spatial domains), the other the cell types, with niche-specific affinities
between types, so a niche's composition and texture emerge from the field, not
from a table we wrote.

What comes from SimSpace (its reference-free mode, ``simspace.util.sim_from_params``):
cell positions (lattice sites kept with a retention probability, jittered), each
cell's niche and cell type; the gene table (``simspace.omics.simOmicsMeta``:
every gene's mean in every type is Gamma(bg_param); a marker gene's mean in its
own type is Gamma(marker_param)) and each cell's means
(``simspace.omics.buildOmicsMean``). Ours: the Poisson draw of each cell's counts
from those means (the distribution of ``simspace.omics.simOmics``, vectorised,
on our random stream: ``simOmics`` loops over cells x genes in Python, ~18 us
each, ~7 min a section for its captured cells alone), and the Visium-like
spots. SimSpace's ligand-receptor effect (``create_omics(spatial=True)``, a
per-gene Python loop over all cells) is off: ``lr_ratio = 0``.

The design (``Design``, chosen once from SimSpace's guide to designing
reference-free parameters, REFERENCE_FREE_PARAMETER_README.md, not tuned to any
model): ``n_niches`` = 5 niches with off-diagonal niche affinity -0.45
(contiguous domains); ``n_niches + 2`` = 7 cell types; niche m favours the
overlapping module {m, m+1, m+2} (affinity +0.5 inside, -0.4 outside, 1 on the
diagonal), so neighbouring niche ids share two of their three main types and a
spot of a few cells is often ambiguous between them; uniform retention 0.85 (~5
cells a spot, as in heart Visium);
SimSpace's defaults otherwise (phi 4.7, the middle of ``generate_random_parameters``'
4.4-5; cell-type neighbourhood: Manhattan distance 3; 4 cell-type and 6 niche
Gibbs sweeps; jitter 0.2 lattice units). The expression settings are
``create_omics``' defaults (bg_ratio 0.2, bg_param (1, 1), marker_param (5, 2)).

Units and spots: one lattice unit is ``um_per_unit`` = 20 um (a site is one
cell's footprint, about a cardiomyocyte's width). Spots are 55 um discs on a hex
grid of 100 um pitch (Visium: odd rows shifted by half a pitch; ``array_col`` =
2 x column + row parity), placed so that every disc lies inside the section. A
spot sums the counts of the cells whose (jittered) centre lies in its disc (~5
cells); cells between spots are never captured (as on Visium) and get no counts.
A spot's region is the majority niche of its cells; a tie goes to the tied niche
with the cell nearest the spot centre. Spots holding no cell (or no count) are
dropped. Each section is its own SimSpace run (seed ``1000 * seed + i``): its
own niche layout and cells; the design and the gene table are shared by the
sections of one bed, as sections of one tissue share its biology.

Output (``write_sections``): one h5ad; X raw counts (int32 CSR); obs ``section``,
``region`` (``niche_<k>``), ``n_cells``, ``array_row``, ``array_col``; obsm
``spatial`` (um, per section: the sections overlap in x/y) and ``cell_types``
(cells of each type per spot); ``uns["simspace_testbed"]`` the settings (JSON).

Why not SimSpace's random parameters (``simspace.util.generate_random_parameters``,
what its CLI draws without ``--params``): tried at 5 niches on a 200 x 200 lattice,
one niche covered 73 % of the sites and two others 1-1.5 %, as speckle rather than
domains; no region task. With the design above each niche covers 14-28 % of a section
in contiguous patches (bed 0: 732 patches of same-region hex neighbours, median 10
spots; the average spot lies in a patch of 40 spots, about 7 spots across).

What the bed measures (``region_headroom``, ``--measure``): a logistic regression
on a spot's 50 PCs vs the PCs plus the means of its ring-1/2/3 neighbours, fitted
on 3 sections, scored on the other 2 (12,190 spots a bed, ~5 cells and ~20,000
counts a spot). Beds 0 and 1: per spot 0.714 / 0.729 accuracy (macro-F1 0.712 /
0.724), with the rings 0.864 / 0.864 (0.863 / 0.863); over all 10 two-section
test sets of either bed the gain is +0.12 to +0.15. A logistic regression on the
spot's true cell-type proportions (``obsm["cell_types"]``) reaches 0.719 / 0.722:
the per-spot model is at the composition ceiling, the rest is the spots'
ambiguity, which only neighbours resolve; 71-72 % of hex edges join spots of one
region, so boundary spots cap the neighbourhood model too.

SimSpace 0.4.2 reports ``simspace.__version__ == "0.4.1"``; the version recorded
is the installed distribution's (``importlib.metadata``). Importing SimSpace runs
``warnings.filterwarnings('ignore')``; ``_simspace`` undoes that. SimSpace seeds
NumPy's global random state (``np.random.seed``) in every run.
"""
from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import json
import math
import os
import pathlib
import time
import warnings
from typing import Any, Sequence

from absl import logging
import numpy as np
import pandas as pd
import scipy.sparse as sp

from cardiac_jax.data.errors import DataError

SIMSPACE_VERSION = "0.4.2"
SECTION_KEY = "section"
REGION_KEY = "region"
PITCH_UM = 100.0            # Visium centre-to-centre distance
SPOT_DIAMETER_UM = 55.0     # Visium spot diameter
_INSTALL = 'pip install -e ".[simspace]" (simspace==0.4.2)'
# Hex neighbours in Visium array coordinates (array_col = 2 * column + row parity).
_HEX_OFFSETS = ((0, 2), (0, -2), (1, 1), (1, -1), (-1, 1), (-1, -1))


@dataclasses.dataclass(frozen=True)
class Design:
  """SimSpace's reference-free settings of a bed (see the module docstring for why)."""
  n_niches: int = 5
  module_size: int = 3           # cell types each niche favours; n_types = n_niches + size - 1
  within_affinity: float = 0.5   # between two types of a niche's module
  between_affinity: float = -0.4
  niche_affinity: float = -0.45  # between two niches (1 on the diagonal)
  retention: float = 0.85        # probability a lattice site keeps its cell
  phi: float = 4.7
  neighbor_distance: int = 3     # Manhattan radius of the cell-type field
  cell_sweeps: int = 4
  niche_sweeps: int = 6
  jitter: float = 0.2            # SD of the cells' displacement, lattice units
  bg_ratio: float = 0.2
  bg_param: tuple[float, float] = (1.0, 1.0)
  marker_param: tuple[float, float] = (5.0, 2.0)

  @property
  def n_types(self) -> int:
    return self.n_niches + self.module_size - 1

  def modules(self) -> list[tuple[int, ...]]:
    """The cell types niche m favours: m .. m + module_size - 1 (neighbours overlap)."""
    return [tuple(range(m, m + self.module_size)) for m in range(self.n_niches)]

  def parameters(self) -> dict[str, Any]:
    """SimSpace's parameter dict (``simspace.util.save_params`` format, unwrapped)."""
    def upper(a: np.ndarray) -> np.ndarray:   # SimSpace's order: the upper triangle, by row
      return a[np.triu_indices(a.shape[0], 1)]

    niche = np.full((self.n_niches, self.n_niches), self.niche_affinity)
    np.fill_diagonal(niche, 1.0)
    thetas = []
    for module in self.modules():
      theta = np.full((self.n_types, self.n_types), self.between_affinity)
      theta[np.ix_(module, module)] = self.within_affinity
      np.fill_diagonal(theta, 1.0)
      thetas.append(upper(theta))
    return {"n_group": self.n_niches, "n_state": self.n_types, "niche_theta": upper(niche),
            "theta_list": thetas, "density_replicates": np.full(self.n_types, self.retention),
            "phi_replicates": float(self.phi)}


def simspace_available() -> bool:
  """Whether SimSpace is importable here (without importing it: its import is slow)."""
  return importlib.util.find_spec("simspace") is not None


def _simspace() -> Any:
  """Imports SimSpace, undoing the global ``warnings.filterwarnings('ignore')`` it runs."""
  if not simspace_available():
    raise DataError(f"SimSpace is not installed; {_INSTALL} to build the SimSpace test bed")
  version = importlib.metadata.version("simspace")
  if version != SIMSPACE_VERSION:
    logging.warning("simspace %s found; the bed is documented for %s", version,
                    SIMSPACE_VERSION)
  with warnings.catch_warnings():
    import simspace   # pylint: disable=g-import-not-at-top
    import simspace.omics  # pylint: disable=g-import-not-at-top,unused-import
    import simspace.spatial  # pylint: disable=g-import-not-at-top,unused-import
    import simspace.util  # pylint: disable=g-import-not-at-top,unused-import
  return simspace


def section_side_um(n_spots: int, pitch_um: float = PITCH_UM,
                    diameter_um: float = SPOT_DIAMETER_UM) -> float:
  """Side of a square section whose hex grid (``hex_grid``) holds about ``n_spots`` spots.

  With u = (side - diameter) / pitch there are about u + 1/2 spots per row and
  u / (sqrt(3) / 2) + 1 rows; solved for u.
  """
  if n_spots < 4:
    raise DataError(f"n_spots={n_spots}: a section needs at least 4 spots; raise n_spots")
  a, b, c = 2 / math.sqrt(3), 1 + 1 / math.sqrt(3), 0.5 - n_spots
  u = (-b + math.sqrt(b * b - 4 * a * c)) / (2 * a)
  return diameter_um + pitch_um * u


def simulate_cells(design: Design, side_units: int, seed: int) -> pd.DataFrame:
  """One SimSpace run: cells with x, y (lattice units), niche and cell type (ints)."""
  simspace = _simspace()
  sim = simspace.util.sim_from_params(
      design.parameters(), shape=(side_units, side_units), num_iteration=design.cell_sweeps,
      n_iter=design.niche_sweeps,
      custom_neighbor=simspace.spatial.generate_offsets(design.neighbor_distance, "manhattan"),
      step=design.jitter, seed=int(seed))
  meta = sim.meta   # SimSpace: "col" is the horizontal coordinate, "row" the vertical one
  return pd.DataFrame({"x": meta["col"].to_numpy(np.float64),
                       "y": meta["row"].to_numpy(np.float64),
                       "niche": meta["niche"].to_numpy(np.int64),
                       "cell_type": meta["state"].to_numpy().astype(np.int64)})


def gene_table(design: Design, n_genes: int, seed: int) -> pd.DataFrame:
  """SimSpace's gene table (means per gene and type), shared by a bed's sections."""
  simspace = _simspace()
  types = pd.DataFrame({"state": np.arange(design.n_types)})
  return simspace.omics.simOmicsMeta(
      types, n_genes=int(n_genes), bg_ratio=design.bg_ratio, bg_param=tuple(design.bg_param),
      marker_param=tuple(design.marker_param), lr_ratio=0.0, seed=int(seed))


def cell_counts(genes: pd.DataFrame, cell_types: np.ndarray, rng: np.random.Generator, *,
                chunk: int = 4_096) -> sp.csr_matrix:
  """Poisson counts of cells from SimSpace's per-type means (int32 CSR, cells x genes)."""
  simspace = _simspace()
  cell_types = np.asarray(cell_types, np.int64)
  blocks = []
  for start in range(0, len(cell_types), chunk):
    types = pd.DataFrame({"state": cell_types[start:start + chunk]})
    mean = simspace.omics.buildOmicsMean(genes, types).to_numpy(np.float64)
    blocks.append(sp.csr_matrix(rng.poisson(mean).astype(np.int32)))
  if not blocks:
    return sp.csr_matrix((0, len(genes)), dtype=np.int32)
  return sp.vstack(blocks, format="csr")


@dataclasses.dataclass(frozen=True)
class HexGrid:
  """Spot centres (um) and their Visium array coordinates."""
  xy: np.ndarray          # (n, 2) float64
  array_row: np.ndarray   # (n,) int32
  array_col: np.ndarray   # (n,) int32


def hex_grid(width_um: float, height_um: float, *, pitch_um: float = PITCH_UM,
             diameter_um: float = SPOT_DIAMETER_UM) -> HexGrid:
  """A Visium-like hex grid whose discs all lie inside [0, width] x [0, height]."""
  radius = diameter_um / 2
  row_step = pitch_um * math.sqrt(3) / 2
  n_rows = int(math.floor((height_um - 2 * radius) / row_step)) + 1
  rows, cols, xy = [], [], []
  for r in range(max(n_rows, 0)):
    shift = 0.5 * pitch_um * (r % 2)
    n_cols = int(math.floor((width_um - 2 * radius - shift) / pitch_um)) + 1
    for c in range(max(n_cols, 0)):
      rows.append(r)
      cols.append(2 * c + r % 2)
      xy.append((radius + shift + c * pitch_um, radius + r * row_step))
  if not xy:
    raise DataError(f"a {width_um:.0f} x {height_um:.0f} um section holds no {diameter_um} um "
                    "spot; make the section larger")
  return HexGrid(np.asarray(xy, np.float64), np.asarray(rows, np.int32),
                 np.asarray(cols, np.int32))


def assign_cells(cell_xy: np.ndarray, spot_xy: np.ndarray,
                 diameter_um: float = SPOT_DIAMETER_UM) -> tuple[np.ndarray, np.ndarray]:
  """The spot whose disc holds each cell (-1: none) and its distance to that centre."""
  from scipy.spatial import cKDTree  # pylint: disable=g-import-not-at-top
  cell_xy = np.asarray(cell_xy, np.float64).reshape(-1, 2)
  if not len(cell_xy):
    return np.zeros(0, np.int64), np.zeros(0)
  dist, spot = cKDTree(np.asarray(spot_xy, np.float64)).query(cell_xy, k=1)
  inside = dist <= diameter_um / 2
  return np.where(inside, spot, -1).astype(np.int64), dist


@dataclasses.dataclass(frozen=True)
class Spots:
  """Cells aggregated into spots (every spot of the grid, empty ones included)."""
  counts: sp.csr_matrix     # (n_spots, g) int32: the summed counts of its cells
  region: np.ndarray        # (n_spots,) int64 niche; -1 for a spot without cells
  n_cells: np.ndarray       # (n_spots,) int32
  cell_spot: np.ndarray     # (n_cells,) int64 spot of each cell, -1 outside every disc


def cells_to_spots(cell_xy: np.ndarray, counts: Any, cell_niche: np.ndarray,
                   spot_xy: np.ndarray, *, n_niches: int,
                   diameter_um: float = SPOT_DIAMETER_UM) -> Spots:
  """Sums the counts of the cells inside each spot; region = their majority niche.

  A tie goes to the tied niche with the cell nearest the spot centre (the
  middle of the spot decides; deterministic). Cells outside every disc are not
  counted.
  """
  cell_niche = np.asarray(cell_niche, np.int64)
  cell_xy = np.asarray(cell_xy, np.float64).reshape(-1, 2)
  n_spots = len(spot_xy)
  if len(cell_niche) != len(cell_xy) or counts.shape[0] != len(cell_xy):
    raise DataError(f"{len(cell_xy)} cell positions, {len(cell_niche)} niches and "
                    f"{counts.shape[0]} count rows; pass one row per cell")
  if len(cell_niche) and (cell_niche.min() < 0 or cell_niche.max() >= n_niches):
    raise DataError(f"niches must lie in [0, {n_niches}); pass the right n_niches")
  spot, dist = assign_cells(cell_xy, spot_xy, diameter_um)
  inside = np.flatnonzero(spot >= 0)
  s, k, d = spot[inside], cell_niche[inside], dist[inside]
  member = sp.csr_matrix((np.ones(len(inside), np.int32), (s, inside)),
                         shape=(n_spots, len(cell_xy)))
  summed = sp.csr_matrix(member @ sp.csr_matrix(counts).astype(np.int64))
  if summed.nnz and summed.data.max() > np.iinfo(np.int32).max:
    raise DataError("a spot count overflows int32; lower the cells' counts")
  tally = np.zeros((n_spots, n_niches), np.int64)
  np.add.at(tally, (s, k), 1)
  nearest = np.full((n_spots, n_niches), np.inf)
  np.minimum.at(nearest, (s, k), d)
  tied = tally == tally.max(axis=1, keepdims=True)
  region = np.argmin(np.where(tied, nearest, np.inf), axis=1)
  n_cells = tally.sum(axis=1)
  region = np.where(n_cells > 0, region, -1)
  return Spots(summed.astype(np.int32), region.astype(np.int64), n_cells.astype(np.int32),
               spot)


def simulate_section(design: Design, genes: pd.DataFrame, *, n_spots: int, seed: int,
                     um_per_unit: float = 20.0, name: str = "section_0") -> Any:
  """One SimSpace section turned into Visium-like spots (AnnData, see the module doc)."""
  import anndata as ad   # pylint: disable=g-import-not-at-top
  started = time.perf_counter()
  side_um = section_side_um(n_spots)
  side_units = int(math.ceil(side_um / um_per_unit)) + 1
  cells = simulate_cells(design, side_units, seed)
  simulated = time.perf_counter() - started
  grid = hex_grid((side_units - 1) * um_per_unit, (side_units - 1) * um_per_unit)
  cell_xy = cells[["x", "y"]].to_numpy() * um_per_unit
  spot, _ = assign_cells(cell_xy, grid.xy)
  captured = np.flatnonzero(spot >= 0)
  rng = np.random.default_rng([int(seed), 20_250_718])
  cell_type = cells["cell_type"].to_numpy()[captured]
  counts = cell_counts(genes, cell_type, rng)
  agg = cells_to_spots(cell_xy[captured], counts, cells["niche"].to_numpy()[captured],
                       grid.xy, n_niches=design.n_niches)
  types = np.zeros((len(grid.xy), design.n_types), np.int32)
  np.add.at(types, (spot[captured], cell_type), 1)
  keep = np.flatnonzero((agg.n_cells > 0) & (np.asarray(agg.counts.sum(axis=1)).ravel() > 0))
  regions = [f"niche_{k}" for k in range(design.n_niches)]
  obs = pd.DataFrame({
      SECTION_KEY: name,
      REGION_KEY: pd.Categorical.from_codes(agg.region[keep], categories=regions),
      "n_cells": agg.n_cells[keep],
      "array_row": grid.array_row[keep],
      "array_col": grid.array_col[keep],
  }, index=pd.Index([f"{name}_r{r}c{c}" for r, c in
                     zip(grid.array_row[keep], grid.array_col[keep])]))
  adata = ad.AnnData(X=agg.counts[keep], obs=obs,
                     var=pd.DataFrame(index=[f"Gene_{g}" for g in genes["GeneID"]]))
  adata.obsm["spatial"] = grid.xy[keep]
  adata.obsm["cell_types"] = types[keep]
  logging.info("%s (seed %d): %d cells, %d captured in %d spots (%.1f cells/spot), "
               "regions %s; SimSpace %.0f s, all %.0f s", name, seed, len(cells),
               len(captured), len(keep), agg.n_cells[keep].mean(),
               {k: int(v) for k, v in obs[REGION_KEY].value_counts().sort_index().items()},
               simulated, time.perf_counter() - started)
  return adata


def simulate_sections(*, n_sections: int = 5, seed: int = 0, n_spots: int = 2_500,
                      n_genes: int = 2_000, design: Design = Design(),
                      um_per_unit: float = 20.0) -> Any:
  """Several sections (section i: SimSpace seed 1000 * seed + i) in one AnnData."""
  import anndata as ad   # pylint: disable=g-import-not-at-top
  if n_sections < 1 or n_genes < 2 or um_per_unit <= 0:
    raise DataError(f"n_sections={n_sections}, n_genes={n_genes}, um_per_unit={um_per_unit}: "
                    "need n_sections >= 1, n_genes >= 2 and um_per_unit > 0")
  genes = gene_table(design, n_genes, seed)
  parts = [simulate_section(design, genes, n_spots=n_spots, seed=1000 * seed + i,
                            um_per_unit=um_per_unit, name=f"section_{i}")
           for i in range(n_sections)]
  adata = ad.concat(parts, join="outer", merge="same")
  adata.obs[SECTION_KEY] = pd.Categorical(adata.obs[SECTION_KEY].astype(str),
                                          categories=[f"section_{i}" for i in range(n_sections)])
  adata.obs[REGION_KEY] = pd.Categorical(adata.obs[REGION_KEY].astype(str),
                                         categories=[f"niche_{k}" for k in
                                                     range(design.n_niches)])
  adata.X = sp.csr_matrix(adata.X, dtype=np.int32)
  settings = dict(simulator="simspace", version=importlib.metadata.version("simspace"),
                  seed=seed, n_sections=n_sections, n_spots_requested=n_spots,
                  n_genes=n_genes, um_per_unit=um_per_unit, pitch_um=PITCH_UM,
                  spot_diameter_um=SPOT_DIAMETER_UM, region_rule="majority niche of the "
                  "spot's cells; ties: the tied niche with the cell nearest the centre",
                  section_seeds=[1000 * seed + i for i in range(n_sections)],
                  modules=[list(m) for m in design.modules()],
                  design=dataclasses.asdict(design), expression="SimSpace simOmicsMeta + "
                  "buildOmicsMean means, Poisson counts drawn here; lr_ratio 0")
  adata.uns["simspace_testbed"] = json.dumps(settings)
  return adata


def write_sections(out_h5ad: str | os.PathLike, *, n_sections: int = 5, seed: int = 0,
                   n_spots: int = 2_500, n_genes: int = 2_000, design: Design = Design(),
                   um_per_unit: float = 20.0) -> pathlib.Path:
  """Simulates a bed (``simulate_sections``) and writes it atomically as one h5ad."""
  from cardiac_jax import fileio   # pylint: disable=g-import-not-at-top
  adata = simulate_sections(n_sections=n_sections, seed=seed, n_spots=n_spots,
                            n_genes=n_genes, design=design, um_per_unit=um_per_unit)
  out = pathlib.Path(out_h5ad)
  with fileio.atomic_path(out) as tmp:
    adata.write_h5ad(tmp)
  logging.info("wrote %s: %d spots x %d genes in %d sections", out, adata.n_obs,
               adata.n_vars, n_sections)
  return out


# ---------------------------------------------------------------- measurement


def hex_adjacency(section: Sequence[Any], array_row: np.ndarray,
                  array_col: np.ndarray) -> sp.csr_matrix:
  """Spot graph: the (up to) 6 hex neighbours of each spot, within its own section."""
  _, sec = np.unique(np.asarray(section).astype(str), return_inverse=True)
  row = np.asarray(array_row, np.int64) + 2
  col = np.asarray(array_col, np.int64) + 2
  n_r, n_c = int(row.max()) + 3, int(col.max()) + 3
  key = (sec.astype(np.int64) * n_r + row) * n_c + col
  order = np.argsort(key, kind="stable")
  if len(np.unique(key)) != len(key):
    raise DataError("two spots share a section and array position; make them unique")
  src, dst = [], []
  for dr, dc in _HEX_OFFSETS:
    nkey = (sec.astype(np.int64) * n_r + row + dr) * n_c + col + dc
    pos = np.minimum(np.searchsorted(key, nkey, sorter=order), len(key) - 1)
    hit = key[order[pos]] == nkey
    src.append(np.flatnonzero(hit))
    dst.append(order[pos[hit]])
  src, dst = np.concatenate(src), np.concatenate(dst)
  return sp.csr_matrix((np.ones(len(src)), (src, dst)), shape=(len(key), len(key)))


def ring_means(features: np.ndarray, adjacency: sp.csr_matrix, n_rings: int = 3) -> np.ndarray:
  """Mean features of the spots exactly 1..n_rings hops away (n, n_rings * F).

  A spot with an empty ring (an isolated spot) takes its own features for it.
  """
  n = adjacency.shape[0]
  reach = sp.identity(n, format="csr")
  out = []
  for _ in range(n_rings):
    grown = ((reach + reach @ adjacency) > 0).astype(np.float64)
    ring = sp.csr_matrix(grown - reach)
    ring.eliminate_zeros()
    size = np.asarray(ring.sum(axis=1)).ravel()
    mean = sp.diags(1.0 / np.maximum(size, 1)) @ ring @ features
    out.append(np.where(size[:, None] > 0, mean, features))
    reach = sp.csr_matrix(grown)
  return np.concatenate(out, axis=1).astype(np.float32)


def region_headroom(adata: Any, test_sections: Sequence[str], *, n_hvg: int = 1_000,
                    n_pcs: int = 50, n_rings: int = 3, seed: int = 0) -> dict[str, Any]:
  """Test accuracy / macro-F1 of logistic regressions: a spot vs it and its rings.

  Preprocessing (normalise to 1e4, log1p, Seurat HVGs, scale, clip 10, PCA) is
  fitted on the training sections' spots only (``preprocess.fit_preprocessor``);
  rings are hops on the hex graph within a section; features are standardised
  on the training spots.
  """
  import ml_collections   # pylint: disable=g-import-not-at-top
  from sklearn.linear_model import LogisticRegression   # pylint: disable=g-import-not-at-top
  from sklearn.preprocessing import StandardScaler   # pylint: disable=g-import-not-at-top
  from cardiac_jax import report   # pylint: disable=g-import-not-at-top
  from cardiac_jax.data import preprocess   # pylint: disable=g-import-not-at-top
  section = adata.obs[SECTION_KEY].astype(str).to_numpy()
  missing = sorted(set(test_sections) - set(section))
  if missing:
    raise DataError(f"test sections {missing} are not in the bed; pick from "
                    f"{sorted(set(section))}")
  test = np.isin(section, list(test_sections))
  train = ~test
  if not train.any():
    raise DataError("every section is a test section; leave at least one for training")
  names = list(adata.obs[REGION_KEY].cat.categories)
  y = adata.obs[REGION_KEY].cat.codes.to_numpy()
  pp_cfg = ml_collections.ConfigDict(dict(target_sum=1e4, n_hvg=min(n_hvg, adata.n_vars),
                                          n_pcs=n_pcs, max_value=10.0, seed=seed))
  started = time.perf_counter()
  pp = preprocess.fit_preprocessor(adata.X, adata.var_names, np.flatnonzero(train), pp_cfg)
  z = pp.transform(adata.X, adata.var_names)
  rings = ring_means(z, hex_adjacency(section, adata.obs["array_row"].to_numpy(),
                                      adata.obs["array_col"].to_numpy()), n_rings)
  results: dict[str, Any] = {
      "test_sections": list(test_sections), "n_train": int(train.sum()),
      "n_test": int(test.sum()), "n_pcs": n_pcs, "n_hvg": int(pp_cfg.n_hvg),
      "test_region_counts": {n: int((y[test] == i).sum()) for i, n in enumerate(names)}}
  for label, feats in (("per_spot", z), (f"rings_1_{n_rings}", np.concatenate([z, rings], 1))):
    scaler = StandardScaler().fit(feats[train])
    clf = LogisticRegression(max_iter=3_000, random_state=seed)
    clf.fit(scaler.transform(feats[train]), y[train])
    pred = clf.predict(scaler.transform(feats[test]))
    cls = report.classification_metrics(y[test], pred, names)
    results[label] = {"acc": cls["accuracy"], "macro_f1": cls["macro_f1"],
                      "n_features": int(feats.shape[1])}
  results["seconds"] = round(time.perf_counter() - started, 1)
  return results


def main(argv: Sequence[str]) -> None:
  from absl import app   # pylint: disable=g-import-not-at-top
  from absl import flags   # pylint: disable=g-import-not-at-top
  from cardiac_jax import fileio   # pylint: disable=g-import-not-at-top
  del argv
  cfg = flags.FLAGS
  if not cfg.out:
    raise app.UsageError("--out is required: the .h5ad to write, e.g. --out=/data/ss.h5ad")
  started = time.perf_counter()
  out = write_sections(cfg.out, n_sections=cfg.n_sections, seed=cfg.seed, n_spots=cfg.n_spots,
                       n_genes=cfg.n_genes)
  print(f"wrote {out} in {time.perf_counter() - started:.0f} s")
  if cfg.measure:
    import anndata as ad   # pylint: disable=g-import-not-at-top
    adata = ad.read_h5ad(out)
    n_test = max(1, cfg.n_sections * 2 // 5)
    tests = [f"section_{i}" for i in range(cfg.n_sections - n_test, cfg.n_sections)]
    summary = region_headroom(adata, tests)
    summary.update(bed=str(out), seed=cfg.seed, n_spots=int(adata.n_obs),
                   spots_per_section={str(k): int(v) for k, v in
                                      adata.obs[SECTION_KEY].value_counts().sort_index().items()},
                   spots_per_region={str(k): int(v) for k, v in
                                     adata.obs[REGION_KEY].value_counts().sort_index().items()},
                   mean_cells_per_spot=float(adata.obs["n_cells"].mean()),
                   mean_counts_per_spot=float(adata.X.sum() / adata.n_obs))
    fileio.atomic_write_json(out.with_suffix(".json"), summary)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
  from absl import app   # pylint: disable=g-import-not-at-top
  from absl import flags   # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("out", None, "Output .h5ad (written atomically).")
  flags.DEFINE_integer("n_sections", 5, "Sections (each its own SimSpace run).")
  flags.DEFINE_integer("seed", 0, "Bed seed; section i uses SimSpace seed 1000 * seed + i.")
  flags.DEFINE_integer("n_spots", 2_500, "About this many spots per section.")
  flags.DEFINE_integer("n_genes", 2_000, "Genes.")
  flags.DEFINE_bool("measure", False, "Also fit the per-spot vs ring-1/2/3 logistic "
                    "regressions (the last 40% of the sections, 2 of 5, as test) and write "
                    "<out>.json.")
  app.run(main)

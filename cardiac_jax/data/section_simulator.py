"""Embedded simulator of developing-heart sections whose spots carry anatomical regions.

The data of the spatial-regions path: several Visium-like sections, each spot labelled
with the region it sits in (Asp et al. 2019). A region is a distribution over cell
types, and regions share cell types in different proportions, so one spot's profile is
often ambiguous while its neighbours (same region, correlated composition) decide.

Generative model (per section; sections are independent given the seed):
  1. Cell-type programmes (``section_programmes``, deterministic in ``n_genes`` and
     ``programme_seed``): the lineage programmes of ``simulator.make_programmes`` (CM,
     CF, CMES, PROG) plus region-flavoured types derived from them by sparse log-fold
     changes on shared genes: ventricular and atrial CM (from CM), epicardial cells
     (from CF, WT1/TBX18/ALDH1A2 up), smooth muscle (from CF), endocardial/endothelial
     cells (from CMES, KDR up). Housekeeping genes keep their share. IPSC and MES
     (pluripotent, primitive streak) are absent from heart tissue.
  2. Anatomy, in a heart frame (apex down, base up): a ventricular mass narrowing to the
     apex with one or two lumens; zero to two atrial lobes with large lumens above the
     atrioventricular (AV) line; an outflow tract (OFT) tube with a lumen at one pole of
     the base. Sizes, positions and which structures the cut plane hits are drawn per
     section; outlines and lumens are perturbed by smooth random fields.
  3. Grid: a hex grid (100 um pitch, ``simulator.visium_xy``) sized so that about
     ``spots_per_section`` spots (x a per-section size factor) fall on tissue; the heart
     is rotated and mirrored at random, its tissue starts two spots from the origin in
     every section (sections overlap in x/y, like squidpy's per-``library_id``
     coordinates), and one-spot specks are dropped.
  4. Regions, by position among the tissue (physical distances, ragged by smooth
     fields): OFT inside the outflow tube; epicardium within ~1-2 spots of the outer
     surface (thinner over the atria); AV mesenchyme in a band along the AV line;
     atrial myocardium above it; ventricular myocardium below, trabecular on the lumen
     side of a ragged relative depth, compact outside it.
  5. Composition: each region's mean over cell types (``REGION_COMPOSITION``, jittered
     per section); a spot's mean mixes its own region's with its ring-1 neighbours'
     (``boundary_mix``: spots see tissue across a boundary), is modulated by smooth
     per-cell-type fields (neighbours correlated), and its proportions are drawn from a
     Dirichlet of ``concentration`` around it. Cells per spot: 1 + Poisson, at most
     ``max_cells``; cell types multinomial from the proportions.
  6. Counts: UMIs per cell type = cells x library factor x ``mean_cell_umis`` x spot
     capture efficiency (log-normal) x section depth factor (log-normal); the expected
     profile is the UMI-weighted mix of the programmes times a per-section gene-level
     log shift (batch), rescaled to the spot's UMIs; negative binomial counts with the
     programmes' dispersion (``simulator.sample_counts``).
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any

from absl import logging
import anndata
import numpy as np
import pandas as pd
from scipy import spatial
import scipy.sparse as sp

from cardiac_jax.data import simulator
from cardiac_jax.data.errors import DataError

REGIONS = ("compact_vm", "trabecular_vm", "atrial", "oft", "av_mesenchyme", "epicardium")
_COMPACT, _TRABECULAR, _ATRIAL, _OFT, _AVM, _EPI = range(len(REGIONS))

# Cell types: (lineage programme it derives from, named log-fold changes). Types with
# changes also get sparse background log-fold changes (``_DERIVED_FRACTION`` of genes).
CELL_TYPES = ("vCM", "aCM", "CF", "EPI", "ENDO", "SMC", "CMES", "PROG")
_DERIVATION = {
    "vCM": ("CM", {"IRX4": 1.5, "HEY2": 1.2, "MYL7": -1.0, "NPPA": -1.2, "MYH6": -0.7,
                   "TBX5": -1.0, "MYL4": -1.5}),
    "aCM": ("CM", {"NPPA": 0.8, "MYL7": 0.7, "MYH6": 0.7, "TBX5": 1.2, "MYL4": 1.2,
                   "IRX4": -2.0, "HEY2": -1.5}),
    "CF": ("CF", {}),
    "EPI": ("CF", {"WT1": 3.0, "TBX18": 2.5, "ALDH1A2": 2.5, "SEMA3D": 2.0, "POSTN": -1.0,
                   "COL1A1": -0.5}),
    "ENDO": ("CMES", {"KDR": 2.5, "MESP1": -3.0, "PDGFRA": -2.0}),
    "SMC": ("CF", {"TCF21": -2.5, "DCN": -1.0, "POSTN": -0.5}),
    "CMES": ("CMES", {"MESP1": -2.0}),     # cushion / sub-epicardial mesenchyme
    "PROG": ("PROG", {}),                  # second-heart-field progenitors (ISL1+)
}
_DERIVED_FRACTION = 0.03
_DERIVED_SD = 1.0

# Mean fraction of each cell type (CELL_TYPES order) per region (REGIONS order). Compact
# and trabecular myocardium differ mainly in endocardial cells and fibroblasts,
# epicardium and AV mesenchyme in epicardial cells: similar pairs, so single spots of
# them are often ambiguous.
REGION_COMPOSITION = np.array([
    # vCM   aCM   CF    EPI   ENDO  SMC   CMES  PROG
    [0.64, 0.01, 0.13, 0.02, 0.08, 0.03, 0.07, 0.02],   # compact_vm
    [0.62, 0.02, 0.08, 0.01, 0.17, 0.02, 0.06, 0.02],   # trabecular_vm
    [0.04, 0.60, 0.10, 0.02, 0.13, 0.02, 0.06, 0.03],   # atrial
    [0.10, 0.02, 0.16, 0.02, 0.12, 0.28, 0.14, 0.16],   # oft
    [0.10, 0.06, 0.20, 0.06, 0.16, 0.04, 0.36, 0.02],   # av_mesenchyme
    [0.12, 0.03, 0.25, 0.20, 0.06, 0.04, 0.28, 0.02],   # epicardium
])
# Cells per spot relative to the mean, per region (loose trabeculae, thin atrial wall).
_REGION_DENSITY = np.array([1.15, 0.9, 0.85, 0.95, 1.05, 0.85])
_COMPOSITION_JITTER = 0.15   # log sd of a region's mean between sections
_FIELD_SD = 0.35             # log sd of the smooth within-region composition fields
_CAPTURE_SD = 0.3            # log sd of a spot's capture efficiency
_SIZE_SD = 0.15              # log sd of a section's spot count around the requested one


@dataclasses.dataclass(frozen=True)
class SectionProgrammes:
  """Expression programmes of ``CELL_TYPES`` (rows), on the lineage programmes' genes.

  Attributes:
    gene_names: (g,) the lineage programmes' genes (same names and order).
    cell_types: row names.
    lineage: per cell type, the lineage programme (``simulator.PROGRAMME_NAMES``) it
      derives from.
    proportions: (T, g) expected fraction of a cell's UMIs per gene (rows sum to 1).
    dispersion: (g,) negative-binomial dispersion (the lineage programmes').
    library_factor: (T,) relative library size per cell type (its lineage programme's).
  """
  gene_names: np.ndarray
  cell_types: tuple[str, ...]
  lineage: tuple[str, ...]
  proportions: np.ndarray
  dispersion: np.ndarray
  library_factor: np.ndarray


def section_programmes(n_genes: int = 2_000, programme_seed: int = 0) -> SectionProgrammes:
  """Derives the heart's cell types from the lineage programmes; deterministic in its
  arguments, so every section (and ``simulate_cells``) shares genes and programmes."""
  prog = simulator.make_programmes(n_genes, programme_seed)
  rng = np.random.default_rng(np.random.SeedSequence([programme_seed, 6_700_417]))
  col = {g: i for i, g in enumerate(prog.gene_names)}
  hk = np.zeros(prog.n_genes, bool)
  hk[[col[g] for g in simulator.HOUSEKEEPING]] = True
  named = np.zeros(prog.n_genes, bool)
  named[[col[g] for g in simulator.named_genes()]] = True
  rows, library = [], []
  for name in CELL_TYPES:
    base_name, changes = _DERIVATION[name]
    p = prog.populations.index(base_name)
    base = prog.proportions[p]
    lfc = np.zeros(prog.n_genes)
    if changes:
      hit = (rng.random(prog.n_genes) < _DERIVED_FRACTION) & ~named
      lfc[hit] = rng.normal(0.0, _DERIVED_SD, hit.sum())
      for gene, change in changes.items():
        lfc[col[gene]] = change
    row = base * np.exp(lfc)
    row[hk] = base[hk]                                   # housekeeping keeps its share
    row[~hk] *= base[~hk].sum() / row[~hk].sum()
    rows.append(row)
    library.append(prog.library_factor[p])
  return SectionProgrammes(gene_names=prog.gene_names, cell_types=CELL_TYPES,
                           lineage=tuple(_DERIVATION[t][0] for t in CELL_TYPES),
                           proportions=np.stack(rows), dispersion=prog.dispersion,
                           library_factor=np.array(library))


# --------------------------------------------------------------------------- anatomy


def _draw_anatomy(rng: np.random.Generator) -> dict[str, Any]:
  """One section's heart in the heart frame (apex down, base up, width ~2 units): which
  structures its cut plane hits, their sizes and places."""
  a_v, b_v = rng.uniform(0.75, 0.95), rng.uniform(0.62, 0.78)
  av_line = rng.uniform(0.08, 0.2)
  centre_v = (rng.uniform(-0.05, 0.05), av_line - b_v * rng.uniform(0.55, 0.7))
  lumens = []
  if rng.random() < 0.65:                                # left and right ventricles
    gap = rng.uniform(0.3, 0.4) * a_v
    for side in (-1.0, 1.0):
      lumens.append(((centre_v[0] + side * gap, centre_v[1] + rng.uniform(-0.05, 0.1)),
                     (rng.uniform(0.17, 0.24) * a_v, rng.uniform(0.4, 0.52) * b_v)))
  else:                                                  # one lumen (or a cut through one)
    lumens.append(((centre_v[0] + rng.uniform(-0.1, 0.1), centre_v[1] + rng.uniform(0, 0.1)),
                   (rng.uniform(0.33, 0.43) * a_v, rng.uniform(0.42, 0.55) * b_v)))
  n_atria = int(rng.choice(3, p=[0.1, 0.35, 0.55]))
  sides = [-1.0, 1.0] if n_atria == 2 else list(rng.choice([-1.0, 1.0], n_atria))
  atria = []
  for side in sides:
    centre = (side * rng.uniform(0.28, 0.45), av_line + rng.uniform(0.14, 0.22))
    atria.append((centre, (rng.uniform(0.3, 0.42), rng.uniform(0.25, 0.35))))
  oft = None
  if rng.random() < 0.8:
    angle = rng.uniform(-0.5, 0.5)                       # from the base-apex axis
    start = np.array([rng.uniform(-0.2, 0.2), av_line - 0.05])
    end = start + rng.uniform(0.5, 0.8) * np.array([np.sin(angle), np.cos(angle)])
    oft = (start, end, rng.uniform(0.11, 0.16))
  return dict(ventricle=(centre_v, (a_v, b_v)), av_line=av_line, lumens=lumens,
              atria=atria, oft=oft, trabecular_depth=rng.uniform(0.38, 0.5),
              epicardium_spots=rng.uniform(1.6, 2.2), av_spots=rng.uniform(2.5, 4.0))


def _ellipse_radius(uv: np.ndarray, centre: tuple[float, float],
                    axes: tuple[float, float]) -> np.ndarray:
  return np.sqrt(((uv[:, 0] - centre[0]) / axes[0])**2 + ((uv[:, 1] - centre[1]) / axes[1])**2)


def _segment_distance(uv: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
  d = end - start
  t = np.clip((uv - start) @ d / (d @ d), 0.0, 1.0)
  return np.sqrt(((uv - start - t[:, None] * d)**2).sum(axis=1))


def _shapes(uv: np.ndarray, anatomy: dict[str, Any], outline: np.ndarray,
            ragged: np.ndarray) -> dict[str, np.ndarray]:
  """Boolean masks of the anatomy at heart-frame points; ``outline`` perturbs the outer
  surface, ``ragged`` the lumens (trabeculations); zeros give the unperturbed heart."""
  (cu, cv), (a_v, b_v) = anatomy["ventricle"]
  dv = uv[:, 1] - cv
  narrow = 1.0 - 0.3 * np.clip(-dv / b_v, 0.0, 1.0)     # narrows towards the apex
  r_vent = np.sqrt(((uv[:, 0] - cu) / (a_v * narrow))**2 + (dv / b_v)**2)
  edge = 1.0 + outline
  ventricle = (r_vent < edge) & (uv[:, 1] < anatomy["av_line"] + 0.06)
  atrium = np.zeros(len(uv), bool)
  atrial_lumen = np.zeros(len(uv), bool)
  for centre, axes in anatomy["atria"]:
    r = _ellipse_radius(uv, centre, axes)
    atrium |= r < edge
    atrial_lumen |= r < 0.62 * (1.0 + ragged)
  vent_lumen = np.zeros(len(uv), bool)
  for centre, axes in anatomy["lumens"]:
    vent_lumen |= _ellipse_radius(uv, centre, axes) < 1.0 + ragged
  oft = oft_lumen = np.zeros(len(uv), bool)
  if anatomy["oft"] is not None:
    start, end, half_width = anatomy["oft"]
    d = _segment_distance(uv, start, end) / half_width
    oft, oft_lumen = d < edge, d < 0.45 * (1.0 + ragged)
  outer = ventricle | atrium | oft
  vent_lumen &= ventricle & ~oft
  lumen = ((vent_lumen | atrial_lumen) & ~(oft & ~oft_lumen)) | oft_lumen
  lumen &= outer
  return dict(tissue=outer & ~lumen, exterior=~outer, vent_lumen=vent_lumen & lumen,
              atrium=atrium & ~oft, oft=oft)


def _place_grid(anatomy: dict[str, Any], n_target: float, rng: np.random.Generator
                ) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
  """Hex grid over the rotated, mirrored, scaled heart, with room for its perturbed
  outline (``_crop`` then moves the tissue next to the origin).

  Returns (array_row_col (m, 2), heart-frame coordinates (m, 2), placement) for every
  grid point of the capture area, on tissue or not.
  """
  step = 0.01                                 # unperturbed heart on a fine square grid
  axis = np.arange(-1.8, 1.8, step)
  dense = np.stack(np.meshgrid(axis, axis), -1).reshape(-1, 2)
  zeros = np.zeros(len(dense))
  dense = dense[_shapes(dense, anatomy, zeros, zeros)["tissue"]]
  um_per_unit = np.sqrt(n_target * simulator.SPOT_PITCH**2 * np.sqrt(3) / 2
                        / (len(dense) * step**2))
  angle = rng.uniform(-np.pi, np.pi)
  mirror = -1.0 if rng.random() < 0.5 else 1.0
  rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
  flip = np.array([mirror, 1.0])
  world = (dense * flip) @ rot.T * um_per_unit
  margin = 0.3 * um_per_unit + 3 * simulator.SPOT_PITCH
  low = world.min(axis=0) - margin
  extent = world.max(axis=0) + margin - low
  n_rows = int(np.ceil(extent[1] / (simulator.SPOT_PITCH * np.sqrt(3) / 2))) + 1
  n_cols = int(np.ceil(extent[0] / simulator.SPOT_PITCH)) + 1
  row, col = (a.ravel() for a in np.meshgrid(np.arange(n_rows), np.arange(n_cols),
                                            indexing="ij"))
  xy = simulator.visium_xy(row, col)
  uv = ((xy + low) / um_per_unit) @ rot * flip           # inverse rotation, then mirror
  placement = dict(um_per_unit=float(um_per_unit), rotation_deg=float(np.degrees(angle)),
                   mirrored=bool(mirror < 0))
  return np.stack([row, col], 1), uv, placement


def _regions(uv: np.ndarray, xy: np.ndarray, anatomy: dict[str, Any],
             um_per_unit: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """Region per grid point (-1 off tissue) from its place in the anatomy.

  Physical thicknesses (epicardium, AV band) are in spots, relative ones (trabecular
  depth) in fractions of the wall; smooth fields make every boundary irregular.
  Returns (region (m,), tissue mask (m,)).
  """
  field = {name: simulator.smooth_field(uv, rng, max_freq=freq) for name, freq in
           (("outline", 2.5), ("ragged", 8.0), ("lumen", 8.0), ("depth", 4.0),
            ("epicardium", 5.0), ("av", 3.0), ("cushion", 6.0))}
  shapes = _shapes(uv, anatomy, 0.06 * field["outline"] + 0.025 * field["ragged"],
                   0.12 * field["lumen"])
  tissue = shapes["tissue"]
  spots = xy / simulator.SPOT_PITCH
  at = spots[tissue]

  def distance_to(mask: np.ndarray) -> np.ndarray:
    if not mask.any():                # e.g. a lumen smaller than a spot: far away
      return np.full(len(at), 1e6)
    return spatial.cKDTree(spots[mask]).query(at)[0]

  d_ext, d_lumen = distance_to(shapes["exterior"]), distance_to(shapes["vent_lumen"])
  u, v = uv[tissue, 0], uv[tissue, 1]
  sub = {k: f[tissue] for k, f in field.items()}
  atrium, oft = shapes["atrium"][tissue], shapes["oft"][tissue]
  av_line = anatomy["av_line"] + 0.03 * sub["av"]
  # AV band: widest at the cushions in the canal's centre, thinner laterally.
  cushion_u = anatomy["ventricle"][0][0]
  half_width = (anatomy["av_spots"] * (0.4 + 0.6 * np.exp(-(u - cushion_u)**2 / 0.18))
                * (1.0 + 0.2 * sub["cushion"]))
  in_av = np.abs(v - av_line) * um_per_unit / simulator.SPOT_PITCH < half_width
  above = v > av_line
  epi_spots = anatomy["epicardium_spots"] * np.where(atrium & above, 0.5, 1.0)
  in_epi = d_ext <= epi_spots * (1.0 + 0.3 * sub["epicardium"])
  relative_depth = d_lumen / (d_lumen + d_ext)
  trabecular = relative_depth < anatomy["trabecular_depth"] * (1.0 + 0.25 * sub["depth"])
  region = np.where(trabecular, _TRABECULAR, _COMPACT)
  region = np.where(atrium & above, _ATRIAL, region)
  region = np.where(in_av, _AVM, region)
  region = np.where(in_epi, _EPI, region)
  region = np.where(oft, _OFT, region)
  out = np.full(len(uv), -1)
  out[tissue] = region
  return out, tissue


def _crop(grid: np.ndarray) -> np.ndarray:
  """Shifts tissue spots' (array_row, array_col) so the tissue starts two spots from
  the origin; rows move by an even number, so the hex offsets (and distances) stay."""
  row0 = max(int(grid[:, 0].min()) - 2, 0)
  col0 = max(int(grid[:, 1].min()) - 2, 0)
  return grid - np.array([row0 - row0 % 2, col0])


def _ring1(xy: np.ndarray) -> sp.csr_matrix:
  """Adjacency of spots one pitch apart (the hex grid's six neighbours)."""
  pairs = spatial.cKDTree(xy).query_pairs(1.01 * simulator.SPOT_PITCH, output_type="ndarray")
  n = len(xy)
  ones = np.ones(2 * len(pairs))
  rows = np.concatenate([pairs[:, 0], pairs[:, 1]])
  cols = np.concatenate([pairs[:, 1], pairs[:, 0]])
  return sp.csr_matrix((ones, (rows, cols)), shape=(n, n))


# --------------------------------------------------------------------------- sections


def _check_arguments(n_sections: int, spots_per_section: int, mean_cell_umis: float,
                     concentration: float, boundary_mix: float, mean_cells: float,
                     max_cells: int, section_depth_sd: float, section_shift_sd: float) -> None:
  if n_sections < 1:
    raise DataError(f"n_sections={n_sections}: simulate at least one section (pass "
                    "n_sections >= 1; >= 3 to hold sections out).")
  if spots_per_section < 100:
    raise DataError(f"spots_per_section={spots_per_section} is too small for a heart with "
                    "six regions (the epicardium alone is 1-2 spots thick); pass >= 100 "
                    "(300+ for every region in most sections).")
  if mean_cell_umis <= 0 or concentration <= 0:
    raise DataError(f"mean_cell_umis={mean_cell_umis} and concentration={concentration} "
                    "must be > 0; pass the defaults (600, 12) if unsure.")
  if not 0.0 <= boundary_mix <= 1.0:
    raise DataError(f"boundary_mix={boundary_mix} is a fraction of a spot's mean taken from "
                    "its neighbours' regions; pass a value in [0, 1].")
  if not 1 <= mean_cells <= max_cells:
    raise DataError(f"mean_cells={mean_cells} must lie in [1, max_cells={max_cells}]: a spot "
                    "holds 1 to max_cells cells; raise max_cells or lower mean_cells.")
  if section_depth_sd < 0 or section_shift_sd < 0:
    raise DataError(f"section_depth_sd={section_depth_sd} and section_shift_sd="
                    f"{section_shift_sd} are standard deviations; pass values >= 0.")


def _simulate_section(programmes: SectionProgrammes, spots_per_section: int,
                      seq: np.random.SeedSequence, params: dict[str, Any]
                      ) -> tuple[sp.csr_matrix, dict[str, np.ndarray], dict[str, Any]]:
  """One section: anatomy, regions, compositions and counts (steps 2-6)."""
  anatomy_rng, section_rng, cell_rng, count_rng = (np.random.default_rng(s)
                                                   for s in seq.spawn(4))
  anatomy = _draw_anatomy(anatomy_rng)
  size_factor = float(simulator.lognormal_factor(anatomy_rng, _SIZE_SD, 1)[0])
  grid, uv, placement = _place_grid(anatomy, spots_per_section * size_factor, anatomy_rng)
  xy_all = simulator.visium_xy(grid[:, 0], grid[:, 1])
  region, tissue = _regions(uv, xy_all, anatomy, placement["um_per_unit"], anatomy_rng)
  grid, uv, region = _crop(grid[tissue]), uv[tissue], region[tissue]
  xy = simulator.visium_xy(grid[:, 0], grid[:, 1])
  adjacency = _ring1(xy)
  degree = np.asarray(adjacency.sum(axis=1)).ravel()
  if (degree == 0).any():             # one-spot specks are not detected as tissue
    keep = degree > 0
    grid, uv, xy, region = grid[keep], uv[keep], xy[keep], region[keep]
    adjacency = adjacency[keep][:, keep]
    degree = degree[keep]
  n, n_types = len(region), len(CELL_TYPES)

  # Section level: depth, gene-level batch shift, the regions' compositions this time.
  depth = float(simulator.lognormal_factor(section_rng, params["section_depth_sd"], 1)[0])
  shift = section_rng.normal(0.0, params["section_shift_sd"], programmes.gene_names.size)
  strong = section_rng.random(shift.size) < 0.05
  shift[strong] += section_rng.normal(0.0, 5.0 * params["section_shift_sd"], strong.sum())
  means = REGION_COMPOSITION * np.exp(section_rng.normal(0.0, _COMPOSITION_JITTER,
                                                         REGION_COMPOSITION.shape))
  means /= means.sum(axis=1, keepdims=True)

  # Spot compositions: own region mixed with the ring-1 neighbours', smooth fields,
  # Dirichlet around that; then cells.
  own = means[region]
  around = adjacency @ own / degree[:, None]
  mix = (1.0 - params["boundary_mix"]) * own + params["boundary_mix"] * around
  fields = np.stack([simulator.smooth_field(uv, cell_rng, max_freq=4.0)
                     for _ in range(n_types + 1)], axis=1)
  alpha = mix * np.exp(_FIELD_SD * fields[:, :n_types])
  alpha *= params["concentration"] / alpha.sum(axis=1, keepdims=True)
  gamma = cell_rng.standard_gamma(alpha) + 1e-12
  fractions = gamma / gamma.sum(axis=1, keepdims=True)
  rate = ((params["mean_cells"] - 1.0) * _REGION_DENSITY[region]
          * np.exp(0.2 * fields[:, n_types] - 0.02))
  n_cells = np.minimum(1 + cell_rng.poisson(rate), params["max_cells"])
  cells = cell_rng.multinomial(n_cells, fractions)

  umis = (cells * programmes.library_factor * params["mean_cell_umis"] * depth
          * simulator.lognormal_factor(cell_rng, _CAPTURE_SD, n)[:, None])
  total = umis.sum(axis=1)
  batch = np.exp(shift)
  profile = programmes.proportions

  def mean_block(a: int, b: int) -> np.ndarray:
    m = (umis[a:b] @ profile) * batch
    m *= (total[a:b] / m.sum(axis=1))[:, None]
    return m.astype(np.float32)

  counts = simulator.sample_counts(mean_block, n, programmes.dispersion, count_rng)
  spots = dict(grid=grid, xy=xy, region=region, n_cells=n_cells,
               proportions=cells / n_cells[:, None])
  summary = dict(n_spots=n, size_factor=size_factor, depth_factor=depth,
                 n_ventricular_lumens=len(anatomy["lumens"]), n_atria=len(anatomy["atria"]),
                 has_oft=anatomy["oft"] is not None, **placement)
  return counts, spots, summary


def simulate_sections(n_sections: int = 5, spots_per_section: int = 3_000,
                      n_genes: int = 2_000, seed: int = 0, programme_seed: int = 0,
                      mean_cell_umis: float = 600.0, concentration: float = 12.0,
                      boundary_mix: float = 0.3, mean_cells: float = 5.5,
                      max_cells: int = 10, section_depth_sd: float = 0.35,
                      section_shift_sd: float = 0.1) -> anndata.AnnData:
  """Simulates Visium-like sections of the developing heart, each spot with its region.

  Args:
    n_sections: sections (each its own cut, size, orientation, depth and batch).
    spots_per_section: approximate on-tissue spots per section (x a per-section size
      factor; the hex grid decides the exact count).
    n_genes: genes; the same (n_genes, programme_seed) as ``simulator.simulate_cells``
      gives the same var_names.
    seed: seed of the sections; section k depends only on (seed, k), so more sections
      extend a data set without changing the first ones.
    programme_seed: seed of the gene programmes.
    mean_cell_umis: captured UMIs per cell (a spot of ~5 cells: a few thousand UMIs).
    concentration: Dirichlet concentration of a spot's cell-type fractions around its
      mean; lower makes single spots more ambiguous.
    boundary_mix: share of a spot's mean composition taken from its ring-1 neighbours'
      regions (spots at a boundary see both sides).
    mean_cells: mean cells per spot (1 + Poisson, scaled per region).
    max_cells: most cells per spot.
    section_depth_sd: log sd of the per-section library-size factor.
    section_shift_sd: sd of the per-section gene-level log shift (batch); 5% of the
      genes shift 5x more (0 removes the batch effect).

  Returns:
    AnnData with int32 CSR counts in X; obs section, region, n_cells, array_row,
    array_col; obsm spatial (um, per section); latents for tests only (never features):
    obsm proportions (cell-type fractions, names in uns["cell_types"]) and
    uns["simulator"] (every parameter and per-section summaries).
  """
  _check_arguments(n_sections, spots_per_section, mean_cell_umis, concentration,
                   boundary_mix, mean_cells, max_cells, section_depth_sd, section_shift_sd)
  started = time.perf_counter()
  programmes = section_programmes(n_genes, programme_seed)
  params = dict(mean_cell_umis=float(mean_cell_umis), concentration=float(concentration),
                boundary_mix=float(boundary_mix), mean_cells=float(mean_cells),
                max_cells=int(max_cells), section_depth_sd=float(section_depth_sd),
                section_shift_sd=float(section_shift_sd))
  seqs = np.random.SeedSequence([seed, 32_452_843]).spawn(n_sections)
  results = [_simulate_section(programmes, spots_per_section, s, params) for s in seqs]
  counts = sp.vstack([r[0] for r in results], format="csr")
  spots = {k: np.concatenate([r[1][k] for r in results]) for k in results[0][1]}
  sizes = [r[2]["n_spots"] for r in results]
  section = np.repeat(np.arange(n_sections), sizes)
  names = [f"s{k}" for k in range(n_sections)]
  width = max(5, len(str(max(sizes) - 1)))
  index = [f"{names[k]}_spot{i:0{width}d}" for k, size in enumerate(sizes)
           for i in range(size)]
  obs = pd.DataFrame({
      "section": pd.Categorical.from_codes(section, categories=names),
      "region": pd.Categorical.from_codes(spots["region"], categories=list(REGIONS)),
      "n_cells": spots["n_cells"].astype(np.int32),
      "array_row": spots["grid"][:, 0].astype(np.int32),
      "array_col": spots["grid"][:, 1].astype(np.int32),
  }, index=pd.Index(index))
  adata = anndata.AnnData(X=counts, obs=obs, var=pd.DataFrame(index=programmes.gene_names))
  adata.obsm["spatial"] = spots["xy"].astype(np.float64)
  adata.obsm["proportions"] = spots["proportions"].astype(np.float32)
  adata.uns["cell_types"] = list(CELL_TYPES)
  adata.uns["simulator"] = {
      "kind": "sections", "n_sections": int(n_sections),
      "spots_per_section": int(spots_per_section), "n_genes": int(n_genes),
      "seed": int(seed), "programme_seed": int(programme_seed), **params,
      "spot_pitch_um": simulator.SPOT_PITCH, "composition_jitter": _COMPOSITION_JITTER,
      "field_sd": _FIELD_SD, "capture_sd": _CAPTURE_SD, "size_sd": _SIZE_SD,
      "region_composition": {r: REGION_COMPOSITION[i].tolist() for i, r in enumerate(REGIONS)},
      "region_density": dict(zip(REGIONS, _REGION_DENSITY.tolist())),
      "sections": {k: [r[2][k] for r in results] for k in results[0][2]},
  }
  logging.info("simulated %d sections, %d spots x %d genes in %.1f s", n_sections,
               adata.n_obs, adata.n_vars, time.perf_counter() - started)
  return adata

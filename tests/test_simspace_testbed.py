"""SimSpace test bed: cells -> spots and rings (always run), the bed's schema (with SimSpace)."""
import json

import numpy as np
import pytest
import scipy.sparse as sp

from cardiac_jax.data.errors import DataError
from cardiac_jax.studies import simspace_testbed as st

NEEDS_SIMSPACE = pytest.mark.skipif(
    not st.simspace_available(),
    reason='SimSpace is not installed (optional): pip install -e ".[simspace]" '
           "(simspace==0.4.2) to test the SimSpace bed")


def test_design_is_simspace_parameters_with_overlapping_modules():
  design = st.Design()
  params = design.parameters()
  m, k = design.n_niches, design.n_types
  assert (params["n_group"], params["n_state"]) == (m, k) == (5, 7)
  assert len(params["niche_theta"]) == m * (m - 1) // 2
  assert len(params["theta_list"]) == m
  assert all(len(t) == k * (k - 1) // 2 for t in params["theta_list"])
  assert len(params["density_replicates"]) == k
  # Rebuild niche 1's matrix in SimSpace's order (upper triangle, by row).
  theta = np.eye(k)
  theta[np.triu_indices(k, 1)] = params["theta_list"][1]
  assert theta[1, 2] == theta[1, 3] == theta[2, 3] == design.within_affinity
  assert theta[0, 1] == theta[3, 4] == design.between_affinity
  modules = [set(mod) for mod in design.modules()]
  assert all(len(a & b) == 2 for a, b in zip(modules, modules[1:]))


def test_hex_grid_is_visium_like():
  grid = st.hex_grid(1_000.0, 800.0)
  r = st.SPOT_DIAMETER_UM / 2
  assert (grid.xy >= r - 1e-9).all()
  assert (grid.xy[:, 0] <= 1_000 - r + 1e-9).all() and (grid.xy[:, 1] <= 800 - r + 1e-9).all()
  d = np.linalg.norm(grid.xy[:, None] - grid.xy[None], axis=-1)
  np.fill_diagonal(d, np.inf)
  np.testing.assert_allclose(d.min(axis=1), st.PITCH_UM)
  np.testing.assert_array_equal(grid.array_col % 2, grid.array_row % 2)
  adjacency = st.hex_adjacency(np.zeros(len(grid.xy)), grid.array_row, grid.array_col)
  # Array-coordinate neighbours are exactly the spots one pitch away.
  np.testing.assert_array_equal(adjacency.toarray() > 0, np.isclose(d, st.PITCH_UM))


def test_section_side_gives_about_the_spots_asked_for():
  for n in (60, 500, 2_500):
    side = st.section_side_um(n)
    assert abs(len(st.hex_grid(side, side).xy) - n) <= 0.1 * n
  with pytest.raises(DataError, match="raise n_spots"):
    st.section_side_um(2)


def _brute_force(cell_xy, counts, niche, spot_xy, n_niches):
  """Per spot: summed counts and region (majority; tie: niche of the nearest tied cell)."""
  d = np.linalg.norm(cell_xy[:, None] - spot_xy[None], axis=-1)
  summed = np.zeros((len(spot_xy), counts.shape[1]), np.int64)
  region = np.full(len(spot_xy), -1)
  for s in range(len(spot_xy)):
    inside = np.flatnonzero(d[:, s] <= st.SPOT_DIAMETER_UM / 2)
    summed[s] = counts[inside].sum(axis=0)
    if len(inside):
      tally = np.bincount(niche[inside], minlength=n_niches)
      tied = np.flatnonzero(tally == tally.max())
      region[s] = min(tied, key=lambda k: d[inside[niche[inside] == k], s].min())
  return summed, region


def test_cells_to_spots_sums_inside_cells_and_takes_the_majority_niche():
  rng = np.random.default_rng(0)
  grid = st.hex_grid(600.0, 600.0)
  cell_xy = rng.uniform(0, 600, (3_000, 2))
  counts = rng.poisson(3.0, (3_000, 7)).astype(np.int32)
  niche = rng.integers(0, 3, 3_000)
  agg = st.cells_to_spots(cell_xy, sp.csr_matrix(counts), niche, grid.xy, n_niches=3)
  summed, region = _brute_force(cell_xy, counts, niche, grid.xy, 3)
  np.testing.assert_array_equal(agg.counts.toarray(), summed)
  np.testing.assert_array_equal(agg.region, region)
  inside = agg.cell_spot >= 0
  # Counts are conserved for the cells inside a disc; the others are not captured.
  assert agg.counts.sum() == counts[inside].sum() < counts.sum()
  np.testing.assert_array_equal(agg.n_cells, np.bincount(agg.cell_spot[inside],
                                                         minlength=len(grid.xy)))
  assert agg.counts.dtype == np.int32 and (agg.region >= 0).all()


def test_cells_to_spots_breaks_a_tie_by_the_cell_nearest_the_centre():
  centre = np.array([[27.5, 27.5]])
  offsets = np.array([[5.0, 0], [0, 10.0], [-20.0, 0], [0, -25.0], [60.0, 60.0]])
  counts = sp.csr_matrix(np.ones((5, 2), np.int32))
  tie = st.cells_to_spots(centre + offsets, counts, np.array([0, 1, 1, 0, 1]), centre,
                          n_niches=2)
  assert tie.region.tolist() == [0] and tie.n_cells.tolist() == [4]   # 2-2, nearest is 0
  majority = st.cells_to_spots(centre + offsets, counts, np.array([0, 1, 1, 1, 0]), centre,
                               n_niches=2)
  assert majority.region.tolist() == [1]   # 3-1 beats the nearest cell
  empty = st.cells_to_spots(centre + 100.0, counts[:1], np.array([0]), centre, n_niches=2)
  assert empty.region.tolist() == [-1] and empty.counts.sum() == 0
  with pytest.raises(DataError, match="n_niches"):
    st.cells_to_spots(centre, counts[:1], np.array([2]), centre, n_niches=2)


def test_rings_are_hex_hops_within_a_section():
  grid = st.hex_grid(1_100.0, 1_100.0)
  n = len(grid.xy)
  section = np.repeat(["a", "b"], n)   # two sections on the same coordinates
  rows, cols = np.tile(grid.array_row, 2), np.tile(grid.array_col, 2)
  adjacency = st.hex_adjacency(section, rows, cols)
  assert adjacency[:n, n:].nnz == 0 and adjacency[n:, :n].nnz == 0
  feats = np.arange(2 * n, dtype=np.float64)[:, None]
  rings = st.ring_means(feats, adjacency, n_rings=3)
  centre = int(np.argmin(np.linalg.norm(grid.xy - grid.xy.mean(0), axis=1)))
  hops = np.linalg.norm(grid.xy - grid.xy[centre], axis=1) / st.PITCH_UM
  for k in (1, 2, 3):
    # Hex ring k lies between k * sqrt(3) / 2 and k pitches away.
    ring = np.flatnonzero((hops > (k - 1) + 1e-6) & (hops <= k + 1e-6)
                          & (hops >= k * np.sqrt(3) / 2 - 1e-6))
    assert len(ring) == 6 * k
    np.testing.assert_allclose(rings[centre, k - 1], feats[ring, 0].mean(), rtol=1e-6)
    np.testing.assert_allclose(rings[n + centre, k - 1], feats[n + ring, 0].mean(), rtol=1e-6)
  alone = st.ring_means(np.ones((1, 2)), sp.csr_matrix((1, 1)), n_rings=2)
  np.testing.assert_array_equal(alone, np.ones((1, 4)))   # no neighbours: its own features


@NEEDS_SIMSPACE
@pytest.mark.slow
def test_bed_schema(tmp_path):
  import anndata as ad   # pylint: disable=g-import-not-at-top
  path = st.write_sections(tmp_path / "bed.h5ad", n_sections=3, seed=0, n_spots=40, n_genes=40)
  adata = ad.read_h5ad(path)
  obs = adata.obs
  assert obs[st.SECTION_KEY].nunique() == 3
  assert obs.index.is_unique
  assert sp.issparse(adata.X) and np.issubdtype(adata.X.dtype, np.integer)
  assert (np.asarray(adata.X.sum(axis=1)).ravel() > 0).all()
  assert (obs["n_cells"] > 0).all()
  assert (adata.obsm["cell_types"].sum(axis=1) == obs["n_cells"].to_numpy()).all()
  sections = obs[st.SECTION_KEY].astype(str).to_numpy()
  xy = {s: {tuple(p) for p in adata.obsm["spatial"][sections == s]} for s in set(sections)}
  assert xy["section_0"] & xy["section_1"] & xy["section_2"]   # per-section coordinates
  per_region = obs.groupby(st.REGION_KEY, observed=True)[st.SECTION_KEY].nunique()
  assert (per_region >= 2).any() and len(per_region) >= 3
  # SimSpace's niches are contiguous: hex neighbours mostly share their region.
  adjacency = sp.triu(st.hex_adjacency(sections, obs["array_row"].to_numpy(),
                                       obs["array_col"].to_numpy())).tocoo()
  codes = obs[st.REGION_KEY].cat.codes.to_numpy()
  assert np.mean(codes[adjacency.row] == codes[adjacency.col]) > 0.6
  settings = json.loads(adata.uns["simspace_testbed"])
  assert settings["version"] == st.SIMSPACE_VERSION and settings["n_sections"] == 3

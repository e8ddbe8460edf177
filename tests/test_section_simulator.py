"""Tests of the heart-section simulator: schema, grid, anatomy, overlap and context."""
import json

import anndata
import numpy as np
import pandas as pd
import pytest
from scipy import spatial
import scipy.sparse as sp
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from cardiac_jax.data import section_simulator
from cardiac_jax.data import simulator
from cardiac_jax.data.errors import DataError

REGIONS = section_simulator.REGIONS
N_SECTIONS = 6
SPOTS = 600
N_GENES = 200


@pytest.fixture(scope="module")
def sections():
  return section_simulator.simulate_sections(n_sections=N_SECTIONS, spots_per_section=SPOTS,
                                             n_genes=N_GENES, seed=0)


def _codes(adata, key: str) -> np.ndarray:
  return adata.obs[key].cat.codes.to_numpy()


def _rings(adata, max_ring: int = 2) -> list[sp.csr_matrix]:
  """Row-normalised adjacency of hex ring r = 1..max_ring (grid distance), per section."""
  xy = adata.obsm["spatial"] / simulator.SPOT_PITCH
  section = _codes(adata, "section")
  rows, cols, ring = [], [], []
  for s in np.unique(section):
    idx = np.flatnonzero(section == s)
    pairs = spatial.cKDTree(xy[idx]).query_pairs(max_ring + 0.01, output_type="ndarray")
    d = np.linalg.norm(xy[idx[pairs[:, 0]]] - xy[idx[pairs[:, 1]]], axis=1)
    r = np.ceil(d - 0.01).astype(int)          # ring 1: 1; ring 2: sqrt(3), 2
    rows += [idx[pairs[:, 0]], idx[pairs[:, 1]]]
    cols += [idx[pairs[:, 1]], idx[pairs[:, 0]]]
    ring += [r, r]
  rows, cols, ring = (np.concatenate(a) for a in (rows, cols, ring))
  out = []
  for r in range(1, max_ring + 1):
    keep = ring == r
    a = sp.csr_matrix((np.ones(keep.sum()), (rows[keep], cols[keep])),
                      shape=(adata.n_obs, adata.n_obs))
    degree = np.asarray(a.sum(axis=1)).ravel()
    out.append(sp.diags(1.0 / np.maximum(degree, 1)) @ a)
  return out


def _ring1_degree_and_contacts(adata) -> tuple[np.ndarray, np.ndarray]:
  """Tissue neighbours per spot, and region x region counts of ring-1 contacts."""
  ring1 = (_rings(adata, 1)[0] > 0).astype(np.float64)
  region = _codes(adata, "region")
  onehot = np.eye(len(REGIONS))[region]
  return np.asarray(ring1.sum(axis=1)).ravel(), onehot.T @ (ring1 @ onehot)


def _log_norm(counts: sp.csr_matrix) -> np.ndarray:
  counts = sp.csr_matrix(counts, dtype=np.float64)
  total = np.asarray(counts.sum(axis=1)).ravel()
  out = sp.csr_matrix(counts.multiply(1e4 / total[:, None]))
  out.data = np.log1p(out.data)
  return out.toarray()


# --------------------------------------------------------------------------- schema


def test_schema_genes_and_latents(sections, tmp_path):
  adata = sections
  assert adata.X.format == "csr" and adata.X.dtype == np.int32
  cells = simulator.simulate_cells(n_cells=20, n_genes=N_GENES, n_donors=2, seed=0)
  assert list(adata.var_names) == list(cells.var_names)
  assert list(adata.obs["section"].cat.categories) == [f"s{k}" for k in range(N_SECTIONS)]
  assert list(adata.obs["region"].cat.categories) == list(REGIONS)
  assert adata.obs_names.is_unique
  assert all(name.startswith(f"{s}_spot") for name, s in zip(adata.obs_names,
                                                             adata.obs["section"]))
  n_cells = adata.obs["n_cells"].to_numpy()
  assert n_cells.min() >= 1 and n_cells.max() <= 10 and 3 < n_cells.mean() < 8
  props = adata.obsm["proportions"]
  assert props.shape == (adata.n_obs, len(adata.uns["cell_types"]))
  np.testing.assert_allclose(props.sum(axis=1), 1.0, atol=1e-5)
  # Whole cells: fractions are multiples of 1 / n_cells.
  np.testing.assert_allclose(props * n_cells[:, None], np.rint(props * n_cells[:, None]),
                             atol=1e-4)
  sizes = adata.obs["section"].value_counts()
  assert (sizes > 0.5 * SPOTS).all() and (sizes < 2 * SPOTS).all()
  assert adata.uns["simulator"]["sections"]["n_spots"] == [
      int(sizes[f"s{k}"]) for k in range(N_SECTIONS)]
  json.dumps(adata.uns["simulator"])
  adata.write_h5ad(tmp_path / "sections.h5ad")
  back = anndata.read_h5ad(tmp_path / "sections.h5ad")
  assert (back.X != adata.X).nnz == 0
  pd.testing.assert_frame_equal(back.obs, adata.obs)


def test_same_seed_same_output_seeds_differ_sections_extend(sections):
  kwargs = dict(n_sections=2, spots_per_section=SPOTS, n_genes=N_GENES)
  a = section_simulator.simulate_sections(**kwargs, seed=0)
  b = section_simulator.simulate_sections(**kwargs, seed=0)
  assert (a.X != b.X).nnz == 0
  pd.testing.assert_frame_equal(a.obs, b.obs)
  np.testing.assert_array_equal(a.obsm["spatial"], b.obsm["spatial"])
  np.testing.assert_array_equal(a.obsm["proportions"], b.obsm["proportions"])
  c = section_simulator.simulate_sections(**kwargs, seed=1)
  assert a.shape != c.shape or (a.X != c.X).nnz > 0
  # Section k depends only on (seed, k): the first two of six are these two.
  first = sections[sections.obs["section"].isin(["s0", "s1"]).to_numpy()]
  assert (first.X != a.X).nnz == 0
  pd.testing.assert_frame_equal(
      first.obs.astype({"section": str}), a.obs.astype({"section": str}))


def test_programmes_derive_from_the_lineage_by_sparse_changes():
  prog = section_simulator.section_programmes(300, programme_seed=2)
  again = section_simulator.section_programmes(300, programme_seed=2)
  np.testing.assert_array_equal(prog.proportions, again.proportions)
  np.testing.assert_allclose(prog.proportions.sum(axis=1), 1.0, rtol=1e-9)
  lineage = simulator.make_programmes(300, seed=2)
  assert list(prog.gene_names) == list(lineage.gene_names)
  col = {g: i for i, g in enumerate(prog.gene_names)}
  hk = [col[g] for g in simulator.HOUSEKEEPING]
  for t, name in enumerate(prog.cell_types):
    base = lineage.proportions[lineage.populations.index(prog.lineage[t])]
    ratio = np.delete(np.log(prog.proportions[t] / base), hk)
    changed = np.abs(ratio - np.median(ratio)) > 0.1   # beyond the common rescaling
    assert changed.mean() < 0.1, name                  # shares most genes with its lineage
    np.testing.assert_allclose(prog.proportions[t, hk], base[hk])   # housekeeping share
  row = {name: prog.proportions[t] for t, name in enumerate(prog.cell_types)}
  assert row["EPI"][col["WT1"]] > 5 * row["CF"][col["WT1"]]
  assert row["aCM"][col["NPPA"]] > 2 * row["vCM"][col["NPPA"]]
  assert row["vCM"][col["IRX4"]] > 5 * row["aCM"][col["IRX4"]]
  assert row["ENDO"][col["KDR"]] > 5 * row["CMES"][col["KDR"]]


# --------------------------------------------------------------------------- grid


def test_coordinates_per_section_hex_spacing(sections):
  xy = sections.obsm["spatial"]
  row, col = (sections.obs[k].to_numpy() for k in ("array_row", "array_col"))
  np.testing.assert_allclose(xy, simulator.visium_xy(row, col))
  section = _codes(sections, "section")
  lows, highs = [], []
  for s in range(N_SECTIONS):
    pts = xy[section == s]
    lows.append(pts.min(axis=0))
    highs.append(pts.max(axis=0))
    dist, _ = spatial.cKDTree(pts).query(pts, k=7)
    np.testing.assert_allclose(dist[:, 1], simulator.SPOT_PITCH)   # nearest spot: 100 um
    interior = np.isclose(dist[:, 1:], simulator.SPOT_PITCH).all(axis=1)
    assert interior.mean() > 0.35                                  # six equidistant
  lows, highs = np.array(lows), np.array(highs)
  assert (lows < 4 * simulator.SPOT_PITCH).all()                   # each starts near 0
  assert (lows.max(axis=0) < highs.min(axis=0)).all()              # ranges overlap
  # Outlines differ between sections.
  assert len({tuple(np.round(h, -2)) for h in highs}) > N_SECTIONS // 2


# --------------------------------------------------------------------------- regions


def test_regions_present_and_contiguous(sections):
  table = pd.crosstab(sections.obs["section"], sections.obs["region"])
  present = (table.reindex(columns=list(REGIONS), fill_value=0) >= 5).mean(axis=0)
  assert (present >= 0.6).all(), present.to_dict()
  degree, contacts = _ring1_degree_and_contacts(sections)
  same = np.trace(contacts) / contacts.sum()
  assert same > 0.75, same
  share = np.bincount(_codes(sections, "region"), minlength=len(REGIONS)) / sections.n_obs
  per_region = np.diag(contacts) / contacts.sum(axis=1)
  assert (per_region > 2 * share).all() and (per_region > 0.5).all(), per_region


def test_regions_are_laid_out_anatomically(sections):
  degree, contacts = _ring1_degree_and_contacts(sections)
  region = _codes(sections, "region")
  idx = {name: i for i, name in enumerate(REGIONS)}
  edge = degree < 6
  frac = contacts / contacts.sum(axis=1, keepdims=True)
  compact, trabecular = idx["compact_vm"], idx["trabecular_vm"]
  # Trabecular myocardium lines the lumen, compact lies outside it under the epicardium.
  assert edge[region == trabecular].mean() > 3 * edge[region == compact].mean()
  assert frac[compact, idx["epicardium"]] > 3 * frac[trabecular, idx["epicardium"]]
  assert edge[region == idx["epicardium"]].mean() > 0.4        # the outer rim
  # AV mesenchyme separates atrium from ventricle.
  atrial = idx["atrial"]
  assert frac[atrial, [compact, trabecular]].sum() < 0.05
  assert frac[idx["av_mesenchyme"], [compact, trabecular]].sum() > 0.03
  assert frac[idx["av_mesenchyme"], atrial] > 0.01


def test_per_section_depth_differs(sections):
  total = np.asarray(sections.X.sum(axis=1)).ravel()
  section = _codes(sections, "section")
  median = np.array([np.median(total[section == s]) for s in range(N_SECTIONS)])
  assert 1_000 < np.median(median) < 10_000                    # a few thousand UMIs
  assert median.max() / median.min() > 1.3
  # The differences are the section's depth factor (not its composition).
  factor = np.array(sections.uns["simulator"]["sections"]["depth_factor"])
  assert np.log(median / factor).std() < 0.5 * np.log(median).std()
  flat = section_simulator.simulate_sections(n_sections=N_SECTIONS, spots_per_section=SPOTS,
                                             n_genes=N_GENES, seed=0, section_depth_sd=0.0)
  total = np.asarray(flat.X.sum(axis=1)).ravel()
  section = _codes(flat, "section")
  median = np.array([np.median(total[section == s]) for s in range(N_SECTIONS)])
  assert median.max() / median.min() < 1.2


def test_compositions_overlap(sections):
  props = sections.obsm["proportions"]
  region = _codes(sections, "region")
  idx = {name: i for i, name in enumerate(REGIONS)}
  mean = np.stack([props[region == r].mean(axis=0) for r in range(len(REGIONS))])
  dist = lambda a, b: np.abs(mean[idx[a]] - mean[idx[b]]).sum()
  far = dist("compact_vm", "epicardium")
  assert dist("compact_vm", "trabecular_vm") < 0.35 * far
  assert dist("epicardium", "av_mesenchyme") < 0.6 * far
  # A single spot's composition is often closer to the other region's mean.
  for a, b in (("compact_vm", "trabecular_vm"), ("epicardium", "av_mesenchyme")):
    spots = props[np.isin(region, [idx[a], idx[b]])]
    truth = region[np.isin(region, [idx[a], idx[b]])] == idx[a]
    closer_a = (np.abs(spots - mean[idx[a]]).sum(axis=1)
                < np.abs(spots - mean[idx[b]]).sum(axis=1))
    assert (closer_a == truth).mean() < 0.8, (a, b)


def test_context_decides_the_region(sections):
  """Neighbours disambiguate: held-out sections, spot vs spot + ring-1/2 means; the gain
  comes from spatial neighbours (random spots of the same section give none)."""
  section, y = _codes(sections, "section"), _codes(sections, "region")
  train, test = section < 4, section >= 4
  expr = _log_norm(sections.X)
  z = PCA(20, random_state=0).fit(expr[train]).transform(expr)
  ring1, ring2 = _rings(sections, 2)

  def accuracy(features: np.ndarray) -> float:
    scaler = StandardScaler().fit(features[train])
    clf = LogisticRegression(max_iter=1_000).fit(scaler.transform(features[train]), y[train])
    return float((clf.predict(scaler.transform(features[test])) == y[test]).mean())

  spot = accuracy(z)
  context = accuracy(np.hstack([z, ring1 @ z, ring2 @ z]))
  perm = np.arange(len(y))
  rng = np.random.default_rng(0)
  for s in np.unique(section):
    members = np.flatnonzero(section == s)
    perm[members] = rng.permutation(members)
  shuffled = accuracy(np.hstack([z, (ring1 @ z)[perm], (ring2 @ z)[perm]]))
  assert spot > 0.35, spot                                  # regions are informative
  assert context > spot + 0.05, (spot, context)
  assert shuffled < spot + 0.03, (spot, shuffled)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("kwargs, match", [
    (dict(n_sections=0), "n_sections"),
    (dict(spots_per_section=50), "spots_per_section"),
    (dict(mean_cell_umis=0.0), "mean_cell_umis"),
    (dict(concentration=-1.0), "concentration"),
    (dict(boundary_mix=1.5), "boundary_mix"),
    (dict(mean_cells=12.0), "max_cells"),
    (dict(section_depth_sd=-0.1), "section_depth_sd"),
    (dict(n_genes=20), "n_genes"),
])
def test_bad_arguments_raise_naming_the_fix(kwargs, match):
  with pytest.raises(DataError, match=match) as error:
    section_simulator.simulate_sections(**{"spots_per_section": 200, "n_genes": 100,
                                           **kwargs})
  assert any(word in str(error.value) for word in ("pass", "raise", "lower"))

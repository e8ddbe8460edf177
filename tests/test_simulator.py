"""Tests of the embedded simulator: schema, count realism, biology and reproducibility."""
import hashlib
import json

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import NearestNeighbors

from cardiac_jax.config_lib import DAYS, POPULATIONS
from cardiac_jax.data import simulator
from cardiac_jax.data.errors import DataError

N_CELLS = 4_000
N_GENES = 2_000


@pytest.fixture(scope="module")
def cells():
  return simulator.simulate_cells(n_cells=N_CELLS, n_genes=N_GENES, seed=0)


@pytest.fixture(scope="module")
def spots():
  return simulator.simulate_spatial(n_spots=1_500, n_genes=N_GENES, seed=0)


def _log_norm(counts: sp.csr_matrix) -> np.ndarray:
  """Library-size normalise to 1e4 and log1p, dense (small test matrices only)."""
  counts = counts.astype(np.float64)
  total = np.asarray(counts.sum(axis=1)).ravel()
  out = sp.csr_matrix(counts.multiply(1e4 / total[:, None]))
  out.data = np.log1p(out.data)
  return out.toarray()


def _gene(adata, name: str) -> int:
  return int(np.flatnonzero(adata.var_names == name)[0])


# --------------------------------------------------------------------------- schema


def test_schema_matches_gse175634(cells):
  assert sp.issparse(cells.X) and cells.X.format == "csr"
  assert cells.X.dtype == np.int32 and cells.shape == (N_CELLS, N_GENES)
  assert list(cells.obs["diffday"].cat.categories) == list(DAYS)
  assert set(cells.obs["type"].cat.categories) == set(POPULATIONS) | {"UNK"}
  assert cells.obs["individual"].nunique() == 19
  dpt = cells.obs["dpt_pseudotime"].to_numpy()
  assert dpt.min() >= 0.0 and dpt.max() <= 1.0
  assert cells.var_names.is_unique and cells.obs_names.is_unique
  for pop, markers in simulator.MARKERS.items():
    assert set(markers) <= set(cells.var_names), pop
  assert {"ACTB", "GAPDH", "MALAT1"} <= set(cells.var_names)
  json.dumps(cells.uns["simulator"])  # JSON-able scalars only
  assert "fate_bias" in cells.obs


def test_writes_and_reads_h5ad(tmp_path):
  import anndata
  adata = simulator.simulate_cells(n_cells=300, n_genes=120, n_donors=4, seed=1)
  path = tmp_path / "sim.h5ad"
  adata.write_h5ad(path)
  back = anndata.read_h5ad(path)
  assert (back.X != adata.X).nnz == 0
  assert list(back.obs["diffday"].cat.categories) == list(DAYS)
  assert back.uns["simulator"]["seed"] == 1


def test_too_few_genes_raises():
  with pytest.raises(DataError, match="n_genes"):
    simulator.simulate_cells(n_cells=10, n_genes=20)
  with pytest.raises(DataError, match="n_spots"):
    simulator.simulate_spatial(n_spots=3, n_genes=200)


def test_programmes_are_deterministic_distributions():
  a, b = simulator.make_programmes(300, seed=4), simulator.make_programmes(300, seed=4)
  np.testing.assert_array_equal(a.proportions, b.proportions)
  np.testing.assert_allclose(a.proportions.sum(axis=1), 1.0, rtol=1e-9)
  assert not np.allclose(a.proportions, simulator.make_programmes(300, seed=5).proportions)
  assert (a.dispersion > 0).all() and a.proportions.shape == (7, 300)


# --------------------------------------------------------------------------- counts


def test_counts_are_sparse_overdispersed_with_varying_depth(cells):
  x = cells.X
  assert (x.data > 0).all()
  assert 1.0 - x.nnz / np.prod(x.shape) >= 0.80
  total = np.asarray(x.sum(axis=1)).ravel()
  assert total.std() / total.mean() >= 0.3
  # Negative binomial: within one homogeneous group, after removing library size,
  # well-expressed genes vary more than Poisson would allow.
  group = ((cells.obs["diffday"] == "day0") & (cells.obs["type"] == "IPSC")).to_numpy()
  counts = x[group].toarray().astype(np.float64)
  size = total[group] / total[group].mean()
  mu = counts.mean(axis=0)
  expressed = (mu > 2.0) & (mu < 50.0)
  assert expressed.sum() > 20
  resid = counts[:, expressed] - np.outer(size, mu[expressed])
  poisson_var = (np.outer(size, mu[expressed])).mean(axis=0)
  assert np.median(resid.var(axis=0) / poisson_var) > 1.3


def test_markers_peak_in_their_population(cells):
  expr = _log_norm(cells.X)
  labels = cells.obs["type"].to_numpy()
  for pop in POPULATIONS + ("UNK",):
    gene = simulator.MARKERS[pop][0]
    means = pd.Series(expr[:, _gene(cells, gene)]).groupby(labels).mean()
    assert means.idxmax() == pop, (gene, means.to_dict())


def test_donor_batch_effect_and_cm_efficiency(cells):
  obs = cells.obs
  late = obs["diffday"].isin(["day11", "day15"]) & obs["type"].isin(["CM", "CF"])
  late_obs = obs[late]
  per_donor = (late_obs["type"] == "CM").groupby(late_obs["individual"], observed=True)
  frac = per_donor.mean()[per_donor.size() >= 15]
  assert len(frac) >= 10
  assert frac.max() - frac.min() > 0.25, frac.to_dict()
  # Batch effect: per-donor means of the same population differ more than under a
  # permutation of the donor labels.
  group = (obs["type"] == "IPSC").to_numpy()
  expr = _log_norm(cells.X[group])
  expr = expr[:, expr.mean(axis=0) > 0.5]
  donors = obs["individual"].cat.codes.to_numpy()[group]

  def between_donor_var(d):
    means = np.stack([expr[d == k].mean(axis=0) for k in np.unique(d)])
    return means.var(axis=0).mean()

  permuted = np.random.default_rng(0).permutation(donors)
  assert between_donor_var(donors) > 1.5 * between_donor_var(permuted)


# --------------------------------------------------------------------------- biology


def test_composition_per_day_follows_the_differentiation(cells):
  table = pd.crosstab(cells.obs["diffday"], cells.obs["type"], normalize="index")
  share = lambda day, pops: table.loc[day, list(pops)].sum()
  assert share("day0", ["IPSC"]) > 0.85
  assert share("day1", ["IPSC", "MES"]) > 0.9 and share("day1", ["MES"]) > 0.5
  assert share("day3", ["MES", "CMES"]) > 0.8
  assert share("day5", ["CMES", "PROG"]) > 0.7
  assert share("day7", ["PROG", "CM", "CF"]) > 0.8
  for day in ("day11", "day15"):
    assert share(day, ["CM", "CF"]) > 0.8
  for day in ("day0", "day1", "day3"):
    assert share(day, ["CM", "CF"]) == 0.0
  counts = cells.obs["type"].value_counts()
  assert counts["CF"] > 1.3 * counts["CM"]
  assert 0.02 < counts["UNK"] / N_CELLS < 0.07
  # Pseudotime advances with the day.
  med = cells.obs.groupby("diffday", observed=True)["dpt_pseudotime"].median()
  assert np.all(np.diff(med.loc[list(DAYS)].to_numpy()) > 0)


def test_fate_bias_decides_the_branch_and_is_weakly_primed_in_prog(cells):
  obs = cells.obs
  fate = obs["fate_bias"].to_numpy()
  labels = obs["type"].to_numpy()
  assert np.all(fate[labels == "CM"] > 0) and np.all(fate[labels == "CF"] <= 0)
  prog = labels == "PROG"
  expr = _log_norm(cells.X[prog])
  cols = {g: _gene(cells, g) for g in simulator.PRIMING}
  score = sum(sign * expr[:, cols[g]] for g, sign in simulator.PRIMING.items())
  r = np.corrcoef(score, np.tanh(fate[prog] / 2))[0, 1]
  assert 0.1 < r < 0.7, r  # detectable but far from deterministic


def test_populations_overlap_like_real_cells(cells):
  """Per-cell logistic regression on PCA: informative but not separable blobs."""
  keep = (cells.obs["type"] != "UNK").to_numpy()
  expr = _log_norm(cells.X[keep])
  expr = (expr - expr.mean(axis=0)) / (expr.std(axis=0) + 1e-8)
  y = cells.obs["type"].to_numpy()[keep].astype(str)
  order = np.random.default_rng(0).permutation(len(y))
  train, test = order[: int(0.7 * len(y))], order[int(0.7 * len(y)):]
  pca = PCA(50, random_state=0).fit(expr[train])
  z = pca.transform(expr)
  clf = LogisticRegression(max_iter=1_000).fit(z[train], y[train])
  correct = clf.predict(z[test]) == y[test]
  assert 0.75 <= correct.mean() <= 0.95, correct.mean()
  # Errors concentrate on ambiguous cells at population boundaries.
  t = cells.obs["latent_time"].to_numpy()[keep][test]
  edge = np.abs(t - np.rint(t))
  interior = (edge < 0.2) & (t > 0.2) & (t < 3.8)
  boundary = (edge > 0.4) & (t > 0.2) & (t < 3.8)
  assert correct[interior].mean() > correct[boundary].mean() + 0.15


# --------------------------------------------------------------------------- reproducibility


def test_same_arguments_give_identical_data():
  kwargs = dict(n_cells=600, n_genes=150, n_donors=5, seed=3)
  a, b = simulator.simulate_cells(**kwargs), simulator.simulate_cells(**kwargs)
  assert (a.X != b.X).nnz == 0
  pd.testing.assert_frame_equal(a.obs, b.obs)
  assert list(a.var_names) == list(b.var_names)
  c = simulator.simulate_cells(**{**kwargs, "seed": 4})
  assert (a.X != c.X).nnz > 0
  s1 = simulator.simulate_spatial(n_spots=200, n_genes=150, seed=2)
  s2 = simulator.simulate_spatial(n_spots=200, n_genes=150, seed=2)
  assert (s1.X != s2.X).nnz == 0
  np.testing.assert_array_equal(s1.obsm["proportions"], s2.obsm["proportions"])


def _digest(adata) -> str:
  """sha256 of the counts, obs, var_names and obsm: any change of a draw shows."""
  h = hashlib.sha256()
  for a in (adata.X.data, adata.X.indices, adata.X.indptr):
    h.update(np.ascontiguousarray(a).tobytes())
  h.update(adata.obs.to_csv().encode())
  h.update("\n".join(adata.var_names).encode())
  for key in sorted(adata.obsm):
    h.update(key.encode())
    h.update(np.ascontiguousarray(adata.obsm[key]).tobytes())
  return h.hexdigest()


@pytest.mark.parametrize("kwargs, digest", [
    (dict(n_cells=1_500, n_genes=300, n_donors=5, seed=3),
     "00f6b3d4421efbec4033bb8192d5280a4a6d79a9e4085b13761b650d2428bc39"),
    (dict(n_cells=5_000, n_genes=2_000, seed=0),
     "ea08b24fe427ab1ced4675b04476ef732e2210a3b0b588add8df3ae9ddf7218a"),
    (dict(n_cells=500, n_genes=150, n_donors=4, seed=11),
     "f6f3f2b4c1b08ae37fda7a8f0da3f1afc2b448c232a24f9e47908299fe28ff59"),
])
def test_simulate_cells_output_is_pinned(kwargs, digest):
  """Bit-identical to main before the clonal and section simulators shared its pieces
  (donors, stages, labels, expression, counts, smooth fields, the hex grid; digests
  computed at 4cdab14). A deliberate change of the snapshot model updates them."""
  assert _digest(simulator.simulate_cells(**kwargs)) == digest


def test_simulate_spatial_output_is_pinned():
  spots = simulator.simulate_spatial(n_spots=300, n_genes=150, seed=5)
  assert _digest(spots) == "ee349c2f80d481c456316fa829af7970f57e12304e7db56863dbabf5d24a4fa5"


def test_chunking_does_not_change_the_distribution():
  """The CSR assembly across chunks keeps rows aligned with their means."""
  rng = np.random.default_rng(0)
  means = np.zeros((50, 8), np.float32)
  means[np.arange(50), np.arange(50) % 8] = 30.0
  counts = simulator.sample_counts(lambda a, b: means[a:b], 50, np.full(8, 0.1), rng,
                                   chunk=7)
  assert counts.shape == (50, 8)
  np.testing.assert_array_equal(counts.toarray().argmax(axis=1), np.arange(50) % 8)


# --------------------------------------------------------------------------- spatial


def test_spatial_schema_and_shared_genes(spots, cells):
  assert list(spots.var_names) == list(cells.var_names)
  assert spots.X.format == "csr" and spots.X.dtype == np.int32
  assert abs(spots.n_obs - 1_500) < 150
  xy = spots.obsm["spatial"]
  assert xy.shape == (spots.n_obs, 2) and np.issubdtype(xy.dtype, np.floating)
  props = spots.obsm["proportions"]
  assert props.shape == (spots.n_obs, len(POPULATIONS))
  np.testing.assert_allclose(props.sum(axis=1), 1.0, atol=1e-6)
  assert list(spots.obs["type"].cat.categories) == list(POPULATIONS)
  np.testing.assert_array_equal(spots.obs["type"].cat.codes.to_numpy(), props.argmax(axis=1))
  assert {"CM", "CF", "PROG"} <= set(spots.obs["type"].unique())
  depth = np.median(np.asarray(spots.X.sum(axis=1)).ravel())
  assert 5_000 < depth < 20_000
  json.dumps(spots.uns["simulator"])


def test_spatial_hex_layout_and_coherent_regions(spots):
  xy = spots.obsm["spatial"]
  dist, idx = NearestNeighbors(n_neighbors=7).fit(xy).kneighbors(xy)
  # Hexagonal: interior spots have six equidistant nearest neighbours.
  six = np.isclose(dist[:, 1:], dist[:, 1:2]).all(axis=1)
  assert six.mean() > 0.7
  labels = spots.obs["type"].cat.codes.to_numpy()
  same = (labels[idx[:, 1:]] == labels[:, None]).mean()
  freq = np.bincount(labels) / len(labels)
  assert same > (freq**2).sum() + 0.2, (same, (freq**2).sum())
  # CF-rich epicardial rim: outermost spots hold more CF than the rest.
  centred = (xy - xy.mean(axis=0)) / (xy.max(axis=0) - xy.min(axis=0))
  radius = np.sqrt((centred**2).sum(axis=1))
  outer = radius > np.quantile(radius, 0.85)
  cf = spots.obsm["proportions"][:, POPULATIONS.index("CF")]
  assert cf[outer].mean() > 2 * cf[~outer].mean()

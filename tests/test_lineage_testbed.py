"""lineage_testbed: barcoding and destructive sampling (pure), and a tiny bed's schema."""
import json

import numpy as np
import pytest
import scipy.sparse as sp

from cardiac_jax import config_lib
from cardiac_jax.data import ingest
from cardiac_jax.data.errors import DataError
from cardiac_jax.studies import lineage_testbed as lt


def _toy_tree():
  """Root 0 divides in round 1 into 1, 2; 1 divides in round 2 (3, 4); 3 in round 4 (5, 6)."""
  parent = np.array([-1, 0, 0, 1, 1, 3, 3])
  birth = np.array([0, 1, 1, 2, 2, 4, 4], np.int32)
  death = np.array([1, 2, lt.NEVER, 4, lt.NEVER, lt.NEVER, lt.NEVER], np.int32)
  depth = np.array([0, 1, 1, 2, 2, 3, 3], np.int32)
  return parent, birth, death, depth


def test_clone_roots_are_the_ancestors_living_at_barcoding():
  parent, birth, death, depth = _toy_tree()
  assert list(lt.clone_roots(parent, birth, death, depth, 1)) == [-1, 1, 2, 1, 1, 1, 1]
  assert list(lt.clone_roots(parent, birth, death, depth, 2)) == [-1, -1, 2, 3, 4, 3, 3]


def test_sampling_removes_taken_cells_and_their_future_subtrees():
  parent, birth, death, depth = _toy_tree()

  class Always:
    def random(self, n):
      return np.zeros(n)

  node, taken = lt.sample_destructively(parent, birth, death, depth, [2], [1.0], Always())
  assert sorted(node) == [2, 3, 4] and set(taken) == {2}
  # Taking everything in round 2 leaves nobody for round 4: 5 and 6 never exist.
  node, taken = lt.sample_destructively(parent, birth, death, depth, [2, 4], [1.0, 1.0],
                                        Always())
  assert sorted(node) == [2, 3, 4]


def test_sampling_on_a_random_forest_is_destructive():
  rng = np.random.default_rng(0)
  n = 4000
  parent = np.full(n, -1)
  birth = np.zeros(n, np.int32)
  death = np.full(n, lt.NEVER, np.int32)
  depth = np.zeros(n, np.int32)
  nxt, frontier = 1, [0]
  for t in range(1, 30):                          # every cell divides with p = 0.6 per round
    new = []
    for c in frontier:
      if nxt + 2 > n or rng.random() > 0.6:
        new.append(c)
        continue
      death[c] = t
      for _ in range(2):
        parent[nxt], birth[nxt], depth[nxt] = c, t, depth[c] + 1
        new.append(nxt)
        nxt += 1
    frontier = new
  parent, birth, death, depth = parent[:nxt], birth[:nxt], death[:nxt], depth[:nxt]
  rounds = (8, 12, 16)
  node, taken = lt.sample_destructively(parent, birth, death, depth, rounds, (0.3, 0.3, 0.5),
                                        np.random.default_rng(1))
  assert len(np.unique(node)) == len(node) > 50
  assert lt.alive(birth[node], death[node], taken).all()
  sampled = set(node.tolist())
  for c in node:                                  # no ancestor of a sampled cell was sampled
    p = parent[c]
    while p >= 0:
      assert p not in sampled
      p = parent[p]


def test_settings_are_checked():
  with pytest.raises(DataError, match="after barcode_round"):
    lt._check(lt.BedSettings(barcode_round=10, sample_rounds=(9,), sample_fractions=(0.2,)))
  with pytest.raises(DataError, match="one fraction per round"):
    lt._check(lt.BedSettings(sample_rounds=(10, 12), sample_fractions=(0.2,)))


def test_tiny_bed_schema_and_ingest(tmp_path):
  pytest.importorskip("lineagesim", reason="lineage-simulator is not installed: "
                      "pip install -e '.[lineage]' (pins lineage-simulator==0.1.2)")
  import anndata as ad  # pylint: disable=g-import-not-at-top
  np.random.seed(123)
  before = np.random.get_state()[1].copy()
  settings = lt.BedSettings(n_founders=2, tree_nodes=4000, barcode_round=5,
                            sample_rounds=(7, 9, 11), sample_fractions=(0.3, 0.2, 0.2),
                            commit_depth=8, n_genes=60, seed=3)
  path = lt.write_h5ad(lt.simulate_bed(settings), tmp_path / "bed.h5ad")
  np.testing.assert_array_equal(np.random.get_state()[1], before)   # global RNG untouched
  adata = ad.read_h5ad(path)
  meta = json.loads(adata.uns["lineage_testbed"])
  days = meta["days"]
  assert days[:3] == ["d2", "d4", "d6"] and len(days) == 4
  assert sp.issparse(adata.X) and np.issubdtype(adata.X.dtype, np.integer)
  day = adata.obs[lt.TIME_KEY]
  assert list(day.cat.categories) == days and day.cat.ordered
  assert set(adata.obs[lt.STATE_KEY].astype(str)) <= {lt.PROGENITOR, *lt.FATES}
  assert len(np.unique(adata.obs["node"])) == adata.n_obs              # sampled once each
  # Each barcoded cell is in exactly one clone, and obs["clone"] names it.
  x_clone = sp.csr_matrix(adata.obsm[lt.CLONE_OBSM])
  clone = adata.obs[lt.CLONE_KEY].astype(str).to_numpy()
  per_cell = np.diff(x_clone.indptr)
  assert set(per_cell) <= {0, 1}
  assert ((per_cell == 1) == (clone != "")).all()
  names = np.asarray(adata.uns["clone_names"])
  assert (names[x_clone.indices] == clone[per_cell == 1]).all()
  assert 0.7 < (clone != "").mean() < 1.0                            # barcode_efficiency 0.9
  # Clones span several days; fate-day cells all carry a fate.
  spans = adata.obs[clone != ""].groupby(clone[clone != ""], observed=True)[lt.TIME_KEY].nunique()
  assert spans.max() >= 3 and (spans >= 2).mean() > 0.3
  fate_day = day.astype(str).to_numpy() == days[-1]
  assert set(adata.obs[lt.STATE_KEY].astype(str)[fate_day]) == set(lt.FATES)
  table = lt.clone_fates(adata, days[-1])
  assert set(table["label"]) == {0, 1}
  assert ((table["frac"] > 0.5) == (table["label"] == 1)).all()
  # The project's ingest reads it.
  cfg = config_lib.base_config().data
  cfg.population_key, cfg.time_key, cfg.donor_key = lt.STATE_KEY, lt.TIME_KEY, ""
  cfg.classes, cfg.drop_labels = (), ()
  cells = ingest.prepare_cells(ingest.load_h5ad(path), cfg)
  assert cells.time_labels == tuple(days) and cells.n_cells == adata.n_obs

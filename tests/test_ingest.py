"""Tests for cardiac_jax.data.ingest: validated Cells/Spots and the bad-input errors."""
import numpy as np
import pytest
import scipy.sparse as sp

from cardiac_jax import config_lib
from cardiac_jax.data import ingest
from cardiac_jax.data import simulator
from cardiac_jax.data.errors import DataError


@pytest.fixture(scope="module")
def cells_adata():
  return simulator.simulate_cells(n_cells=700, n_genes=80, n_donors=3, seed=1)


@pytest.fixture
def adata(cells_adata):
  return cells_adata.copy()


@pytest.fixture
def data_cfg():
  return config_lib.base_config().data


@pytest.fixture
def spots_adata():
  """A simulated section; two spots relabelled as a non-class population."""
  spots = simulator.simulate_spatial(n_spots=120, n_genes=80, cells_per_spot=8, seed=0)
  labels = spots.obs["type"].astype(str).to_numpy()
  labels[[3, 17]] = "UNK"
  spots.obs["type"] = labels
  return spots


def test_order_time_labels_numeric_not_lexicographic():
  labels = ["day11", "day0", "day3", "day15", "day1", "day0"]
  assert ingest.order_time_labels(labels) == ("day0", "day1", "day3", "day11", "day15")
  assert ingest.order_time_labels(["D3", "10", "day 2"]) == ("day 2", "D3", "10")


def test_order_time_labels_explicit_wins_and_must_cover():
  assert ingest.order_time_labels(["b", "a"], explicit=("b", "a", "c")) == ("b", "a", "c")
  with pytest.raises(DataError, match=r"not in config.data.time_order"):
    ingest.order_time_labels(["a", "z"], explicit=("a", "b"))


@pytest.mark.parametrize("labels", [["early", "late"], ["day1", "D1"]])
def test_order_time_labels_unorderable(labels):
  with pytest.raises(DataError, match="time_order"):
    ingest.order_time_labels(labels)


def test_prepare_cells_drops_unk_and_encodes(adata, data_cfg):
  cells = ingest.prepare_cells(adata, data_cfg)
  population = adata.obs["type"].astype(str).to_numpy()
  kept = population != "UNK"
  assert cells.counts.shape == (kept.sum(), adata.n_vars)
  assert sp.isspmatrix_csr(cells.counts) and cells.counts.dtype == np.float32
  np.testing.assert_array_equal(np.asarray(cells.class_names)[cells.labels], population[kept])
  np.testing.assert_array_equal(np.asarray(cells.time_labels)[cells.time_index],
                                adata.obs["diffday"].astype(str).to_numpy()[kept])
  assert cells.time_labels == config_lib.DAYS
  np.testing.assert_array_equal(cells.obs_names, adata.obs_names.to_numpy()[kept])
  np.testing.assert_array_equal(cells.donors, adata.obs["individual"].astype(str)[kept])
  # Counts are the same numbers, row for row.
  np.testing.assert_array_equal(cells.counts.toarray(), adata.X[kept].toarray())
  assert cells.labels.dtype == np.int32 and cells.time_index.dtype == np.int32


def test_prepare_cells_dense_and_layer_give_same_result(adata, data_cfg):
  ref = ingest.prepare_cells(adata, data_cfg)
  dense = adata.copy()
  dense.X = adata.X.toarray().astype(np.float64)
  got = ingest.prepare_cells(dense, data_cfg)
  assert (got.counts != ref.counts).nnz == 0
  layered = adata.copy()
  layered.layers["counts"] = adata.X.copy()
  layered.X = sp.csr_matrix(np.log1p(adata.X.toarray().astype(np.float32)))
  data_cfg.counts_layer = "counts"
  got = ingest.prepare_cells(layered, data_cfg)
  assert (got.counts != ref.counts).nnz == 0


def test_missing_obs_key_lists_present(adata, data_cfg):
  data_cfg.population_key = "cell_type"
  with pytest.raises(DataError, match=r"'cell_type'.*present obs keys.*'type'"):
    ingest.prepare_cells(adata, data_cfg)


def test_configured_population_absent(adata, data_cfg):
  data_cfg.classes = config_lib.POPULATIONS + ("EPI",)
  with pytest.raises(DataError, match=r"\['EPI'\] have no cells; populations present"):
    ingest.prepare_cells(adata, data_cfg)


def test_unlisted_population_raises(adata, data_cfg):
  data_cfg.drop_labels = ()
  with pytest.raises(DataError, match=r"\['UNK'\] are neither"):
    ingest.prepare_cells(adata, data_cfg)


def test_log_normalised_input_detected(adata, data_cfg):
  x = adata.X.astype(np.float32)
  x.data = np.log1p(x.data / 3)
  adata.X = x
  with pytest.raises(DataError, match="looks log-normalised; point config.data.counts_layer"):
    ingest.prepare_cells(adata, data_cfg)


def test_non_integer_large_values(adata, data_cfg):
  adata.X = adata.X.astype(np.float32) * 1.5 + sp.csr_matrix(np.full(adata.shape, 30.5,
                                                                      np.float32))
  with pytest.raises(DataError, match="non-integer values"):
    ingest.prepare_cells(adata, data_cfg)


@pytest.mark.parametrize("bad, message", [(np.nan, "NaN/Inf"), (np.inf, "NaN/Inf"),
                                          (-2.0, "negative")])
@pytest.mark.parametrize("dense", [False, True])
def test_bad_values(adata, data_cfg, bad, message, dense):
  x = adata.X.astype(np.float32).toarray()
  x[5, 3] = bad
  adata.X = x if dense else sp.csr_matrix(x)
  with pytest.raises(DataError, match=message):
    ingest.prepare_cells(adata, data_cfg)


def test_missing_counts_layer_lists_layers(adata, data_cfg):
  adata.layers["raw"] = adata.X.copy()
  data_cfg.counts_layer = "counts"
  with pytest.raises(DataError, match=r"'counts' not found; layers present: \['raw'\]"):
    ingest.prepare_cells(adata, data_cfg)


def test_time_label_not_in_time_order(adata, data_cfg):
  data_cfg.time_order = config_lib.DAYS[:-1]
  with pytest.raises(DataError, match=r"\['day15'\] are not in config.data.time_order"):
    ingest.prepare_cells(adata, data_cfg)


def test_unorderable_time_labels(adata, data_cfg):
  adata.obs["diffday"] = np.where(adata.obs["diffday"].astype(str) == "day0", "start", "x1")
  with pytest.raises(DataError, match="cannot order time labels"):
    ingest.prepare_cells(adata, data_cfg)


def test_empty_time_point(adata, data_cfg):
  data_cfg.time_order = config_lib.DAYS[:3] + ("day4",) + config_lib.DAYS[3:]
  with pytest.raises(DataError, match=r"\['day4'\].*have no cells"):
    ingest.prepare_cells(adata, data_cfg)


def test_duplicate_gene_names(adata, data_cfg):
  names = adata.var_names.to_numpy().copy()
  names[1] = names[0]
  adata.var_names = names
  with pytest.raises(DataError, match="var_names_make_unique"):
    ingest.prepare_cells(adata, data_cfg)


def test_missing_donor_key_required_only_when_grouping(adata, data_cfg):
  del adata.obs["individual"]
  assert ingest.prepare_cells(adata, data_cfg).donors is None
  data_cfg.split.group_by_donor = True
  with pytest.raises(DataError, match="individual"):
    ingest.prepare_cells(adata, data_cfg)


def test_prepare_spots(spots_adata, data_cfg):
  spots = ingest.prepare_spots(spots_adata, data_cfg, config_lib.POPULATIONS)
  keep = spots_adata.obs["type"].astype(str).to_numpy() != "UNK"
  assert 0 < spots.n_spots == keep.sum() < spots_adata.n_obs
  assert spots.coords.dtype == np.float32 and spots.coords.shape == (keep.sum(), 2)
  np.testing.assert_allclose(spots.coords, spots_adata.obsm["spatial"][keep], rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(config_lib.POPULATIONS)[spots.labels],
                                spots_adata.obs["type"].astype(str)[keep])
  np.testing.assert_array_equal(spots.counts.toarray(), spots_adata.X[keep].toarray())


def test_spots_counts_checked_and_layer_fallback(spots_adata, data_cfg):
  spots_adata.layers["counts"] = spots_adata.X.copy()
  spots_adata.X = spots_adata.X.astype(np.float32) / 7
  with pytest.raises(DataError, match="spatial X"):
    ingest.prepare_spots(spots_adata, data_cfg, config_lib.POPULATIONS)
  data_cfg.counts_layer = "counts"   # no data.spatial.counts_layer: the cells' layer is used
  spots = ingest.prepare_spots(spots_adata, data_cfg, config_lib.POPULATIONS)
  assert spots.counts.sum() == spots_adata.layers["counts"].sum() - spots_adata.layers[
      "counts"][[3, 17]].sum()


def test_spots_without_coordinates(spots_adata, data_cfg):
  del spots_adata.obsm["spatial"]
  with pytest.raises(DataError, match=r"obsm\['spatial'\]"):
    ingest.prepare_spots(spots_adata, data_cfg, config_lib.POPULATIONS)


def test_load_h5ad_errors_and_round_trip(tmp_path, adata):
  with pytest.raises(DataError, match="no such file"):
    ingest.load_h5ad(tmp_path / "missing.h5ad")
  text = tmp_path / "counts.h5ad"
  text.write_text("not hdf5")
  with pytest.raises(DataError, match="not an h5ad"):
    ingest.load_h5ad(text)
  path = tmp_path / "cells.h5ad"
  adata.write_h5ad(path)
  loaded = ingest.load_h5ad(path)
  assert loaded.shape == adata.shape
  assert (loaded.X != adata.X).nnz == 0


def _toy(populations, times, n_genes=6, seed=0):
  """A tiny raw-count AnnData with the given per-cell population and time columns."""
  import anndata as ad  # pylint: disable=g-import-not-at-top
  import pandas as pd  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  x = sp.csr_matrix(rng.poisson(2.0, (len(populations), n_genes)).astype(np.int32))
  obs = pd.DataFrame({"pop": populations, "t": times},
                     index=[f"c{i}" for i in range(len(populations))])
  return ad.AnnData(X=x, obs=obs, var=pd.DataFrame(index=[f"g{i}" for i in range(n_genes)]))


def _toy_cfg(data_cfg, classes=()):
  data_cfg.population_key, data_cfg.time_key, data_cfg.donor_key = "pop", "t", ""
  data_cfg.classes, data_cfg.drop_labels = classes, ("junk",)
  return data_cfg


@pytest.mark.parametrize("labels, expected", [
    (["10", "2", "0", "2"], ("0", "2", "10")),
    (["1.5", "0.5", "10", "3"], ("0.5", "1.5", "3", "10")),
    (["-1", "0", "12", "1e1"], ("-1", "0", "1e1", "12")),
])
def test_order_time_labels_numeric_order_by_value(labels, expected):
  assert ingest.order_time_labels(labels) == expected
  assert ingest.order_time_labels(np.asarray(labels)) == expected


@pytest.mark.parametrize("labels, message", [
    (["0", "late"], "cannot order time labels"),
    (["1", "1.0"], "parse to the same time"),
    (["nan", "2"], "cannot order time labels"),
])
def test_order_time_labels_numeric_unorderable(labels, message):
  with pytest.raises(DataError, match=message):
    ingest.order_time_labels(labels)


def test_numeric_time_column_orders_itself(data_cfg):
  times = np.array([10, 2, 0, 2, 10, 0, 0.5, 0.5])       # a float column: "10.0", "0.5", ...
  toy = _toy(["a"] * 8, times)
  cells = ingest.prepare_cells(toy, _toy_cfg(data_cfg))
  assert cells.time_labels == ("0.0", "0.5", "2.0", "10.0")
  np.testing.assert_array_equal(np.asarray(cells.time_labels)[cells.time_index].astype(float),
                                times)
  ints = _toy(["a"] * 4, np.array([12, 3, 1, 3]))
  assert ingest.prepare_cells(ints, data_cfg).time_labels == ("1", "3", "12")


def test_empty_classes_take_every_population_by_mean_time(data_cfg):
  # zeta: mean time 0; beta: 1.0 (ties with alpha, broken by name); alpha: 1.0; mid: 1.5;
  # junk is dropped; the label vocabulary is never sorted by name alone.
  pops = ["zeta", "zeta", "beta", "beta", "alpha", "alpha", "mid", "mid", "junk"]
  times = ["0", "0", "0", "2", "1", "1", "1", "2", "0"]
  toy = _toy(pops, times)
  cells = ingest.prepare_cells(toy, _toy_cfg(data_cfg))
  assert cells.class_names == ("zeta", "alpha", "beta", "mid")
  assert ingest.derive_classes(np.asarray(pops[:-1]), np.asarray(times[:-1]).astype(int)) == \
      cells.class_names
  np.testing.assert_array_equal(np.asarray(cells.class_names)[cells.labels], pops[:-1])
  assert cells.labels.dtype == np.int32
  # An explicit list still wins and still rejects populations it does not name.
  assert ingest.prepare_cells(toy, _toy_cfg(data_cfg, ("mid", "alpha", "beta", "zeta"))
                              ).class_names == ("mid", "alpha", "beta", "zeta")
  with pytest.raises(DataError, match=r"\['zeta'\] are neither.*classes = \(\)"):
    ingest.prepare_cells(toy, _toy_cfg(data_cfg, ("mid", "alpha", "beta")))
  with pytest.raises(DataError, match="repeats a label"):
    ingest.prepare_cells(toy, _toy_cfg(data_cfg, ("mid", "mid")))


def test_empty_classes_with_everything_dropped(data_cfg):
  toy = _toy(["junk", "junk"], ["0", "1"])
  with pytest.raises(DataError, match="no cells left after dropping"):
    ingest.prepare_cells(toy, _toy_cfg(data_cfg))


def test_no_donor_column_is_quiet_and_grouping_still_needs_one(adata, data_cfg, caplog):
  import logging  # pylint: disable=g-import-not-at-top
  del adata.obs["individual"]
  for key in ("", "individual"):        # no key at all, or a key the data lacks
    data_cfg.donor_key = key
    with caplog.at_level(logging.WARNING):
      caplog.clear()
      assert ingest.prepare_cells(adata, data_cfg).donors is None
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
  data_cfg.split.group_by_donor = True
  with pytest.raises(DataError, match=r"no column 'individual' for the donors"):
    ingest.prepare_cells(adata, data_cfg)
  data_cfg.donor_key = ""
  with pytest.raises(DataError, match=r"donor_key is empty.*group_by_donor = False"):
    ingest.prepare_cells(adata, data_cfg)


def test_external_testbed_writes_a_file_ingest_accepts(tmp_path, data_cfg):
  """experiments/external_testbed.py (needs the optional `external` extra)."""
  pytest.importorskip("markovmodus")
  from cardiac_jax.studies import external_testbed as testbed  # pylint: disable=g-import-not-at-top
  tree = testbed.TREES["a"]
  adata = testbed.simulate_time_course(tree, 120, seed=3, time_points=(1, 4, 10), n_genes=200)
  path = testbed.write_h5ad(adata, tmp_path / "ext.h5ad")
  assert [p.name for p in tmp_path.iterdir()] == ["ext.h5ad"]     # no temp file left
  flags = dict(f.removeprefix("--config.data.").split("=", 1)
               for f in testbed.overrides(path, testbed.time_ordered_classes(adata),
                                          tree["fate_pair"]))
  assert flags["fate_classes"] == "('fateA','fateB')"
  assert not any("fate_classes" in f for f in testbed.overrides(path))
  assert flags["source"] == "h5ad" and flags["path"] == str(path.resolve())
  assert flags["spatial.enabled"] == "false" and flags["donor_key"] == ""
  data_cfg.population_key, data_cfg.time_key = flags["population_key"], flags["time_key"]
  data_cfg.donor_key, data_cfg.classes, data_cfg.drop_labels = "", (), ()
  loaded = ingest.load_h5ad(path)
  assert sp.isspmatrix_csr(loaded.X) and np.issubdtype(loaded.X.dtype, np.integer)
  assert testbed.TIME_KEY in loaded.obs and "individual" not in loaded.obs
  cells = ingest.prepare_cells(loaded, data_cfg)
  assert cells.n_cells == 120 and cells.donors is None
  assert cells.time_labels == ("1", "4", "10")
  assert cells.class_names[0] == "root"
  assert set(cells.class_names) <= set(tree["states"])
  assert cells.class_names == testbed.time_ordered_classes(loaded)

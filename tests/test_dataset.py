"""build_dataset on the debug preset: split safety, real temporal structure, cache."""
import logging
import time

import numpy as np
import pytest
from scipy import spatial

from cardiac_jax import config_lib
from cardiac_jax import fileio
from cardiac_jax import progress as progress_lib
from cardiac_jax.data import dataset as dataset_lib
from cardiac_jax.data import errors
from cardiac_jax.data import ingest
from cardiac_jax.data import preprocess
from cardiac_jax.data import simulator
from cardiac_jax.data import snapshot
from cardiac_jax.data import sources
from cardiac_jax.data import splits


def _cfg(tmp_path=None):
  cfg = config_lib.preset("debug").data
  if tmp_path is not None:
    cfg.cache_dir = str(tmp_path)
  return cfg


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  cfg = _cfg(tmp_path_factory.mktemp("ds"))
  timings = {}
  start = time.perf_counter()
  ds = dataset_lib.build_dataset(cfg, timings=timings)
  build_s = time.perf_counter() - start
  s = cfg.simulator
  cells = ingest.prepare_cells(
      simulator.simulate_cells(s.n_cells, s.n_genes, s.n_donors, s.seed), cfg)
  return cfg, ds, cells, timings, build_s


def test_shapes_and_layout(built):
  cfg, ds, cells, _, _ = built
  n_pcs = cfg.preprocess.n_pcs
  assert ds.x.dtype == np.float32 and ds.y.dtype == np.int32 and ds.mask.dtype == np.float32
  assert ds.split.dtype == np.int8 and ds.modality.dtype == np.int8
  assert ds.source_index.dtype == np.int64
  assert ds.length == cfg.sequences.length and ds.num_features == n_pcs + 2
  assert ds.class_names == tuple(cfg.classes) == cells.class_names
  assert (ds.mask == 1).all()
  np.testing.assert_array_equal(ds.x[..., n_pcs + 1], np.broadcast_to(ds.modality[:, None], ds.mask.shape))
  assert len(ds.part("train")) + len(ds.part("val")) + len(ds.part("test")) == len(ds)


def test_no_cell_or_spot_in_two_splits(built):
  _, ds, _, _, _ = built
  for m in (0, 1):
    sel = ds.modality == m
    assert sel.any()
    idx = ds.source_index[sel].ravel()
    spl = np.repeat(ds.split[sel], ds.length)
    # An index seen in two splits would have two distinct (index, split) pairs.
    pairs = np.unique(np.stack([idx, spl]), axis=1)
    assert np.unique(pairs[0]).size == pairs.shape[1], f"modality {m} shares items"


def test_temporal_sequences_run_forward_and_end_at_the_anchor(built):
  cfg, ds, cells, _, _ = built
  t = ds.modality == 0
  days = cells.time_index[ds.source_index[t]]
  assert (np.diff(days, axis=1) >= 0).all()
  np.testing.assert_allclose(ds.x[t, :, cfg.preprocess.n_pcs], days / (len(cells.time_labels) - 1))
  np.testing.assert_array_equal(cells.labels[ds.source_index[t, -1]], ds.y[t])
  # Late populations start on the first day: the walk crosses the time course.
  cm = t & (ds.y == ds.class_names.index("CM"))
  assert (cells.time_index[ds.source_index[cm, 0]] == 0).mean() > 0.9


def test_consecutive_steps_are_near_neighbours(built):
  cfg, ds, cells, _, _ = built
  n_pcs = cfg.preprocess.n_pcs
  sel = (ds.split == 0) & (ds.modality == 0)
  pcs, src = ds.x[sel, :, :n_pcs], ds.source_index[sel]
  same_day = cells.time_index[src[:, 1:]] == cells.time_index[src[:, :-1]]
  step = np.linalg.norm(pcs[:, 1:] - pcs[:, :-1], axis=-1)[same_day]
  # Random pairs of same-day cells drawn from the same sequences' cells.
  rng = np.random.default_rng(0)
  flat_x, flat_d = pcs.reshape(-1, n_pcs), cells.time_index[src.ravel()]
  a, b = rng.integers(flat_d.size, size=(2, 20000))
  ok = (flat_d[a] == flat_d[b]) & (a != b)
  rand = np.linalg.norm(flat_x[a[ok]] - flat_x[b[ok]], axis=-1)
  assert step.mean() < 0.85 * rand.mean(), (step.mean(), rand.mean())   # ~0.71 measured


def test_each_step_is_among_the_k_nearest_of_its_split_and_day(built):
  cfg, ds, cells, _, _ = built
  k = cfg.sequences.k_neighbors
  cell_split = splits.split_cells(cells.labels, cfg.split.fractions, cfg.split.seed)
  _, pp_path = dataset_lib.cache_paths(cfg)
  pcs = preprocess.Preprocessor.load(pp_path).transform(cells.counts, cells.gene_names)
  t = ds.modality == 0
  src, seq_split = ds.source_index[t], ds.split[t]
  rng = np.random.default_rng(0)
  rows = rng.integers(src.shape[0], size=300)
  cols = rng.integers(src.shape[1] - 1, size=300)
  later, earlier = src[rows, cols + 1], src[rows, cols]   # the walk went later -> earlier
  for a, b, s in zip(later, earlier, seq_split[rows]):
    pool = np.flatnonzero((cell_split == s) & (cells.time_index == cells.time_index[b]))
    pool = pool[pool != a]
    assert b in pool
    d = np.linalg.norm(pcs[pool] - pcs[a], axis=1)
    # Tolerance for exact ties (cells with identical profiles) and float rounding.
    assert np.sum(d < np.linalg.norm(pcs[b] - pcs[a]) * (1 - 1e-4)) < k


def test_class_counts_per_split(built):
  cfg, ds, _, _, _ = built
  want = splits.allocate(cfg.sequences.per_population, cfg.split.fractions)
  t = ds.modality == 0
  for s in range(3):
    got = np.bincount(ds.y[t & (ds.split == s)], minlength=ds.num_classes)
    np.testing.assert_array_equal(got, np.full(ds.num_classes, want[s]))
  sp = ds.modality == 1
  np.testing.assert_array_equal(
      np.bincount(ds.split[sp], minlength=3),
      splits.allocate(cfg.sequences.spatial_total, cfg.split.fractions))
  assert ds.meta["temporal_counts"]["val"]["CM"] == want[1]


def test_spatial_walks_end_at_a_spot_of_the_label(built):
  cfg, ds, _, _, _ = built
  sp_cfg = cfg.spatial
  spots = ingest.prepare_spots(
      simulator.simulate_spatial(sp_cfg.n_spots, cfg.simulator.n_genes, sp_cfg.cells_per_spot,
                                 sp_cfg.seed), cfg, ds.class_names)
  sp = ds.modality == 1
  np.testing.assert_array_equal(spots.labels[ds.source_index[sp, -1]], ds.y[sp])
  assert set(ds.meta["spatial_classes"]) >= {ds.class_names[c] for c in np.unique(ds.y[sp])}
  assert (ds.x[sp, :, cfg.preprocess.n_pcs] == 1.0).all()
  hop = np.linalg.norm(np.diff(spots.coords[ds.source_index[sp]], axis=1), axis=-1)
  assert (hop <= 1.5 * splits.spot_spacing(spots.coords) + 1e-3).all()


def test_held_out_spots_keep_a_buffer_from_other_splits(built):
  """No used val/test spot lies within the buffer of a used spot of another split.

  Measured at 1.0 spacing for val without the buffer on this preset.
  """
  cfg, ds, _, _, _ = built
  sp_cfg = cfg.spatial
  spots = ingest.prepare_spots(
      simulator.simulate_spatial(sp_cfg.n_spots, cfg.simulator.n_genes, sp_cfg.cells_per_spot,
                                 sp_cfg.seed), cfg, ds.class_names)
  reach = sp_cfg.buffer_spacings * splits.spot_spacing(spots.coords)
  sp = ds.modality == 1
  used = {s: np.unique(ds.source_index[sp & (ds.split == s)]) for s in range(3)}
  for s in (1, 2):
    assert used[s].size > 0
    others = np.concatenate([used[o] for o in range(3) if o != s])
    dist, _ = spatial.cKDTree(spots.coords[others]).query(spots.coords[used[s]])
    assert dist.min() > reach, (splits.SPLITS[s], dist.min(), reach)
  buffered = ds.meta["spots_buffered"]
  assert buffered["train"] == 0 and buffered["val"] + buffered["test"] > 0
  assert sum(ds.meta["spots_per_split"].values()) + sum(buffered.values()) == spots.n_spots


def test_spatial_classes_are_chosen_from_training_spots_only():
  # 100 train, 40 val, 20 test spots; class 2 is rare in train, common in val/test.
  split = np.repeat([0, 1, 2, splits.UNUSED], [100, 40, 20, 30]).astype(np.int8)
  labels = np.concatenate([np.repeat([0, 1, 2], [60, 38, 2]), np.repeat([0, 1, 2], [10, 10, 20]),
                           np.repeat([0, 1, 2], [5, 5, 10]), np.full(30, 2)])
  names = ("a", "b", "c")
  plan_fn = snapshot.spatial_plan
  plan, chosen = plan_fn(labels, split, names, 30, (0.6, 0.3, 0.1))
  assert chosen == [0, 1]                    # c: 2 train spots promise < 3 in test
  assert plan[:, 2].sum() == 0 and plan.sum() == 30
  # Held-out labels do not change the choice: relabel every val/test spot as c.
  relabelled = np.where((split == 1) | (split == 2), 2, labels)
  with pytest.raises(errors.DataError, match="no spot of any spatial class"):
    plan_fn(relabelled, split, names, 30, (0.6, 0.3, 0.1))
  # A chosen class missing from one held-out split hands its share to the others there.
  no_b_in_test = np.where((split == 2) & (labels == 1), 2, labels)
  plan, chosen = plan_fn(no_b_in_test, split, names, 30, (0.6, 0.3, 0.1))
  assert chosen == [0, 1]
  assert plan[2, 1] == 0 and plan[2, 0] == plan[2].sum() == 3
  assert plan[1, 0] > 0 and plan[1, 1] > 0
  # Too few spots even with reuse is still an error.
  scarce = np.where((split == 2) & (labels == 0), 2, labels)
  scarce[np.flatnonzero((split == 2) & (labels == 2))[0]] = 0     # one 'a' spot in test
  plan_fn(scarce, split, names, 30, (0.6, 0.3, 0.1))               # 2 sequences, reuse ok
  with pytest.raises(errors.DataError, match="'a' was chosen from the training spots but the "
                                             "test split has only 1"):
    plan_fn(scarce, split, names, 300, (0.6, 0.3, 0.1))


def test_preprocessing_fitted_on_train_cells_only(built):
  cfg, ds, cells, _, _ = built
  n_pcs = cfg.preprocess.n_pcs
  split = splits.split_cells(cells.labels, cfg.split.fractions, cfg.split.seed)
  train_pp = preprocess.fit_preprocessor(cells.counts, cells.gene_names,
                                         np.flatnonzero(split == 0), cfg.preprocess)
  all_pp = preprocess.fit_preprocessor(cells.counts, cells.gene_names,
                                       np.arange(cells.counts.shape[0]), cfg.preprocess)
  t = ds.modality == 0
  src = ds.source_index[t]
  pcs_train = train_pp.transform(cells.counts, cells.gene_names)
  pcs_all = all_pp.transform(cells.counts, cells.gene_names)
  np.testing.assert_allclose(ds.x[t, :, :n_pcs], pcs_train[src], atol=1e-4)
  assert np.abs(ds.x[t, :, :n_pcs] - pcs_all[src]).max() > 1e-2   # the check can fail
  _, pp_path = dataset_lib.cache_paths(cfg)
  saved = preprocess.Preprocessor.load(pp_path)
  np.testing.assert_allclose(saved.transform(cells.counts, cells.gene_names), pcs_train,
                             atol=1e-5)


def test_cache_hit_is_identical_and_fast(built):
  cfg, ds, _, first_timings, build_s = built
  timings = {}
  start = time.perf_counter()
  again = dataset_lib.build_dataset(cfg, timings=timings)
  hit_s = time.perf_counter() - start
  assert "cache_load" in timings and "simulate" not in timings
  assert "simulate" in first_timings
  for k in ("x", "y", "mask", "split", "modality", "source_index"):
    np.testing.assert_array_equal(getattr(again, k), getattr(ds, k))
  assert again.class_names == ds.class_names
  assert hit_s < max(1.0, 0.5 * build_s)


def test_cache_key_ignores_post_cache_fields_only():
  a = _cfg()
  key = dataset_lib.cache_key(a)
  b = _cfg()
  b.sequences.observed_fraction = 0.3
  b.sequences.time_shuffle = True
  b.cache_dir = "/elsewhere"
  assert dataset_lib.cache_key(b) == key
  c = _cfg()
  c.simulator.n_cells += 1
  d = _cfg()
  d.sequences.k_neighbors += 1
  assert len({key, dataset_lib.cache_key(c), dataset_lib.cache_key(d)}) == 3


def test_observed_fraction_and_time_shuffle_reuse_the_cache(built):
  cfg, ds, _, _, _ = built
  n_pcs = cfg.preprocess.n_pcs
  horizon = cfg.copy_and_resolve_references()
  horizon.sequences.observed_fraction = 0.5
  timings = {}
  h = dataset_lib.build_dataset(horizon, timings=timings)
  assert "cache_load" in timings
  n_vis = int(np.ceil(0.5 * ds.length))
  assert (h.mask[:, :n_vis] == 1).all() and (h.mask[:, n_vis:] == 0).all()
  assert (h.x[:, n_vis:] == 0).all()
  np.testing.assert_array_equal(h.x[:, :n_vis], ds.x[:, :n_vis])
  np.testing.assert_array_equal(h.split, ds.split)
  assert h.meta["observed_fraction"] == 0.5

  shuffled = cfg.copy_and_resolve_references()
  shuffled.sequences.time_shuffle = True
  sh = dataset_lib.build_dataset(shuffled)
  tcol = ds.x[..., n_pcs]
  np.testing.assert_array_equal(np.sort(sh.x[..., n_pcs], axis=1), np.sort(tcol, axis=1))
  t = ds.modality == 0
  assert (np.diff(sh.x[t, :, n_pcs], axis=1) < 0).any(axis=1).mean() > 0.5
  # Each step's features moved with its source row: at every step, the features are
  # those the unshuffled sequence had at a step with the same source row.
  same = ds.source_index[:, None, :] == sh.source_index[:, :, None]   # (N, L_new, L_old)
  assert same.any(axis=2).all()
  old_step = np.argmax(same, axis=2)
  np.testing.assert_array_equal(sh.x, np.take_along_axis(ds.x, old_step[..., None], axis=1))
  assert (sh.source_index != ds.source_index).any(axis=1).mean() > 0.5
  again = dataset_lib.build_dataset(shuffled)
  np.testing.assert_array_equal(again.x, sh.x)


def _tiny(tmp_path):
  cfg = _cfg(tmp_path)
  cfg.simulator.n_cells = 900
  cfg.simulator.n_genes = 200
  cfg.preprocess.n_hvg = 150
  cfg.preprocess.n_pcs = 8
  cfg.spatial.enabled = False
  cfg.sequences.length = 8
  cfg.sequences.per_population = 12
  return cfg


def test_progress_bar_steps_through_the_planned_stages(built, tmp_path, progress_bars):
  cfg, _, _, timings, _ = built     # spatial and the cache on: every stage
  assert list(dict.fromkeys(dataset_lib.planned_stages(cfg, cache=True))) == list(timings)
  tiny = _tiny(tmp_path)            # no spatial data, no cache
  dataset_lib.build_dataset(tiny, cache=False, progress=False)
  (bar,) = progress_bars
  assert bar.stages == dataset_lib.planned_stages(tiny, cache=False)
  assert "spatial" not in bar.stages and "save" not in bar.stages
  assert bar.n == bar.total == len(bar.stages) and bar.closed
  assert bar.kwargs["progress"] is False and bar.kwargs["desc"] == "build_dataset"
  dataset_lib.build_dataset(cfg)    # a cache hit: no bar
  assert len(progress_bars) == 1


def test_progress_enabled_in_terminals_and_notebooks_only(monkeypatch, capsys):
  assert progress_lib.enabled(True) and not progress_lib.enabled(False)
  assert not progress_lib.enabled(None)          # pytest's captured stderr is no tty
  monkeypatch.setattr(progress_lib, "in_notebook", lambda: True)
  assert progress_lib.enabled(None)
  bar = progress_lib.bar(3, desc="stages here", unit="stage", progress=True)
  bar.update(3)
  bar.close()
  assert "stages here" in capsys.readouterr().err


def test_too_few_cells_raise_a_clear_error(tmp_path):
  cfg = _tiny(tmp_path)
  cfg.sequences.per_population = 20_000
  with pytest.raises(errors.DataError, match=r"split '(train|val|test)' has \d+ item.*per_population"):
    dataset_lib.build_dataset(cfg, cache=False)


def test_corrupt_cache_is_rebuilt_and_save_load_roundtrip(tmp_path, caplog, monkeypatch):
  cfg = _tiny(tmp_path)
  ds = dataset_lib.build_dataset(cfg)
  ds_path, _ = dataset_lib.cache_paths(cfg)
  ds_path.write_bytes(b"not an npz")
  with caplog.at_level(logging.WARNING):
    again = dataset_lib.build_dataset(cfg)
  assert "rebuilding" in caplog.text
  np.testing.assert_array_equal(again.x, ds.x)
  loaded = dataset_lib.SequenceDataset.load(ds_path)     # rewritten, readable
  np.testing.assert_array_equal(loaded.source_index, ds.source_index)
  assert loaded.meta["cache_key"] == dataset_lib.cache_key(cfg)
  path = ds.save(tmp_path / "copy.npz")
  back = dataset_lib.SequenceDataset.load(path)
  assert back.meta == ds.meta and back.class_names == ds.class_names
  np.testing.assert_array_equal(back.part("val").y, ds.part("val").y)
  with pytest.raises(ValueError, match="unknown split"):
    ds.part("validation")
  # A non-primary process of a multi-process run writes no cache (process 0 does).
  monkeypatch.setattr(fileio, "is_primary", lambda: False)
  assert not ds.save(tmp_path / "other.npz").exists()
  assert not list(tmp_path.glob(".other.npz.*"))


def test_group_by_donor_holds_out_whole_lines(tmp_path):
  cfg = _tiny(tmp_path)
  cfg.split.group_by_donor = True
  ds = dataset_lib.build_dataset(cfg, cache=False)
  s = cfg.simulator
  cells = ingest.prepare_cells(
      simulator.simulate_cells(s.n_cells, s.n_genes, s.n_donors, s.seed), cfg)
  donors = cells.donors[ds.source_index]                 # (N, L)
  split_of = {}
  for d, sp in zip(donors.ravel(), np.repeat(ds.split, ds.length)):
    assert split_of.setdefault(d, sp) == sp, f"donor {d} in two splits"
  assert len(set(split_of.values())) == 3


@pytest.mark.parametrize("where, source, path, pattern", [
    ("cells", "h5ad", "", r"config\.data\.path is empty; set it to the \.h5ad file"),
    ("cells", "loom", "", r"config\.data\.source must be 'simulator' or 'h5ad', got 'loom'"),
    ("spots", "h5ad", "", r"config\.data\.spatial\.path is empty; .*spatial\.enabled = False"),
    ("spots", "csv", "", r"config\.data\.spatial\.source must be .* got 'csv'"),
])
def test_unusable_data_sources_name_the_key_and_the_fix(where, source, path, pattern):
  data = config_lib.preset("debug").data
  target = data if where == "cells" else data.spatial
  target.source, target.path = source, path
  load = sources.load_cells if where == "cells" else sources.load_spots
  with pytest.raises(errors.DataError, match=pattern):
    load(data)


def test_any_h5ad_without_donors_classes_or_day_labels_builds(tmp_path, caplog):
  """An h5ad with other obs keys, numeric days, no donors and data.classes = ()."""
  cfg = _tiny(tmp_path)
  s = cfg.simulator
  adata = simulator.simulate_cells(s.n_cells, s.n_genes, s.n_donors, s.seed)
  rename = {"IPSC": "zz_root", "MES": "b_mes", "CMES": "y_cmes", "PROG": "a_prog",
            "CM": "m_cm", "CF": "c_cf", "UNK": "UNK"}
  adata.obs["state"] = adata.obs["type"].astype(str).map(rename).to_numpy()
  adata.obs["day"] = adata.obs["diffday"].astype(str).str.replace("day", "").astype(int)
  adata.obs = adata.obs[["state", "day"]]
  path = tmp_path / "any.h5ad"
  adata.write_h5ad(path)
  cfg.source, cfg.path = "h5ad", str(path)
  cfg.population_key, cfg.time_key, cfg.donor_key, cfg.classes = "state", "day", "", ()
  with caplog.at_level(logging.WARNING):
    ds = dataset_lib.build_dataset(cfg, cache=False)
  assert not [r for r in caplog.records if "donor" in r.getMessage()]
  assert ds.meta["time_labels"] == ["0", "1", "3", "5", "7", "11", "15"]
  assert set(ds.class_names) == set(rename.values()) - {"UNK"}
  assert ds.class_names[0] == "zz_root" and list(ds.class_names) == ds.meta["class_names"]
  assert ds.class_names != tuple(sorted(ds.class_names))
  # Label ids follow the course: the mean day of each class's anchors rises with its id.
  day = ds.x[:, -1, cfg.preprocess.n_pcs]
  means = [day[ds.y == c].mean() for c in range(ds.num_classes)]
  assert np.all(np.diff(means) >= -0.05), means
  for split_name in splits.SPLITS:
    assert set(np.unique(ds.part(split_name).y)) == set(range(ds.num_classes))
  # Grouping by donor still needs donors, and says how to fix it.
  cfg.split.group_by_donor = True
  with pytest.raises(errors.DataError, match="donor_key is empty"):
    dataset_lib.build_dataset(cfg, cache=False)

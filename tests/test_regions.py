"""Spatial regions: held-out sections stay out of training, neighbours stay in their
section, bad input is a clear error, the GNN earns its place, and a run end to end."""
import json

import anndata
import numpy as np
import pandas as pd
import pytest

from cardiac_jax import config_lib
from cardiac_jax import prediction
from cardiac_jax import region_baselines
from cardiac_jax import regions
from cardiac_jax import train
from cardiac_jax.data import dataset
from cardiac_jax.data import regions as data_regions
from cardiac_jax.data import section_simulator
from cardiac_jax.data import splits
from cardiac_jax.data.errors import DataError

N_GENES = 300


def _sections(n_sections=4, seed=0):
  """Simulated sections with the region under obs["domain"] (a user's own key)."""
  adata = section_simulator.simulate_sections(n_sections=n_sections, spots_per_section=300,
                                              n_genes=N_GENES, seed=seed)
  adata.obs["domain"] = adata.obs.pop("region")
  return adata


@pytest.fixture(scope="module", name="adata")
def _adata():
  return _sections()


def _write(adata, folder, name="sections.h5ad"):
  path = folder / name
  adata.write_h5ad(path)
  return path


def _config(path, **spatial_fields):
  """The quick spatial config on an h5ad, overridden as the issue's command does."""
  config = config_lib.preset("spatial", "quick")
  config.data.preprocess.n_hvg = 200
  sp = config.data.spatial
  sp.source, sp.path, sp.section_key, sp.region_key = "h5ad", str(path), "section", "domain"
  for key, value in spatial_fields.items():
    sp[key] = value
  return config


@pytest.fixture(scope="module", name="h5ad")
def _h5ad(adata, tmp_path_factory):
  return _write(adata, tmp_path_factory.mktemp("regions_data"))


@pytest.fixture(scope="module", name="ds")
def _ds(h5ad):
  return dataset.build_dataset(_config(h5ad).data, cache=False, progress=False)


def test_no_spot_of_a_held_out_section_is_in_a_training_walk(ds):
  t = ds.tables
  held = ds.meta["task_info"]["split"]["sections"]
  names = np.asarray(t["section_names"]).astype(str)
  assert len(held["val"]) == len(held["test"]) == 1 and len(held["train"]) == 2
  spot_split = t["split"][ds.source_index]                 # (N, L): the split of every step
  assert (spot_split == ds.split[:, None]).all()           # every step in its walk's split
  train_steps = names[t["section"][ds.source_index[ds.split == 0]]]
  assert set(np.unique(train_steps)) == set(held["train"])
  for part in ("val", "test"):                             # whole sections held out
    rows = t["split"] == splits.SPLIT_IDS[part]
    assert set(names[t["section"][rows]]) == set(held[part])
    assert not np.isin(np.flatnonzero(rows), ds.source_index[ds.split == 0]).any()
  assert (ds.y == t["labels"][ds.source_index[:, -1]]).all()   # labelled by the end spot
  assert np.bincount(ds.source_index[ds.split == 0, -1]).max() == 2   # walks_per_spot


def test_neighbours_never_cross_sections_that_share_coordinates(adata):
  """Two sections cut at the same x/y (as per-library_id coordinates are): the spot
  graph, and so every walk and ring feature, stays within each section."""
  one = adata[adata.obs["section"] == "s0"]
  twin = one.copy()
  twin.obs_names = [f"twin_{n}" for n in one.obs_names]
  twin.obs["section"] = "twin"
  both = anndata.concat([one, twin])
  np.testing.assert_array_equal(both.obsm["spatial"][:one.n_obs], both.obsm["spatial"][one.n_obs:])
  section, _ = data_regions.section_column(both, "section")
  unit = data_regions.pitch_coords(both.obsm["spatial"], section)
  adj = data_regions.split_adjacency(unit, np.zeros(both.n_obs, np.int8)).tocoo()
  assert adj.nnz > 4 * both.n_obs                          # a real hex graph (~6 each)
  assert (section[adj.row] == section[adj.col]).all()
  reach = {}
  for restart in (0.0, 0.3):
    src = data_regions.walk_sources(unit, np.arange(both.n_obs), length=12, n_walks=3, seed=0,
                                    restart=restart)
    assert (section[src] == section[src[..., -1:]]).all()
    reach[restart] = np.linalg.norm(unit[src[..., 0]] - unit[src[..., -1]], axis=-1).mean()
  assert reach[0.3] < 0.8 * reach[0.0]      # restarts keep a walk near its spot


def test_walk_probabilities_predict_every_request_in_one_call():
  calls = []
  def fake(x, mask):
    calls.append(x.shape)
    return np.stack([x[:, -1, 0], 1 - x[:, -1, 0]], axis=1)   # reads the end spot only
  pcs = np.linspace(0, 1, 40, dtype=np.float32)[:, None]
  unit = np.stack([np.arange(40) % 8, np.arange(40) // 8], 1).astype(np.float64)
  sources = [data_regions.walk_sources(unit, rows, length=5, n_walks=4, seed=1)
             for rows in (np.arange(20), np.arange(20, 40))]
  a, b = regions.walk_probabilities(fake, pcs, unit, sources, distance=True)
  assert len(calls) == 1 and calls[0][0] == 4 * 40
  np.testing.assert_allclose(np.r_[a[:, 0], b[:, 0]], pcs[:, 0], atol=1e-6)


def _bad(adata, kind):
  """A copy of ``adata`` with one defect."""
  a = adata.copy()
  if kind == "no_coords":
    del a.obsm["spatial"]
  elif kind == "nan_coords":
    a.obsm["spatial"][3] = np.nan
  elif kind == "no_section":
    del a.obs["section"]
  elif kind == "no_region":
    del a.obs["domain"]
  elif kind == "one_section":
    a = a[(a.obs["section"] == "s0").to_numpy()].copy()
  elif kind == "zero_counts":
    x = a.X.tolil()
    x[5] = 0
    a.X = x.tocsr()
  elif kind == "repeat_names":
    names = a.obs_names.to_numpy().copy()
    names[1] = names[0]
    a.obs_names = names
  elif kind == "unseen_region":     # "oft" only in section s3 (held out for test)
    region, section = a.obs["domain"].astype(str), a.obs["section"].astype(str)
    a = a[((region != "oft") | (section == "s3")).to_numpy()].copy()
  return a


@pytest.mark.parametrize("kind, fields, message", [
    ("no_coords", {}, r"no obsm\['spatial'\] coordinates"),
    ("nan_coords", {}, r"NaN/Inf coordinates for 1 of"),
    ("no_section", {}, r"obs has no column 'section' for the sections"),
    ("no_region", {}, r"obs has no column 'domain' for the region labels"),
    ("one_section", {}, r"has 1 section\(s\).*--config.data.spatial.split=tile"),
    ("zero_counts", {}, r"1 of \d+ spots have zero counts"),
    ("repeat_names", {}, r"1 spot name\(s\) repeat.*obs_names_make_unique"),
    ("unseen_region", {"test_sections": ("s3",), "val_sections": ("s2",)},
     r"regions \['oft'\] have no training spot \(present in \{'oft': \['test'\]\}\)"),
])
def test_bad_input_is_one_clear_error_and_writes_nothing(adata, tmp_path, kind, fields, message):
  config = _config(_write(_bad(adata, kind), tmp_path), **fields)
  config.data.cache_dir = str(tmp_path / "cache")
  workdir = tmp_path / "run"
  with pytest.raises(DataError, match=message):
    train.train_and_evaluate(config, str(workdir))
  assert not workdir.exists()
  assert not list(tmp_path.glob("cache/*"))


def test_the_gnn_beats_the_per_spot_baseline(ds):
  """Region-level labels: a spot's neighbours decide, so message passing must win."""
  t = ds.tables
  adj = data_regions.split_adjacency(t["unit_coords"], t["split"])
  results, _ = region_baselines.run_baselines(t["pcs"], t["labels"], t["split"], adj,
                                              ds.class_names, names=("logreg_spot", "gnn"))
  spot, gnn = results["logreg_spot"], results["gnn"]
  assert gnn["test_acc"] > spot["test_acc"] + 0.03, (gnn, spot)
  assert gnn["val_acc"] > spot["val_acc"]


@pytest.fixture(scope="module", name="run")
def _run(h5ad, tmp_path_factory):
  """The quick spatial run, with the issue's overrides (source, path, section and region
  keys), trained once for the tests below."""
  workdir = tmp_path_factory.mktemp("regions_run") / "run"
  results = train.train_and_evaluate(_config(h5ad), str(workdir))
  return {"workdir": workdir, "results": results}


def test_the_run_reports_every_held_out_spot_and_the_baselines(run, ds):
  report = json.loads((run["workdir"] / "report.json").read_text())
  for key in ("test_acc", "test_macro_f1", "n_test_spots", "baselines", "best_baseline"):
    assert key in report, key
  n_test = int(np.sum(ds.tables["split"] == splits.SPLIT_IDS["test"]))
  assert report["n_test_spots"] == n_test > 200
  assert set(report["baselines"]) == set(region_baselines.BASELINES)
  for name, b in report["baselines"].items():
    assert {"val_acc", "test_acc", "test_macro_f1"} <= set(b), name
  best = max(report["baselines"], key=lambda n: report["baselines"][n]["val_acc"])
  assert report["baselines"][report["best_baseline"]]["val_acc"] == \
      report["baselines"][best]["val_acc"]
  table = pd.read_csv(run["workdir"] / regions.PREDICTIONS_CSV)
  assert (table["split"] == "test").sum() == n_test and table["spot"].is_unique
  assert 0 <= report["test_acc"] <= 1 and report["sequence_level"]["num_test"] == n_test
  assert "Regions: spot-level scores" in (run["workdir"] / "report.md").read_text()
  assert list((run["workdir"] / "plots").glob("regions_*.png"))


def test_predict_annotates_new_sections_and_draws_them(run, tmp_path):
  new = _sections(n_sections=2, seed=7)
  new.obs["library_id"] = new.obs.pop("section")
  path = _write(new, tmp_path, "new.h5ad")
  written = prediction.predict_file(run["workdir"] / "model", path, tmp_path / "out.h5ad",
                                    plots_dir=tmp_path / "plots", true_key="domain",
                                    section_key="library_id")
  out = anndata.read_h5ad(written["h5ad"])
  classes = json.loads((run["workdir"] / "model" / "model.json").read_text())["class_names"]
  assert list(out.obs["cardiac_jax_region"].cat.categories) == classes
  probs = out.obsm["cardiac_jax_region_probs"]
  np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
  np.testing.assert_allclose(out.obs["cardiac_jax_region_confidence"], probs.max(1), atol=1e-6)
  table = pd.read_csv(written["csv"])
  assert written["csv"].name == regions.PREDICTIONS_CSV and len(table) == new.n_obs
  for section in ("s0", "s1"):
    assert written[f"map_{section}"].is_file()


def test_the_benchmark_pools_paired_differences_over_seeds():
  from cardiac_jax.studies import regions_benchmark  # pylint: disable=g-import-not-at-top
  runs = []
  for seed, (d_spot, d_best) in enumerate([(0.10, -0.02), (0.14, 0.01), (0.12, -0.05)]):
    methods = {m: {"val_acc": 0.6, "test_acc": 0.6 + 0.01 * seed, "test_macro_f1": 0.5,
                   "seconds": 1.0} for m in regions_benchmark.METHODS}
    runs.append({"seed": seed, "methods": methods, "best_baseline": "gnn",
                 "vs": {"logreg_spot": {"diff": d_spot, "se": 0.01, "n": 100},
                        "best_on_val": {"baseline": "gnn", "diff": d_best, "se": 0.02,
                                        "n": 100}}})
  s = regions_benchmark.summarise(runs)
  assert s["vs_logreg_spot"]["diff"] == pytest.approx(0.12)
  assert s["vs_logreg_spot"]["se"] == pytest.approx(np.sqrt(3 * 0.01 ** 2) / 3)
  assert s["above_logreg_spot_by_2se"] and not s["at_least_best_on_val"]
  assert s["methods"]["model"]["test_acc"][0] == pytest.approx(0.61)

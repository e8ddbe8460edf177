"""The portable model and ``cardiac_jax.predict`` end to end (about a minute on a CPU).

One small run is trained here (the debug preset with more sequences and epochs,
no spatial data, so the test split's accuracy is not dominated by noise) and
exported; a second simulation (another seed: new cells, new donors) is the
"new data set". Accuracy on it is compared with the run's test accuracy as
balanced accuracy over the model's classes (the test split's sequences are
class-balanced; the new cells follow the simulated composition), predicted in
disjoint parts as large as the test split (10 % of the training simulation's
cells), so that each part's neighbour graph is as dense as the test split's was.
Measured when written: new data 0.86, test split 0.857.
"""
import json
import os
import pathlib
import subprocess
import sys

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import cardiac_jax
from cardiac_jax import config_lib
from cardiac_jax import export
from cardiac_jax import inference
from cardiac_jax import prediction
from cardiac_jax import query
from cardiac_jax import train
from cardiac_jax import viz
from cardiac_jax.data import sequences
from cardiac_jax.data import simulator
from cardiac_jax.data.errors import DataError

N_TRAIN_CELLS, N_CELLS, N_GENES = 6_000, 3_000, 400   # 3,000 cells: 1.2 % test noise at most


def _config():
  config = config_lib.preset("debug")
  config.data.simulator.n_cells = N_TRAIN_CELLS
  config.data.sequences.per_population = 500
  config.data.spatial.enabled = False
  config.data.sequences.spatial_total = 0
  config.train.num_epochs = 8
  config.train.early_stopping_patience = 8
  return config


@pytest.fixture(scope="module", name="run")
def _run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("predict_run")
  results = train.train_and_evaluate(_config(), str(workdir))
  new = simulator.simulate_cells(N_CELLS, N_GENES, 19, seed=1)
  path = workdir.parent / "new_cells.h5ad"
  new.write_h5ad(path)
  return {"workdir": workdir, "results": results, "model": export.load_model(workdir / "model"),
          "h5ad": path, "adata": new}


def _balanced_accuracy(pred, true, classes):
  return float(np.mean([np.mean(pred[true == c] == c) for c in classes]))


def test_export_is_written_and_loads(run):
  model_dir = run["workdir"] / "model"
  assert sorted(p.name for p in model_dir.iterdir()) == [
      "model.json", "preprocessor.npz", "variables.npz"]
  info = json.loads((model_dir / "model.json").read_text())
  assert info["class_names"] == ["IPSC", "MES", "CMES", "PROG", "CM", "CF"]
  assert info["time_labels"][0] == "day0" and info["length"] == 16 and info["n_pcs"] == 16
  assert info["branch_gate"] == run["results"]["branch_gate"]["chosen"]
  assert info["provenance"]["data_cache_key"]
  model = run["model"]
  assert float(model.variables["batch_stats"]["branch_gate"]) == info["branch_gate"]
  assert model.preprocessor.n_pcs == 16


def test_fresh_process_empty_cache_accuracy(run, tmp_path):
  """The CLI in a new process with an empty cache; accuracy like the run's test split."""
  empty = tmp_path / "empty_cache"
  empty.mkdir()
  out = tmp_path / "annotated.h5ad"
  env = dict(os.environ, CARDIAC_JAX_CACHE=str(empty), JAX_PLATFORMS="cpu")
  proc = subprocess.run(
      [sys.executable, "-m", "cardiac_jax.cli", "predict", f"--model={run['workdir'] / 'model'}",
       f"--input={run['h5ad']}", f"--output={out}", "--n_walks=4",
       f"--plots_dir={tmp_path / 'plots'}", "--true_key=type"],
      env=env, capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  # Only the compiled programs (compile_cache) may land there, never a dataset.
  assert [p.name for p in empty.iterdir()] in ([], ["jax"]), "predict must not need (or fill) the dataset cache"
  annotated = ad.read_h5ad(out)
  classes = list(run["model"].class_names)
  assert list(annotated.obs["cardiac_jax_label"].cat.categories) == classes
  assert annotated.obsm["cardiac_jax_probs"].shape == (N_CELLS, len(classes))
  assert annotated.obsm["X_pca_cardiac_jax"].shape == (N_CELLS, 16)
  info = annotated.uns["cardiac_jax"]
  assert info["model_hash"] == run["model"].hash and list(info["class_names"]) == classes
  table = pd.read_csv(tmp_path / "predictions.csv")
  assert list(table.columns) == ["cell", "label", "confidence"] + [f"prob_{c}" for c in classes]
  assert len(table) == N_CELLS
  for name in ("embedding_predicted_label", "embedding_confidence", "embedding_true_label",
               "composition_predicted"):
    assert (tmp_path / "plots" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"

  # Accuracy like for like with the test split (see the module docstring).
  adata = run["adata"]
  true = adata.obs["type"].astype(str).to_numpy()
  pred = np.empty(adata.n_obs, object)
  n_parts = round(N_CELLS / (0.1 * N_TRAIN_CELLS))
  for part in np.array_split(np.random.default_rng(0).permutation(adata.n_obs), n_parts):
    part = np.sort(part)
    sub = cardiac_jax.predict(adata[part].copy(), run["model"], progress=False)
    pred[part] = sub.obs["cardiac_jax_label"].astype(str).to_numpy()
  acc = _balanced_accuracy(pred, true, classes)
  test_acc = run["results"]["test_acc"]
  print(f"new data balanced accuracy {acc:.4f}, run test accuracy {test_acc:.4f}, whole-file "
        f"CLI {_balanced_accuracy(annotated.obs['cardiac_jax_label'].astype(str).to_numpy(), true, classes):.4f}")
  assert abs(acc - test_acc) <= 0.05


def test_deterministic_and_gene_order_invariant(run):
  adata = run["adata"][:600].copy()
  a = cardiac_jax.predict(adata, run["model"], copy=True, progress=False)
  b = cardiac_jax.predict(adata, run["model"], copy=True, progress=False)
  np.testing.assert_array_equal(a.obsm["cardiac_jax_probs"], b.obsm["cardiac_jax_probs"])
  assert "cardiac_jax" not in adata.uns, "copy=True must leave the input alone"
  shuffled = adata[:, np.random.default_rng(3).permutation(adata.n_vars)].copy()
  c = cardiac_jax.predict(shuffled, run["model"], copy=True, progress=False)
  np.testing.assert_array_equal(a.obsm["cardiac_jax_probs"], c.obsm["cardiac_jax_probs"])
  np.testing.assert_array_equal(a.obs["cardiac_jax_label"], c.obs["cardiac_jax_label"])


def test_prediction_streams_one_walk_of_one_block_at_a_time(run, monkeypatch, progress_bars):
  """The model sees at most BLOCK_CELLS sequences at once; the average is over all walks."""
  block, n_walks, n = 64, 3, 300            # 4 full blocks and a partial one
  monkeypatch.setattr(prediction, "BLOCK_CELLS", block)
  model, adata = run["model"], run["adata"][:n].copy()
  real = model.predict_sequences
  sizes = []

  def spy(x, mask, **kwargs):
    sizes.append(x.shape[0])
    return real(x, mask, **kwargs)

  monkeypatch.setattr(model, "predict_sequences", spy)
  out = cardiac_jax.predict(adata, model, n_walks=n_walks, walk_margin=1.0, copy=True,
                            progress=False)
  assert sizes == [block] * (4 * n_walks) + [n % block] * n_walks
  assert (out.obs["cardiac_jax_n_walks"] == n_walks).all()
  (bar,) = progress_bars                    # over the cells, block by block
  assert bar.total == bar.n == n and bar.closed and bar.kwargs["progress"] is False
  # Reference: all walks of a block at once (the seeds are per (seed, block, walk)).
  pcs = out.obsm["X_pca_cardiac_jax"]
  t = query.map_time_labels(adata.obs["diffday"].astype(str).to_numpy(), model.time_labels)
  graph = sequences.temporal_graph(pcs, t, np.zeros(n, np.int32), np.arange(n),
                                   model.k_neighbors)
  want = np.empty_like(out.obsm["cardiac_jax_probs"])
  for b, start in enumerate(range(0, n, block)):
    anchors = np.arange(start, min(start + block, n))
    src = np.concatenate([sequences.walk(graph, anchors, model.length,
                                         np.random.default_rng([0, b, w]))
                          for w in range(n_walks)])
    x = sequences.assemble_features(pcs, src, sequences.time_feature(t, len(model.time_labels)), 0)
    probs = real(x, np.ones(src.shape, np.float32))
    want[anchors] = probs.reshape(n_walks, anchors.size, -1).mean(axis=0)
  np.testing.assert_allclose(out.obsm["cardiac_jax_probs"], want, rtol=0, atol=1e-6)


def test_adaptive_walks_settle_confident_cells_with_one(run):
  """Margin >= walk_margin after the first walk: that walk alone; below it: all walks,
  the first walk the same as with every cell walked."""
  n, n_walks, margin = 500, 4, 0.3
  adata = run["adata"][:n].copy()
  one = cardiac_jax.predict(adata, run["model"], n_walks=1, copy=True, progress=False)
  every = cardiac_jax.predict(adata, run["model"], n_walks=n_walks, walk_margin=1.0,
                              copy=True, progress=False)
  out = cardiac_jax.predict(adata, run["model"], n_walks=n_walks, walk_margin=margin,
                            copy=True, progress=False)
  first = one.obsm["cardiac_jax_probs"]
  unsure = prediction.top_margin(first) < margin
  assert 0 < unsure.sum() < n, "the check needs both kinds of cells"
  used = out.obs["cardiac_jax_n_walks"].to_numpy()
  np.testing.assert_array_equal(used, np.where(unsure, n_walks, 1))
  probs = out.obsm["cardiac_jax_probs"]
  np.testing.assert_array_equal(probs[~unsure], first[~unsure])
  assert out.uns["cardiac_jax"]["params"]["walk_margin"] == margin
  assert out.uns["cardiac_jax"]["mean_walks"] == pytest.approx(used.mean())
  # The unsure cells' later walks are drawn for them alone: the same distribution as the
  # every-cell run, not the same draws; their labels mostly agree with it.
  agree = np.mean(out.obs["cardiac_jax_label"].to_numpy()[unsure]
                  == every.obs["cardiac_jax_label"].to_numpy()[unsure])
  assert agree >= 0.7, agree
  assert np.max(np.abs(probs.sum(axis=1) - 1)) < 1e-5


def test_walks_go_among_the_training_density_of_cells(run, monkeypatch):
  """The walks' graph points: the model's training density by default, the given cap,
  or all cells (0); a cap above every day's size changes nothing."""
  density = run["model"].info["walks"]["train_cells_per_day"]
  assert 0 < density < N_TRAIN_CELLS * 0.65 / 2      # one day's training cells
  adata = run["adata"][:600].copy()
  seen = []
  build = sequences.temporal_graph

  def spy(*args, points=None, **kwargs):
    seen.append(points)
    return build(*args, points=points, **kwargs)

  monkeypatch.setattr(sequences, "temporal_graph", spy)
  days = query.map_time_labels(query.time_column(adata, "diffday"), run["model"].time_labels)
  runs = {cap: cardiac_jax.predict(adata, run["model"], n_walks=2, walk_margin=1.0,
                                   graph_cells_per_day=cap, copy=True, progress=False)
          for cap in (None, 20, 0, 10_000)}
  np.testing.assert_array_equal(seen[0], sequences.reference_points(days, density, 0))
  np.testing.assert_array_equal(seen[1], sequences.reference_points(days, 20, 0))
  assert seen[2] is None
  assert runs[20].uns["cardiac_jax"]["params"]["graph_cells_per_day"] == 20
  assert runs[None].uns["cardiac_jax"]["params"]["graph_cells_per_day"] == density
  np.testing.assert_array_equal(runs[0].obsm["cardiac_jax_probs"],
                                runs[10_000].obsm["cardiac_jax_probs"])
  assert not np.array_equal(runs[0].obsm["cardiac_jax_probs"], runs[20].obsm["cardiac_jax_probs"])
  with pytest.raises(DataError, match="graph_cells_per_day"):
    cardiac_jax.predict(adata, run["model"], graph_cells_per_day=-1, copy=True)


def test_top_margin():
  p = np.array([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8], [0.4, 0.4, 0.2]], np.float32)
  np.testing.assert_allclose(prediction.top_margin(p), [0.2, 0.7, 0.0], atol=1e-7)
  np.testing.assert_array_equal(prediction.top_margin(np.ones((2, 1), np.float32)), [1, 1])


def test_predict_drops_a_stale_umap(run):
  adata = run["adata"][:200].copy()
  adata.obsm["X_umap_cardiac_jax"] = np.zeros((200, 2), np.float32)   # of an earlier predict
  cardiac_jax.predict(adata, run["model"], n_walks=1)
  assert "X_umap_cardiac_jax" not in adata.obsm
  assert viz.embedding_2d_for(adata, method="pca")[1] == "PC"


def test_missing_genes_reported_and_minimum(run):
  adata = run["adata"][:400].copy()
  model_genes = list(run["model"].preprocessor.gene_names)
  drop = set(np.random.default_rng(0).choice(model_genes, int(0.3 * len(model_genes)),
                                             replace=False))
  fewer = adata[:, ~adata.var_names.isin(drop)].copy()
  out = cardiac_jax.predict(fewer, run["model"], progress=False)
  assert sorted(out.uns["cardiac_jax"]["genes_missing"]) == sorted(drop)
  assert out.uns["cardiac_jax"]["n_genes_used"] == len(model_genes) - len(drop)
  too_few = adata[:, ~adata.var_names.isin(model_genes[:int(0.6 * len(model_genes))])].copy()
  with pytest.raises(DataError, match=r"only \d+ of the model's 300 genes"):
    cardiac_jax.predict(too_few, run["model"], progress=False)


def test_bad_input_errors(run):
  adata = run["adata"][:300].copy()
  logged = adata.copy()
  logged.X = np.log1p(logged.X.toarray().astype(np.float32))
  with pytest.raises(DataError, match="log-normalised"):
    cardiac_jax.predict(logged, run["model"], progress=False)
  unknown = adata.copy()
  unknown.obs["diffday"] = unknown.obs["diffday"].astype(str).replace("day3", "day4")
  with pytest.raises(DataError, match=r"\['day4'\] are not among the model's time labels"):
    cardiac_jax.predict(unknown, run["model"], progress=False)
  with pytest.raises(DataError, match="no time column 'timepoint'"):
    cardiac_jax.predict(adata, run["model"], time_key="timepoint", progress=False)
  with pytest.raises(DataError, match="no exported model"):
    cardiac_jax.load_model(run["h5ad"].parent / "nowhere")


def test_numeric_time_labels_and_single_day(run):
  adata = run["adata"][:500].copy()
  adata.obs["day"] = adata.obs["diffday"].astype(str).str.replace("day", "").astype(float)
  with pytest.raises(DataError, match="not among"):      # 3.0 vs "day3": names differ
    cardiac_jax.predict(adata, run["model"], time_key="day", progress=False)
  assert list(query.map_time_labels(np.array(["3.0", "3"]), ["1", "3"])) == [1, 1]
  one_day = adata[adata.obs["diffday"] == "day7"].copy()
  out = cardiac_jax.predict(one_day, run["model"], progress=False)
  assert bool(out.uns["cardiac_jax"]["single_day"])
  assert out.obs["cardiac_jax_label"].notna().all()


def test_duplicate_obs_names_made_unique(run):
  adata = run["adata"][:200].copy()
  adata.obs_names = ["cell"] * adata.n_obs
  out = cardiac_jax.predict(adata, run["model"], copy=True, progress=False)
  assert out.obs_names.is_unique and out.n_obs == 200


def test_failed_predict_writes_nothing(run, tmp_path):
  out = tmp_path / "out.h5ad"
  with pytest.raises(DataError):
    prediction.predict_file(run["workdir"] / "model", run["h5ad"], out, time_key="nope")
  assert list(tmp_path.iterdir()) == []


def test_export_older_workdir_cli(run, tmp_path):
  """An older workdir (no model/) is exported from config.json and the cache."""
  model_dir = run["workdir"] / "model"
  before = json.loads((model_dir / "model.json").read_text())["hash"]
  moved = tmp_path / "moved"
  os.replace(model_dir, moved)
  try:
    path = inference.export_workdir(run["workdir"])
    assert export.load_model(path).hash == before
  finally:
    if not model_dir.exists():
      os.replace(moved, model_dir)


def test_tampered_model_refused(run, tmp_path):
  copy = tmp_path / "model"
  copy.mkdir()
  for p in (run["workdir"] / "model").iterdir():
    (copy / p.name).write_bytes(p.read_bytes())
  info = json.loads((copy / "model.json").read_text())
  info["class_names"][0] = "XX"
  (copy / "model.json").write_text(json.dumps(info))
  with pytest.raises(DataError, match="do not match the hash"):
    cardiac_jax.load_model(copy)


def test_plots_from_anndata(run, tmp_path):
  out = cardiac_jax.predict(run["adata"][:300].copy(), run["model"], progress=False)
  paths = viz.plot_predictions(out, tmp_path, true_key="type")
  assert set(paths) == {"embedding_label", "embedding_confidence", "embedding_true",
                        "composition"}
  for p in paths.values():
    assert pathlib.Path(p).read_bytes()[:4] == b"\x89PNG"


def test_import_is_cheap_and_cli_usage():
  code = "import sys, cardiac_jax; print('jax' in sys.modules, 'anndata' in sys.modules)"
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       check=True).stdout.split()
  assert out == ["False", "False"]
  proc = subprocess.run([sys.executable, "-m", "cardiac_jax.cli"], capture_output=True,
                        text=True, check=False)
  assert proc.returncode == 2 and "usage: cardiac-jax" in proc.stderr


def test_cli_refuses_repeated_cell_names_and_writes_nothing(run, tmp_path):
  """predictions.csv is keyed by cell name: repeated names could not be joined back."""
  adata = run["adata"][:50].copy()
  adata.obs_names = ["c0", "c1"] * 25
  path = tmp_path / "dup.h5ad"
  adata.write_h5ad(path)
  out = tmp_path / "out" / "annotated.h5ad"
  out.parent.mkdir()
  with pytest.raises(DataError, match=r"repeat.*obs_names_make_unique"):
    prediction.predict_file(run["workdir"] / "model", path, out)
  assert list(out.parent.iterdir()) == []


def test_cells_without_counts_are_flagged_and_left_unpredicted(run):
  adata = run["adata"][:120].copy()
  x = adata.X.tocsr().copy()
  for row in (3, 7):
    x.data[x.indptr[row]:x.indptr[row + 1]] = 0
  x.eliminate_zeros()
  adata.X = x
  out = cardiac_jax.predict(adata, run["model"], copy=True, progress=False)
  flag = out.obs["cardiac_jax_no_counts"].to_numpy()
  assert flag.tolist() == [i in (3, 7) for i in range(120)]
  probs = out.obsm["cardiac_jax_probs"]
  assert np.isnan(probs[[3, 7]]).all() and not np.isnan(probs[~flag]).any()
  assert out.obs["cardiac_jax_label"].isna().tolist() == flag.tolist()
  assert out.uns["cardiac_jax"]["n_no_counts"] == 2
  # The other cells' predictions do not walk through the empty ones.
  alone = cardiac_jax.predict(adata[~flag].copy(), run["model"], copy=True, progress=False)
  np.testing.assert_allclose(probs[~flag], alone.obsm["cardiac_jax_probs"], atol=1e-6)


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "model.json").write_text("{not json"), "not readable JSON"),
    (lambda d: (d / "preprocessor.npz").unlink(), "lacks preprocessor.npz"),
    (lambda d: (d / "variables.npz").unlink(), "lacks variables.npz"),
])
def test_a_damaged_model_folder_is_a_clear_error(run, tmp_path, damage, message):
  copy = tmp_path / "model"
  copy.mkdir()
  for p in (run["workdir"] / "model").iterdir():
    (copy / p.name).write_bytes(p.read_bytes())
  damage(copy)
  with pytest.raises(DataError, match=message):
    cardiac_jax.load_model(copy)

"""CellTypist (Domínguez Conde et al. 2022) beside cardiac_jax: same training and held-out cells.

  python3 -m venv /work/venv_ct && /work/venv_ct/bin/pip install -e ".[celltypist,external]"
  python experiments/celltypist_peer.py --beds=embedded --workdir=/work/ct \
      --embedded_heldout=/work/full/cells.h5ad --celltypist_python=/work/venv_ct/bin/python
  # the external time course (markovmodus, the `external` extra, here in that venv): a
  # training course and an independent held-out course of the same tree, another seed
  /work/venv_ct/bin/python experiments/external_testbed.py --tree=a --seed=0 \
      --out=/work/ct/ext/train.h5ad
  /work/venv_ct/bin/python experiments/external_testbed.py --tree=a --seed=1 \
      --out=/work/ct/ext/heldout.h5ad
  python experiments/celltypist_peer.py --beds=external --workdir=/work/ct \
      --external_train=/work/ct/ext/train.h5ad --external_heldout=/work/ct/ext/heldout.h5ad \
      --celltypist_python=/work/venv_ct/bin/python

CellTypist is never a dependency of cardiac_jax: celltypist 1.7.1 passes
``multi_class="ovr"`` to scikit-learn's LogisticRegression, which scikit-learn
1.8 removed, so it runs in a venv of its own (the ``celltypist`` extra pins
celltypist 1.7.1 and scikit-learn < 1.8) through ``celltypist_worker.py``
(shipped beside this module, imported by nothing, run by ``--celltypist_python``).

Per bed, each step runs in its own process (``resources.run_measured``: wall
seconds and that process's own peak RSS):
1. ``ours_train``: ``python -m cardiac_jax.cli train`` with the bed's config
   and overrides (embedded: the scale3 layout on 20,000 simulated cells of
   simulator seed 1 for 12 epochs, as ``bench_full_data --stage=train_model
   --train_cells=20000 --train_epochs=12``; external: scale1 on the training
   course). Its wall includes simulating/loading and building the dataset.
2. The training cells (in this process, not timed): the run's own config.json
   read back, its cells prepared and split exactly as the run did
   (``sources.prepared_cells`` + ``sources.split_of``); the TRAIN split's raw
   counts and labels go to ``train_cells.h5ad``. CellTypist trains on exactly
   these cells; ours also used its validation split to pick the best epoch.
3. ``celltypist_train``: the worker's ``train`` on train_cells.h5ad, twice
   (`CELLTYPIST_VARIANTS`): CellTypist's defaults (logistic regression on all
   genes), and ``feature_selection=True`` as its custom-model tutorial trains
   (``celltypist_fs_*``: SGD on all genes, then logistic regression on the
   union of every class's top 300 genes).
4. Per size: the held-out cells (cells neither method trained on: embedded, a
   separate simulation, seed 0; external, the seed-1 course) — all of them for
   size 0, else a seeded random subset written to its own h5ad; then
   ``ours_predict`` (the README's ``cardiac-jax predict --model --input
   --output``, default settings) and ``celltypist_annotate`` (the worker's
   ``annotate``, ``majority_voting=False``, each CellTypist model) on that same
   file; and, as a reference row without costs, `pcs_logreg`.
5. Scoring (here): accuracy and macro-F1 (scikit-learn, over the classes both
   methods were trained on) on the held-out cells whose true label is one of
   those classes (the embedded simulator's UNK cells have no right answer; both
   methods still annotate them, in the wall time).

Writes ``<workdir>/celltypist.json`` and ``.md``; finished steps are kept in
``<workdir>/<bed>/steps.json`` and reused unless ``--fresh``.
"""
from __future__ import annotations

import json
import os
import pathlib
import platform
import shutil
import sys
from typing import Any, Sequence

from absl import app
from absl import flags
from absl import logging
import numpy as np

from cardiac_jax import resources
from cardiac_jax.studies import common

FLAGS = flags.FLAGS
WORKER = pathlib.Path(__file__).with_name("celltypist_worker.py")
CONFIGS = pathlib.Path(__file__).resolve().parents[2] / "configs"
LABEL_KEY = "label"      # the training file's label column (train_cells.h5ad)
# (method, step/file prefix, worker train flags): CellTypist's defaults, and the
# feature selection its custom-model tutorial uses.
CELLTYPIST_VARIANTS = (("CellTypist", "celltypist", ()),
                       ("CellTypist, feature_selection=True", "celltypist_fs",
                        ("--feature_selection",)))

# The embedded bed's training run: bench_full_data's train_model stage with
# --train_cells=20000 --train_epochs=12 --n_genes=2000 (same fields, same values).
EMBEDDED_OVERRIDES = (
    "--config.data.source=simulator", "--config.data.simulator.n_cells=20000",
    "--config.data.simulator.n_genes=2000", "--config.data.simulator.seed=1",
    "--config.data.spatial.enabled=false", "--config.data.sequences.spatial_total=0",
    "--config.data.sequences.per_population=1000", "--config.train.num_epochs=12",
    "--config.train.progress_bar=false")


def bed_spec(name: str) -> dict[str, Any]:
  """What a bed trains and predicts on: config, overrides, held-out file, keys, sizes."""
  if name == "embedded":
    return {"config": str(CONFIGS / "scale3.py"), "overrides": list(EMBEDDED_OVERRIDES),
            "heldout": FLAGS.embedded_heldout, "population_key": "type",
            "time_key": "diffday", "sizes": [int(s) for s in FLAGS.sizes]}
  if name == "external":
    if not FLAGS.external_train or not FLAGS.external_heldout:
      raise app.UsageError("--beds=external needs --external_train and --external_heldout "
                           "(h5ad files written by experiments/external_testbed.py)")
    summary = json.loads(pathlib.Path(FLAGS.external_train).with_suffix(".json").read_text())
    return {"config": str(CONFIGS / "scale1.py"),
            "overrides": list(summary["overrides"]) + ["--config.train.progress_bar=false"],
            "heldout": FLAGS.external_heldout, "population_key": "population",
            "time_key": "time", "sizes": [0]}
  raise app.UsageError(f"unknown bed {name!r}; choose embedded or external")


def _measured(argv: Sequence[str], what: str) -> dict[str, Any]:
  """Runs one step in its own process: wall s, its peak RSS, the 1-min load before and after."""
  logging.info("%s: %s", what, " ".join(argv))
  load_before = os.getloadavg()[0]
  cost = resources.run_measured(argv)
  if cost["returncode"] != 0:
    raise RuntimeError(f"{what} failed with exit code {cost['returncode']}")
  return {"wall_s": cost["wall_s"], "peak_rss_gb": cost["peak_rss_mb"] / 2**10,
          "load_1min": [load_before, os.getloadavg()[0]]}


def training_cells(run_dir: str | os.PathLike) -> Any:
  """The TRAIN-split cells of a finished run (raw counts, labels in obs[LABEL_KEY])."""
  import anndata  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  import pandas as pd  # pylint: disable=g-import-not-at-top
  from cardiac_jax import fingerprint  # pylint: disable=g-import-not-at-top
  from cardiac_jax.data import sources  # pylint: disable=g-import-not-at-top
  from cardiac_jax.data import splits  # pylint: disable=g-import-not-at-top
  from cardiac_jax.data import stages  # pylint: disable=g-import-not-at-top
  data_cfg = ml_collections.ConfigDict(fingerprint.read_config_file(str(run_dir))["config"]).data
  cells, _ = sources.prepared_cells(data_cfg, stages.Stages())
  rows = np.flatnonzero(sources.split_of(cells, data_cfg.split) == splits.SPLITS.index("train"))
  labels = np.asarray(cells.class_names)[cells.labels[rows]]
  return anndata.AnnData(X=cells.counts[rows],
                         obs=pd.DataFrame({LABEL_KEY: labels},
                                          index=np.asarray(cells.obs_names)[rows]),
                         var=pd.DataFrame(index=np.asarray(cells.gene_names)))


def heldout_file(heldout: str, size: int, out_dir: pathlib.Path, seed: int) -> pathlib.Path:
  """All the held-out cells (size 0 or >= their number), or a seeded random subset's h5ad."""
  import anndata  # pylint: disable=g-import-not-at-top
  from cardiac_jax import fileio  # pylint: disable=g-import-not-at-top
  backed = anndata.read_h5ad(heldout, backed="r")
  n = backed.n_obs
  if size <= 0 or size >= n:
    backed.file.close()
    return pathlib.Path(heldout)
  path = out_dir / f"heldout_{size}.h5ad"
  if not path.exists():
    rows = np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))
    sub = backed[rows].to_memory()
    fileio.atomic_write_h5ad(sub, path)
  backed.file.close()
  return path


def score(true: np.ndarray, pred: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
  """Accuracy and macro-F1 over the cells whose true label is one of ``classes``."""
  from sklearn import metrics  # pylint: disable=g-import-not-at-top
  true, pred = np.asarray(true).astype(str), np.asarray(pred).astype(str)
  known = np.isin(true, list(classes))
  if not known.any():
    raise ValueError(f"no held-out cell has one of the classes {list(classes)}")
  return {"n_cells": int(true.size), "n_scored": int(known.sum()),
          "accuracy": float(np.mean(pred[known] == true[known])),
          "macro_f1": float(metrics.f1_score(true[known], pred[known], labels=list(classes),
                                             average="macro", zero_division=0))}


def pcs_logreg(model_dir: pathlib.Path, train_h5ad: pathlib.Path, heldout: pathlib.Path,
               population_key: str, classes: Sequence[str]) -> dict[str, Any]:
  """Reference: scikit-learn's default logistic regression on the run's own PCs.

  The exported preprocessor (HVGs, scaling, PCA fitted on the training cells)
  embeds the training cells and the held-out ones; no walks, no day. It tells
  how much of the gap to CellTypist is the embedding rather than the sequences.
  """
  import anndata  # pylint: disable=g-import-not-at-top
  from sklearn import linear_model  # pylint: disable=g-import-not-at-top
  from cardiac_jax.data import preprocess  # pylint: disable=g-import-not-at-top
  pp = preprocess.Preprocessor.load(model_dir / "preprocessor.npz")
  train = anndata.read_h5ad(train_h5ad)
  clf = linear_model.LogisticRegression(max_iter=1000).fit(
      pp.transform(train.X, np.asarray(train.var_names)),
      train.obs[LABEL_KEY].astype(str).to_numpy())
  test = anndata.read_h5ad(heldout)
  pred = clf.predict(pp.transform(test.X, np.asarray(test.var_names)))
  return score(test.obs[population_key].astype(str).to_numpy(), pred, classes)


def _labels_of(csv: pathlib.Path, cells: np.ndarray) -> np.ndarray:
  import pandas as pd  # pylint: disable=g-import-not-at-top
  table = pd.read_csv(csv, usecols=["cell", "label"], dtype=str).set_index("cell")
  return table.loc[cells, "label"].to_numpy()


def run_bed(name: str, workdir: pathlib.Path) -> dict[str, Any]:
  """Every step of one bed; finished steps are read back from <bed>/steps.json."""
  import anndata  # pylint: disable=g-import-not-at-top
  spec = bed_spec(name)
  bed_dir = workdir / name
  bed_dir.mkdir(parents=True, exist_ok=True)
  steps_path = bed_dir / "steps.json"
  done = json.loads(steps_path.read_text()) if steps_path.exists() and not FLAGS.fresh else {}

  def step(key: str, fn) -> Any:
    if key not in done:
      done[key] = fn()
      common.write_json(steps_path, done)
    return done[key]

  run_dir = bed_dir / "ours_run"
  ct_python = FLAGS.celltypist_python
  if not ct_python:
    raise app.UsageError("--celltypist_python is required (see the module docstring)")

  def train_ours():
    shutil.rmtree(run_dir, ignore_errors=True)     # a fresh run: no resume, no cached dataset
    return _measured(
        [sys.executable, "-m", "cardiac_jax.cli", "train", f"--config={spec['config']}",
         f"--workdir={run_dir}", f"--config.data.cache_dir={run_dir / 'cache'}",
         *spec["overrides"]], "ours_train")
  step("ours_train", train_ours)
  classes = json.loads((run_dir / "model" / "model.json").read_text())["class_names"]

  def write_training_cells():
    from cardiac_jax import fileio  # pylint: disable=g-import-not-at-top
    adata = training_cells(run_dir)
    fileio.atomic_write_h5ad(adata, bed_dir / "train_cells.h5ad")
    return {"n_cells": int(adata.n_obs), "n_genes": int(adata.n_vars),
            "per_class": {str(k): int(v) for k, v in adata.obs[LABEL_KEY].value_counts().items()}}
  train_cells = step("train_cells", write_training_cells)
  for _, key, extra in CELLTYPIST_VARIANTS:
    step(f"{key}_train", lambda: _measured(
        [ct_python, str(WORKER), "train", f"--input={bed_dir / 'train_cells.h5ad'}",
         f"--label_key={LABEL_KEY}", f"--model={bed_dir / f'{key}_model.pkl'}", *extra],
        f"{key}_train"))

  rows = []
  for size in spec["sizes"]:
    path = heldout_file(spec["heldout"], size, bed_dir, FLAGS.seed)
    tag = str(size or "all")
    step(f"ours_predict_{tag}", lambda: _measured(
        [sys.executable, "-m", "cardiac_jax.cli", "predict", f"--model={run_dir / 'model'}",
         f"--input={path}", f"--output={bed_dir / f'ours_{tag}.h5ad'}",
         f"--csv={bed_dir / f'ours_{tag}.csv'}", f"--time_key={spec['time_key']}"],
        "ours_predict"))
    for _, key, _ in CELLTYPIST_VARIANTS:
      step(f"{key}_annotate_{tag}", lambda: _measured(
          [ct_python, str(WORKER), "annotate", f"--input={path}",
           f"--model={bed_dir / f'{key}_model.pkl'}", f"--output={bed_dir / f'{key}_{tag}.csv'}"],
          f"{key}_annotate"))
    obs = anndata.read_h5ad(path, backed="r").obs
    cells = np.asarray(obs.index).astype(str)
    true = obs[spec["population_key"]].astype(str).to_numpy()
    for method, key, use in (("cardiac_jax", "ours", "predict"),
                             *((m, k, "annotate") for m, k, _ in CELLTYPIST_VARIANTS)):
      train, cost = done[f"{key}_train"], done[f"{key}_{use}_{tag}"]
      rows.append({"bed": name, "method": method, "size": size, "heldout": str(path),
                   **score(true, _labels_of(bed_dir / f"{key}_{tag}.csv", cells), classes),
                   "train_wall_s": train["wall_s"], "train_peak_rss_gb": train["peak_rss_gb"],
                   "annotate_wall_s": cost["wall_s"], "annotate_peak_rss_gb": cost["peak_rss_gb"]})
    reference = step(f"pcs_logreg_{tag}", lambda: pcs_logreg(
        run_dir / "model", bed_dir / "train_cells.h5ad", path, spec["population_key"], classes))
    rows.append({"bed": name, "method": "reference: logistic regression on the run's PCs",
                 "size": size, "heldout": str(path), **reference})
  return {"bed": name, "classes": classes, "train_cells": train_cells, "steps": done,
          "spec": spec, "rows": rows}


def markdown(beds: Sequence[dict[str, Any]]) -> list[str]:
  """The side-by-side table: one row per bed, held-out size and method."""
  header = ["bed", "held-out cells (scored)", "method", "accuracy", "macro-F1",
            "train wall s", "train peak GB", "annotate wall s", "annotate peak GB"]
  body = []
  for bed in beds:
    for r in bed["rows"]:
      cost = [(key, 1 if key.endswith("wall_s") else 2) for key in
              ("train_wall_s", "train_peak_rss_gb", "annotate_wall_s", "annotate_peak_rss_gb")]
      body.append([r["bed"], f"{r['n_cells']:,} ({r['n_scored']:,})", r["method"],
                   r["accuracy"], r["macro_f1"],
                   *(f"{r[k]:.{d}f}" if k in r else None for k, d in cost)])
  return common.table(header, body)


def define_flags() -> None:
  """The script's flags (defined here, not at import, like every study's)."""
  flags.DEFINE_list("beds", ["embedded"], "Beds: embedded, external.")
  flags.DEFINE_string("workdir", "/tmp/celltypist_peer", "Folder for runs, files, results.")
  flags.DEFINE_string("celltypist_python", "", "python of the venv with the celltypist "
                      "extra (python3 -m venv V && V/bin/pip install -e '.[celltypist]').")
  flags.DEFINE_string("embedded_heldout", "/tmp/full/cells.h5ad", "Held-out embedded cells: "
                      "bench_full_data --stage=simulate (230,786 cells, seed 0).")
  flags.DEFINE_list("sizes", ["30000", "0"], "Held-out cells of the embedded bed (0 = all).")
  flags.DEFINE_string("external_train", "", "external_testbed h5ad the models train on.")
  flags.DEFINE_string("external_heldout", "", "external_testbed h5ad of the same tree, "
                      "another seed: the held-out cells.")
  flags.DEFINE_integer("seed", 0, "Seed of the held-out subsets.")
  flags.DEFINE_bool("fresh", False, "Rerun every step (default: reuse <bed>/steps.json).")


def main(argv: Sequence[str]) -> None:
  del argv
  workdir = pathlib.Path(FLAGS.workdir).expanduser().resolve()
  workdir.mkdir(parents=True, exist_ok=True)
  beds = [run_bed(name, workdir) for name in FLAGS.beds]
  lines = markdown(beds)
  print("\n".join(lines))
  out = {"beds": beds, "cpus": os.cpu_count(), "machine": platform.platform(),
         "cpu_model": common.cpu_model(), "load_average": os.getloadavg()}
  common.write_json(workdir / "celltypist.json", out)
  (workdir / "celltypist.md").write_text("\n".join(lines) + "\n")
  print(f"wrote {workdir / 'celltypist.json'} and .md")


if __name__ == "__main__":
  define_flags()
  app.run(main)

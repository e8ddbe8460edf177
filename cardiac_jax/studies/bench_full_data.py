"""Full-size data benchmark: simulate -> GEO files -> convert back -> scale3 dataset.

  # GSE175634's size and density: 230,786 cells x 38,943 genes, ~312 M non-zeros.
  python experiments/bench_full_data.py --n_cells=230786 --n_genes=38943 \
      --mean_library_size=5000 --workdir=/tmp/full --stages=simulate
  python experiments/bench_full_data.py --n_cells=230786 --n_genes=38943 \
      --mean_library_size=5000 --workdir=/tmp/full --stages=write_geo,convert,build --predict

Simulating at 38,943 genes draws a negative binomial for every one of the 9 G
cell x gene entries (19 min on 2 shared cores), so generate cells.h5ad once
(``--stages=simulate``) and let later runs reuse it: every other stage reads it.

Every stage runs in its own child process (``python -m
cardiac_jax.studies.bench_full_data --stage=...``), so the peak resident memory
reported for a stage is that child's own maximum (``resources.run_measured``:
``ru_maxrss`` from ``os.wait4``), not a running maximum over earlier stages.
The ``convert`` stage is followed by a ``convert_check`` child that reloads both
h5ad files and requires the round trip to reproduce the counts (CSR arrays),
cell and gene names and the text obs columns exactly (float columns to a
relative 1e-6: they pass through TSV text).

``--predict`` adds ``cardiac_jax.predict`` on the simulated cells.h5ad, as the
command line runs it (load the model and the h5ad, predict, write the annotated
h5ad and predictions.csv; no plots). Its model is ``--model``, or, when that is
empty, one trained first by a ``train_model`` child: the --preset's
architecture and feature layout (walk length, HVG, PCs, k, width, depth) for
--train_epochs epochs on a small simulation (--train_cells cells with the same
genes, simulator seed --seed + 1, so none of the predicted cells was seen in
training; no spatial data). The prediction's cost depends on that layout, not on
how well the model was trained; its accuracy on the cells' true labels is
reported for information.

Targets (GSE175634 size): the build under 5 minutes, and every stage a user runs on
the real data (convert, build, predict) under 8 GB peak RSS. simulate, write_geo
and convert_check only make and check the benchmark's data.

Outputs in --workdir: ``cells.h5ad`` (simulated), ``geo/`` (the four GEO files),
``geo.h5ad`` (converted), ``cache/`` (the dataset cache), with --predict
``model_run/`` (the trained model, unless --model), ``predicted.h5ad`` and
``predictions.csv``, and ``bench_full_data.json`` (the table below, with the
build's own stage timings).
"""
from __future__ import annotations

import json
import os
import pathlib
import platform
import shutil
import sys
import time
from typing import Any, Sequence

from absl import app
from absl import flags
from absl import logging

from cardiac_jax import fileio
from cardiac_jax import resources
from cardiac_jax.studies import common

FLAGS = flags.FLAGS
STAGES = ("simulate", "write_geo", "convert", "build")
USER_STAGES = ("convert", "build", "predict")   # what a user runs on the real data
_TARGET_SECONDS = 300.0
_TARGET_RSS_GB = 8.0


def _paths(workdir: pathlib.Path) -> dict[str, pathlib.Path]:
  return {"cells": workdir / "cells.h5ad", "geo_dir": workdir / "geo",
          "geo_h5ad": workdir / "geo.h5ad", "cache": workdir / "cache",
          "model_run": workdir / "model_run", "predicted": workdir / "predicted.h5ad",
          "csv": workdir / "predictions.csv", "json": workdir / "bench_full_data.json"}


def _require(path: pathlib.Path, stage: str) -> None:
  if not path.exists():
    raise app.UsageError(f"{path} does not exist; run the {stage!r} stage first "
                         f"(--stages={stage},...)")


def _h5ad_nnz(path: pathlib.Path) -> int:
  """Stored entries of an h5ad's sparse X, read from the file's header (no matrix load)."""
  import h5py  # pylint: disable=g-import-not-at-top
  with h5py.File(path, "r") as f:
    return int(f["X"]["data"].shape[0])


def _write_h5ad_atomic(adata: Any, path: pathlib.Path) -> None:
  """Writes to a temp file in the same folder, then renames, so no half-written h5ad."""
  with fileio.atomic_path(path) as tmp:
    adata.write_h5ad(tmp)


class _Clock:
  """Wall seconds of named steps inside one stage."""

  def __init__(self):
    self.steps: dict[str, float] = {}

  def __call__(self, name: str, fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    self.steps[name] = time.perf_counter() - start
    return out


# ------------------------------------------------------------------ stages (children)


def _stage_simulate(p: dict[str, pathlib.Path]) -> dict:
  from cardiac_jax.data import simulator  # pylint: disable=g-import-not-at-top
  clock = _Clock()
  adata = clock("simulate_cells", simulator.simulate_cells, n_cells=FLAGS.n_cells,
                n_genes=FLAGS.n_genes, seed=FLAGS.seed,
                mean_library_size=FLAGS.mean_library_size)
  clock("write_h5ad", _write_h5ad_atomic, adata, p["cells"])
  return {"steps": clock.steps, "nnz": int(adata.X.nnz), "shape": list(adata.shape),
          "file_mb": p["cells"].stat().st_size / 2**20}


def _stage_write_geo(p: dict[str, pathlib.Path]) -> dict:
  from cardiac_jax.data import geo  # pylint: disable=g-import-not-at-top
  from cardiac_jax.data import ingest  # pylint: disable=g-import-not-at-top
  _require(p["cells"], "simulate")
  clock = _Clock()
  adata = clock("load_h5ad", ingest.load_h5ad, p["cells"])
  files = clock("write_geo", geo.write_geo, adata, p["geo_dir"], orientation="genes_x_cells")
  return {"steps": clock.steps, "nnz": int(adata.X.nnz),
          "file_mb": {k: v.stat().st_size / 2**20 for k, v in files.items()}}


def _stage_convert(p: dict[str, pathlib.Path]) -> dict:
  from cardiac_jax.data import geo  # pylint: disable=g-import-not-at-top
  _require(p["geo_dir"], "write_geo")
  files = {k: p["geo_dir"] / f"GSE175634{s}" for k, s in geo.FILE_SUFFIXES.items()}
  clock = _Clock()
  clock("convert_geo", geo.convert_geo, **files, out_h5ad=p["geo_h5ad"])
  return {"steps": clock.steps, "nnz": _h5ad_nnz(p["geo_h5ad"]),
          "file_mb": p["geo_h5ad"].stat().st_size / 2**20}


def _stage_convert_check(p: dict[str, pathlib.Path]) -> dict:
  """Requires geo.h5ad to hold exactly the simulated counts, names and obs columns."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from cardiac_jax.data import ingest  # pylint: disable=g-import-not-at-top
  _require(p["geo_h5ad"], "convert")
  want, got = ingest.load_h5ad(p["cells"]), ingest.load_h5ad(p["geo_h5ad"])
  problems = []
  for name in ("obs_names", "var_names"):
    if not np.array_equal(np.asarray(getattr(want, name)), np.asarray(getattr(got, name))):
      problems.append(name)
  a, b = want.X, got.X
  a.sum_duplicates()
  b.sum_duplicates()
  if a.shape != b.shape:
    problems.append(f"shape {a.shape} != {b.shape}")
  else:
    for name in ("indptr", "indices", "data"):
      if not np.array_equal(getattr(a, name), getattr(b, name)):
        problems.append(f"X.{name}")
  worst = 0.0
  for col in want.obs.columns:
    if col not in got.obs.columns:
      problems.append(f"obs[{col!r}] missing")
      continue
    x, y = want.obs[col], got.obs[col]
    if x.dtype.kind == "f":
      # Floats pass through TSV text (float32 columns come back as float64).
      x, y = x.to_numpy(np.float64), y.to_numpy(np.float64)
      worst = max(worst, float(np.max(np.abs(x - y) / np.maximum(np.abs(x), 1e-300),
                                      initial=0.0)))
      if not np.allclose(x, y, rtol=1e-6, atol=0.0):
        problems.append(f"obs[{col!r}]")
    elif not np.array_equal(x.astype(str).to_numpy(), y.astype(str).to_numpy()):
      problems.append(f"obs[{col!r}]")
  if problems:
    raise RuntimeError(f"GEO round trip differs in: {problems}")
  return {"counts_identical": True, "nnz": int(a.nnz), "dtype": [str(a.dtype), str(b.dtype)],
          "obs_float_max_rel_diff": worst}


def _stage_build(p: dict[str, pathlib.Path]) -> dict:
  from cardiac_jax import config_lib  # pylint: disable=g-import-not-at-top
  from cardiac_jax.data import dataset  # pylint: disable=g-import-not-at-top
  _require(p["cells"], "simulate")
  config = config_lib.preset(FLAGS.preset)
  config.data.source = "h5ad"
  config.data.path = str(p["cells"])
  config.data.simulator.n_genes = FLAGS.n_genes   # the simulated spatial section's genes
  shutil.rmtree(p["cache"], ignore_errors=True)    # a fresh cache: every stage runs
  config.data.cache_dir = str(p["cache"])
  timings: dict = {}
  ds = dataset.build_dataset(config.data, timings=timings)
  return {"steps": {k: v["seconds"] for k, v in timings.items()},
          "steps_peak_rss_gb": {k: v["peak_rss_mb"] / 2**10 for k, v in timings.items()},
          "n_sequences": len(ds), "shape": list(ds.x.shape), "n_cells": ds.meta["n_cells"],
          "nnz": _h5ad_nnz(p["cells"]),
          "cells_per_split": ds.meta["cells_per_split"]}


def _stage_train_model(p: dict[str, pathlib.Path]) -> dict:
  """A model of the preset's architecture, trained briefly on new simulated cells."""
  from cardiac_jax import config_lib  # pylint: disable=g-import-not-at-top
  from cardiac_jax import train  # pylint: disable=g-import-not-at-top
  config = config_lib.preset(FLAGS.preset)
  config.data.source = "simulator"
  config.data.simulator.n_cells = FLAGS.train_cells
  config.data.simulator.n_genes = FLAGS.n_genes     # the same gene names as cells.h5ad
  config.data.simulator.seed = FLAGS.seed + 1       # other cells than the predicted ones
  config.data.spatial.enabled = False
  config.data.sequences.spatial_total = 0
  config.data.sequences.per_population = max(60, FLAGS.train_cells // 20)
  config.data.cache_dir = str(p["model_run"] / "cache")
  config.train.num_epochs = FLAGS.train_epochs
  config.train.progress_bar = False
  shutil.rmtree(p["model_run"], ignore_errors=True)
  results = train.train_and_evaluate(config, str(p["model_run"]))
  return {"test_acc": results["test_acc"], "epochs": FLAGS.train_epochs,
          "train_cells": FLAGS.train_cells, "model": str(p["model_run"] / "model")}


def _stage_predict(p: dict[str, pathlib.Path]) -> dict:
  """``predict`` on cells.h5ad as the command line runs it (no plots)."""
  import anndata  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from cardiac_jax import export  # pylint: disable=g-import-not-at-top
  from cardiac_jax import prediction  # pylint: disable=g-import-not-at-top
  from cardiac_jax.data import ingest  # pylint: disable=g-import-not-at-top
  _require(p["cells"], "simulate")
  model_path = pathlib.Path(FLAGS.model) if FLAGS.model else p["model_run"] / "model"
  clock = _Clock()
  model = clock("load_model", export.load_model, model_path)
  adata = clock("load_h5ad", ingest.load_h5ad, p["cells"])
  clock("predict", prediction.predict, adata, model, n_walks=FLAGS.n_walks, progress=False)
  clock("write", prediction.write_predictions, adata, p["predicted"], p["csv"])
  del adata
  obs = anndata.read_h5ad(p["predicted"], backed="r").obs      # obs only, X stays on disk
  true, pred = obs["type"].astype(str).to_numpy(), obs["cardiac_jax_label"].astype(str).to_numpy()
  known = [c for c in model.class_names if np.any(true == c)]
  is_known = np.isin(true, known)          # the simulator's UNK cells have no right answer
  return {"steps": clock.steps, "nnz": _h5ad_nnz(p["cells"]), "model": str(model_path),
          "n_walks": FLAGS.n_walks,
          "walk_length": model.length, "num_features": int(model.info["num_features"]),
          "n_cells": int(true.size),
          "accuracy_known": float(np.mean(pred[is_known] == true[is_known])),
          "balanced_accuracy": float(np.mean([np.mean(pred[true == c] == c) for c in known]))}


_RUNNERS = {"simulate": _stage_simulate, "write_geo": _stage_write_geo,
            "convert": _stage_convert, "convert_check": _stage_convert_check,
            "build": _stage_build, "train_model": _stage_train_model,
            "predict": _stage_predict}


# ------------------------------------------------------------------ parent


def _run_child(stage: str, workdir: pathlib.Path) -> dict:
  """Runs one stage in a fresh interpreter; returns its result with wall s and peak RSS."""
  result_path = workdir / f".stage_{stage}.json"
  result_path.unlink(missing_ok=True)
  argv = [sys.executable, "-m", "cardiac_jax.studies.bench_full_data", f"--stage={stage}",
          f"--n_cells={FLAGS.n_cells}", f"--n_genes={FLAGS.n_genes}", f"--seed={FLAGS.seed}",
          f"--mean_library_size={FLAGS.mean_library_size}",
          f"--preset={FLAGS.preset}", f"--workdir={workdir}", f"--model={FLAGS.model}",
          f"--n_walks={FLAGS.n_walks}", f"--train_cells={FLAGS.train_cells}",
          f"--train_epochs={FLAGS.train_epochs}"]
  logging.info("stage %s: %s", stage, " ".join(argv))
  cost = resources.run_measured(argv)   # the child's own peak RSS, not a running maximum
  if cost["returncode"] != 0:
    raise RuntimeError(f"stage {stage} failed with exit code {cost['returncode']}")
  result = json.loads(result_path.read_text())
  result_path.unlink()
  result.update(stage=stage, wall_s=cost["wall_s"], peak_rss_gb=cost["peak_rss_mb"] / 2**10)
  return result


def _print_table(results: list[dict]) -> None:
  print(f"\n{FLAGS.n_cells} cells x {FLAGS.n_genes} genes, preset {FLAGS.preset}; "
        f"{os.cpu_count()} CPUs")
  print(f"{'stage':<26}{'wall s':>9}{'peak RSS GB':>13}{'non-zeros':>14}")
  for r in results:
    nnz = f"{r['nnz']:>14,}" if "nnz" in r else ""
    print(f"{r['stage']:<26}{r['wall_s']:>9.1f}{r['peak_rss_gb']:>13.2f}{nnz}")
    peaks = r.get("steps_peak_rss_gb", {})
    for name, sec in r.get("steps", {}).items():
      rss = f"{peaks[name]:>13.2f}" if name in peaks else ""
      print(f"  {name:<24}{sec:>9.1f}{rss}")
  for r in results:
    over = []
    if r["stage"] in USER_STAGES and r["peak_rss_gb"] >= _TARGET_RSS_GB:
      over.append(f"peak RSS {r['peak_rss_gb']:.2f} GB >= {_TARGET_RSS_GB:.0f} GB")
    if r["stage"] == "build" and r["wall_s"] >= _TARGET_SECONDS:
      over.append(f"{r['wall_s']:.0f} s >= {_TARGET_SECONDS:.0f} s")
    if r["stage"] in USER_STAGES:
      print(f"target {r['stage']}: {'MISSED (' + '; '.join(over) + ')' if over else 'met'}")


def define_flags() -> None:
  """The script's flags (defined here, not at import, like every study's)."""
  flags.DEFINE_integer("n_cells", 230_786, "Cells to simulate (GSE175634: 230,786).")
  flags.DEFINE_integer("n_genes", 2_000, "Genes to simulate (GSE175634: 38,943).")
  flags.DEFINE_float("mean_library_size", 2_000.0, "Mean UMIs per simulated cell; "
                     "5,000 at 38,943 genes gives GSE175634's density (~1,350 "
                     "non-zeros per cell).")
  flags.DEFINE_integer("seed", 0, "Simulator seed.")
  flags.DEFINE_string("preset", "scale3", "config_lib preset of the build stage.")
  flags.DEFINE_string("workdir", "/tmp/full", "Folder for the data files and results.")
  flags.DEFINE_list("stages", list(STAGES), f"Stages to run, in order; of {STAGES}.")
  flags.DEFINE_string("stage", "", "Internal: run this one stage in this process.")
  flags.DEFINE_bool("predict", False, "After --stages, predict on cells.h5ad.")
  flags.DEFINE_string("model", "", "Exported model for --predict; '' = train one "
                      "(train_model stage).")
  flags.DEFINE_integer("n_walks", 8, "Walks per cell in --predict.")
  flags.DEFINE_integer("train_cells", 6_000, "Cells simulated to train the "
                       "--predict model.")
  flags.DEFINE_integer("train_epochs", 2, "Epochs of the --predict model.")


def main(argv: Sequence[str]) -> None:
  del argv
  workdir = pathlib.Path(FLAGS.workdir).expanduser().resolve()
  workdir.mkdir(parents=True, exist_ok=True)
  paths = _paths(workdir)
  if FLAGS.stage:   # child: run one stage, hand the result back through a file
    if FLAGS.stage not in _RUNNERS:
      raise app.UsageError(f"unknown --stage={FLAGS.stage}; choose one of {sorted(_RUNNERS)}")
    result = _RUNNERS[FLAGS.stage](paths)
    (workdir / f".stage_{FLAGS.stage}.json").write_text(json.dumps(result))
    return

  unknown = sorted(set(FLAGS.stages) - set(STAGES))
  if unknown:
    raise app.UsageError(f"unknown stages {unknown}; choose from {STAGES}")
  results = []
  for stage in FLAGS.stages:
    results.append(_run_child(stage, workdir))
    if stage == "convert":
      results.append(_run_child("convert_check", workdir))
  if FLAGS.predict:
    if not FLAGS.model:
      results.append(_run_child("train_model", workdir))
    results.append(_run_child("predict", workdir))
  _print_table(results)
  out = {"n_cells": FLAGS.n_cells, "n_genes": FLAGS.n_genes, "seed": FLAGS.seed,
         "preset": FLAGS.preset, "stages": results, "cpus": os.cpu_count(),
         "machine": platform.platform(), "cpu_model": common.cpu_model(),
         "load_average": os.getloadavg(), "targets": {"seconds": _TARGET_SECONDS,
                                                     "peak_rss_gb": _TARGET_RSS_GB}}
  paths["json"].write_text(json.dumps(out, indent=2))
  print(f"wrote {paths['json']}")


if __name__ == "__main__":
  define_flags()
  app.run(main)

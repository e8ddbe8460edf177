"""Spatial regions: the sequence model against every baseline on held-out sections, two data
sets, three seeds (``docs/results/spatial.md``).

  python experiments/regions_benchmark.py --workdir=runs/regions_bench \
      --simspace_bed=/work/data/simspace_bed_seed{seed}.h5ad --out=docs/results/spatial
  # the beds (the simspace extra; ~15 min each on 2 cores, made once):
  python -m cardiac_jax.studies.simspace_testbed --out=/work/data/simspace_bed_seed0.h5ad --seed=0

Data sets. ``embedded``: ``configs/spatial.py`` as it is (the section simulator, 5
sections x ~3,000 spots); seed k draws the sections, the split and the walks
(``config_lib.with_data_seed``) and trains with seed k. ``simspace``: bed k
(``studies.simspace_testbed``: 5 SimSpace sections x ~2,500 spots, a draw of its own
per seed) read as any user's h5ad, with config overrides only (source, path,
section and region keys); seed k picks the held-out sections, the walks and the
training seed. Every (data set, seed) is one ``train.train_and_evaluate`` run
(``studies.runs.train_or_reuse``: a finished run is re-read, not retrained), whose
report scores the model and every baseline on the same held-out spots
(``regions.report``).

Statistics. Per method, the mean ± std over seeds of the test accuracy and macro-F1,
and the wall time (the model: its training epochs plus predicting every spot of the
report; a baseline: its fit, tuning and scoring). The paired per-spot differences
(model − ``logreg_spot``; model − the baseline best on VALIDATION in that seed) come
from each run's ``vs_baselines`` (mean of d_i = correct_model,i − correct_base,i over
the test spots, SE = sd(d) / sqrt(n)) and are pooled over the K seeds as the mean
difference with SE = sqrt(sum SE_k²) / K (the seeds are independent draws). The
spots of one section are correlated, so the per-spot SE understates the noise; the
seeds' spread is the other half, and both are printed.
"""
from __future__ import annotations

import datetime
import math
import os
import pathlib
import shlex
import sys
from typing import Any, Sequence

from absl import app
from absl import flags
from absl import logging
import numpy as np

from cardiac_jax import config_lib
from cardiac_jax import fileio
from cardiac_jax import region_baselines
from cardiac_jax import regions
from cardiac_jax.data import dataset as dataset_lib
from cardiac_jax.studies import common
from cardiac_jax.studies import runs as runs_lib

FLAGS = flags.FLAGS
BEDS = ("embedded", "simspace")
METHODS = ("model",) + region_baselines.BASELINES
BED_TITLES = {"embedded": "embedded section simulator (cardiac_jax.data.section_simulator)",
              "simspace": "SimSpace bed (cardiac_jax.studies.simspace_testbed, simspace 0.4.2)"}


def bed_config(bed: str, seed: int, simspace_bed: str, variant: str = "") -> Any:
  """``configs/spatial.py`` for one data set and seed (overrides only, as a user would)."""
  config = config_lib.with_data_seed(config_lib.preset("spatial", variant or None), seed)
  config.seed = int(seed)
  config.train.progress_bar = False
  if bed == "simspace":
    path = simspace_bed.format(seed=seed)
    if not os.path.isfile(path):
      raise app.UsageError(
          f"no SimSpace bed at {path}; make it once with `python -m "
          f"cardiac_jax.studies.simspace_testbed --out={path} --seed={seed}` (pip install -e "
          "'.[simspace]'), or pass --simspace_bed=<pattern with {seed}>")
    sp = config.data.spatial
    sp.source, sp.path, sp.section_key, sp.region_key = "h5ad", path, "section", "region"
  elif bed != "embedded":
    raise app.UsageError(f"unknown bed {bed!r}; choose from {BEDS}")
  return config


def run_one(bed: str, seed: int, simspace_bed: str, workdir: str,
            variant: str = "") -> dict[str, Any]:
  """One (data set, seed): its run's spot-level scores, per method."""
  config = bed_config(bed, seed, simspace_bed, variant)
  ds = dataset_lib.build_dataset(config.data, progress=False)
  report = runs_lib.train_or_reuse(config, workdir, ds)
  info = report["regions"]
  methods = {"model": {
      "val_acc": report["val_acc"], "test_acc": report["test_acc"],
      "test_macro_f1": report["test_macro_f1"],
      "seconds": report["train_seconds"] + info.get("predict_seconds", float("nan"))}}
  for name, b in report["baselines"].items():
    methods[name] = {k: b[k] for k in ("val_acc", "test_acc", "test_macro_f1", "seconds")}
    methods[name]["selected"] = b.get("selected")
  best = report["best_baseline"]
  return {"seed": int(seed), "workdir": workdir, "methods": methods, "best_baseline": best,
          "n_test_spots": report["n_test_spots"], "sections": info["split"]["sections"],
          "spots": int(ds.meta["n_spots"]), "wall_seconds": report["wall_seconds"],
          "best_epoch": report["best_epoch"], "epochs_run": report["epochs_run"],
          "vs": {"logreg_spot": report["vs_baselines"]["logreg_spot"],
                 "best_on_val": {"baseline": best, **report["vs_baselines"][best]}}}


def pooled(diffs: Sequence[dict[str, float]]) -> dict[str, float]:
  """Mean of the seeds' paired differences, SE = sqrt(sum SE_k²) / K."""
  k = len(diffs)
  return {"diff": float(np.mean([d["diff"] for d in diffs])),
          "se": math.sqrt(sum(d["se"] ** 2 for d in diffs)) / k,
          "seeds_std": float(np.std([d["diff"] for d in diffs]))}


def summarise(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
  """Mean ± std over seeds per method, pooled differences and the two verdicts."""
  stats = {m: {k: common.mean_std([r["methods"][m][k] for r in runs])
               for k in ("val_acc", "test_acc", "test_macro_f1", "seconds")}
           for m in METHODS}
  vs_spot = pooled([r["vs"]["logreg_spot"] for r in runs])
  vs_best = pooled([r["vs"]["best_on_val"] for r in runs])
  return {"methods": stats, "vs_logreg_spot": vs_spot, "vs_best_on_val": vs_best,
          "above_logreg_spot_by_2se": vs_spot["diff"] > 2 * vs_spot["se"],
          "at_least_best_on_val": vs_best["diff"] >= 0,
          "best_on_val": [r["best_baseline"] for r in runs]}


def write_map(run: dict[str, Any], path: str) -> str:
  """One held-out section of a run: the true region, the model's, the per-spot baseline's,
  the best-on-validation baseline's, and the model's confidence, side by side."""
  import pandas as pd  # pylint: disable=g-import-not-at-top
  from cardiac_jax import viz  # pylint: disable=g-import-not-at-top
  table = pd.read_csv(os.path.join(run["workdir"], regions.PREDICTIONS_CSV))
  section = sorted(run["sections"]["test"])[0]
  rows = table[(table["section"].astype(str) == str(section)) & (table["split"] == "test")]
  names = sorted(set(table["region"]) | set(table["predicted"]))
  code = lambda col: np.asarray([names.index(v) for v in rows[col]])  # noqa: E731
  best = run["best_baseline"]
  acc = lambda col: float(np.mean(rows[col] == rows["region"]))  # noqa: E731
  panels = [("true region", code("region"), names),
            (f"model ({acc('predicted'):.3f})", code("predicted"), names),
            (f"logreg_spot ({acc('pred_logreg_spot'):.3f})", code("pred_logreg_spot"), names)]
  if best != "logreg_spot":
    panels.append((f"{best}, best on val ({acc('pred_' + best):.3f})", code("pred_" + best),
                   names))
  panels.append(("model confidence", rows["confidence"].to_numpy(), None))
  viz.plot_section_maps(rows[["x", "y"]].to_numpy(), panels,
                        f"held-out section {section} (seed {run['seed']})", path=path)
  return path


def markdown(summary: dict[str, Any]) -> str:
  """The results page: machine and date once, then per data set its tables and map."""
  lines = ["# Spatial regions: the sequence model against every baseline on held-out sections",
           "", f"Written by `{summary['command']}` on {summary['date']}; machine: "
           f"{summary['machine']} ({summary['cpus']} cores{summary['shared_note']}).", "",
           "Each row: mean ± std over seeds " + ", ".join(str(s) for s in summary["seeds"]) +
           " (one data draw, split and training seed each); every method on the same "
           "held-out sections and spots. The model is the sequence classifier of "
           "`configs/spatial.py` (walks ending at each spot, probabilities averaged over "
           "`predict_walks` walks); baselines in `cardiac_jax/region_baselines.py`. Wall "
           "time: the model's training epochs plus predicting every spot of the report (training "
           "and held-out, 8 walks each, one call); "
           "a baseline's fit, tuning and scoring (data set build excluded, shared).", ""]
  for bed, s in summary["beds"].items():
    runs = s["runs"]
    lines += [f"## {BED_TITLES[bed]}", "",
              f"{runs[0]['spots']:,} spots in 5 sections per seed (seed 0); held out per "
              "seed: " + "; ".join(f"seed {r['seed']}: val {r['sections']['val']}, test "
                                   f"{r['sections']['test']} ({r['n_test_spots']:,} test spots)"
                                   for r in runs) + ".", ""]
    rows = [[m, s["summary"]["methods"][m]["val_acc"], s["summary"]["methods"][m]["test_acc"],
             s["summary"]["methods"][m]["test_macro_f1"],
             common.fmt(s["summary"]["methods"][m]["seconds"], 0)] for m in METHODS]
    lines += common.table(["method", "val acc", "test acc", "test macro-F1", "wall s"], rows)
    lines += ["", "Paired per-spot differences in test accuracy (± 2 SE over spots; pooled: "
              "mean over seeds, SE = sqrt(Σ SE²)/K; std = the seeds' spread):", ""]
    header = (["difference"] + [f"seed {r['seed']}" for r in runs] +
              ["pooled ± 2 SE", "std over seeds"])
    diff_rows = []
    for key, label in (("logreg_spot", "model − logreg_spot"),
                       ("best_on_val", "model − best on validation")):
      cells = [label]
      for r in runs:
        d = r["vs"][key]
        name = f" ({d['baseline']})" if key == "best_on_val" else ""
        cells.append(f"{d['diff']:+.4f} ± {2 * d['se']:.4f}{name}")
      p = s["summary"]["vs_" + ("logreg_spot" if key == "logreg_spot" else "best_on_val")]
      cells += [f"{p['diff']:+.4f} ± {2 * p['se']:.4f}", f"{p['seeds_std']:.4f}"]
      diff_rows.append(cells)
    lines += common.table(header, diff_rows)
    v = s["summary"]
    lines += ["", f"- Above the per-spot logistic regression by more than 2 SE: "
              f"**{'yes' if v['above_logreg_spot_by_2se'] else 'no'}** "
              f"({v['vs_logreg_spot']['diff']:+.4f} vs 2 SE {2 * v['vs_logreg_spot']['se']:.4f}).",
              f"- At least the baseline best on validation: "
              f"**{'yes' if v['at_least_best_on_val'] else 'no'}** "
              f"({v['vs_best_on_val']['diff']:+.4f} ± {2 * v['vs_best_on_val']['se']:.4f}; "
              f"best on validation per seed: {', '.join(v['best_on_val'])}).", ""]
    if s.get("map"):
      lines += [f"![{bed} held-out section]({os.path.basename(s['map'])})", ""]
  lines += summary.get("notes", [])
  return "\n".join(lines) + "\n"


def define_flags() -> None:
  """The script's flags (defined here, not at import)."""
  flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds (data draw, split, walks, training).")
  flags.DEFINE_list("beds", list(BEDS), "Data sets: embedded, simspace.")
  flags.DEFINE_string("simspace_bed", "/work/data/simspace_bed_seed{seed}.h5ad",
                      "Path pattern of the pre-built SimSpace beds ({seed} is replaced).")
  flags.DEFINE_string("workdir", "runs/regions_bench", "Where the runs go (one per bed, seed).")
  flags.DEFINE_string("out", "docs/results/spatial",
                      "Results path without extension: .md, .json and <out>_<bed>_map.png.")
  flags.DEFINE_string("notes", "", "A markdown file appended to the results page (the "
                      "discussion; its numbers are the reader's to check against the tables).")
  flags.DEFINE_bool("shared_machine", False, "Say on the page that the cores were shared.")
  flags.DEFINE_string("variant", "", "configs/spatial.py's variant ('quick': a smoke run).")


def main(argv: Sequence[str]) -> None:
  del argv
  seeds = [int(s) for s in FLAGS.seeds]
  out = pathlib.Path(FLAGS.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  summary: dict[str, Any] = {
      "command": "python experiments/regions_benchmark.py " + " ".join(
          shlex.quote(a) for a in sys.argv[1:]),
      "date": datetime.date.today().isoformat(), "machine": common.cpu_model(),
      "cpus": os.cpu_count(), "seeds": seeds,
      "shared_note": ", shared with another engineer's benchmarks" if FLAGS.shared_machine
                     else "", "beds": {}}
  for bed in FLAGS.beds:
    runs = []
    for seed in seeds:
      logging.info("regions benchmark: %s seed %d", bed, seed)
      runs.append(run_one(bed, seed, FLAGS.simspace_bed,
                          os.path.join(FLAGS.workdir, bed, f"seed{seed}"), FLAGS.variant))
    summary["beds"][bed] = {"runs": runs, "summary": summarise(runs),
                            "map": write_map(runs[0], f"{out}_{bed}_map.png")}
  if FLAGS.notes:
    summary["notes"] = pathlib.Path(FLAGS.notes).read_text().splitlines()
  common.write_json(f"{out}.json", summary)
  text = markdown(summary)
  fileio.atomic_write_text(f"{out}.md", text)
  print(text)


if __name__ == "__main__":
  define_flags()
  app.run(main)

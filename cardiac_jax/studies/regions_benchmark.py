"""Spatial regions: the sequence model against every baseline, on held-out sections, over seeds.

  python experiments/regions_benchmark.py --config=configs/spatial.py --seeds=0,1,2 \\
      --simspace=/work/data/simspace_bed_seed{seed}.h5ad --workdir=runs/regions_bench \\
      --out=docs/results/spatial

Two beds, each with the same config apart from where the spots come from:
``embedded`` (``data.spatial.source = "simulator"``: the section simulator, a
new data set per seed) and ``simspace`` (the SimSpace sections of
``studies/simspace_testbed.py``, one h5ad per seed, read with config changes
only: source, path, section and region keys). Per seed the data seed
(``config_lib.with_data_seed``: simulator, split and walk seeds) changes, so the
held-out sections change too. Every method is scored on the SAME held-out
spots (the run's report: ``regions.report``); the table gives test accuracy and
macro-F1 as mean ± std over seeds, and the paired differences model - per-spot
and model - best baseline on validation, pooled over the seeds' test spots
(``regions.paired_difference``: SE over spots; neighbouring spots are
correlated, so the seeds' spread of the differences is shown too). Results go
to ``<out>.md`` / ``.json`` and the maps of one held-out section per bed to
``<out>_<bed>.png``.
"""
from __future__ import annotations

import os
import shutil
import sys
import time
from typing import Any, Sequence

from absl import flags
from absl import logging
import ml_collections
import numpy as np

from cardiac_jax import config_lib
from cardiac_jax import fileio
from cardiac_jax import regions
from cardiac_jax import region_baselines
from cardiac_jax.studies import common
from cardiac_jax.studies import runs

FLAGS = flags.FLAGS
BEDS = ("embedded", "simspace")


def define_flags() -> None:
  """The study's flags (called by the front door before parsing; never at import)."""
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  config_flags.DEFINE_config_file("config", "configs/spatial.py", "The regions config.",
                                  lock_config=False)
  flags.DEFINE_list("seeds", ["0", "1", "2"], "Data seeds (simulator, split and walks).")
  flags.DEFINE_list("beds", list(BEDS), "Beds to run: embedded, simspace.")
  flags.DEFINE_string("simspace", "", "SimSpace bed h5ad per seed, '{seed}' filled in "
                      "(studies/simspace_testbed.py --out=... --seed=N).")
  flags.DEFINE_string("workdir", "runs/regions_bench", "Run directories go here.")
  flags.DEFINE_string("out", "docs/results/spatial", "Results: <out>.md, .json, _<bed>.png.")


def bed_config(config: ml_collections.ConfigDict, bed: str, seed: int,
               simspace: str = "") -> ml_collections.ConfigDict:
  """The run of one bed and seed: the data seed, and for SimSpace its h5ad and keys."""
  config = config_lib.with_data_seed(config, seed)
  if bed == "simspace":
    sp = config.data.spatial
    sp.source, sp.path = "h5ad", simspace.format(seed=seed)
    sp.section_key, sp.region_key = "section", "region"
  elif bed != "embedded":
    raise ValueError(f"unknown bed {bed!r}; choose from {BEDS}")
  config.name = f"{config.name}_{bed}_seed{seed}"
  return config


def _run_rows(workdir: str, report: dict[str, Any]) -> dict[str, Any]:
  """One run's numbers, and its test spots' correctness per method (for paired SEs)."""
  import pandas as pd  # pylint: disable=g-import-not-at-top
  frame = pd.read_csv(os.path.join(workdir, regions.PREDICTIONS_CSV))
  test = frame[frame["split"] == "test"]
  correct = {"model": (test["predicted"] == test["region"]).to_numpy()}
  for name in report["baselines"]:
    correct[name] = (test[f"pred_{name}"] == test["region"]).to_numpy()
  methods = {"model": {"val_acc": report["val_acc"], "test_acc": report["test_acc"],
                       "test_macro_f1": report["test_macro_f1"],
                       "seconds": report["wall_seconds"]}}
  for name, r in report["baselines"].items():
    methods[name] = {k: r[k] for k in ("val_acc", "test_acc", "test_macro_f1", "seconds")}
  return {"methods": methods, "best_baseline": report["best_baseline"],
          "n_test_spots": report["n_test_spots"], "correct": correct,
          "sequence_test_acc": report["sequence_level"]["test_acc"],
          "maps": report.get("unit_plots", {}),
          "test_sections": report["regions"]["split"].get("sections", {}).get("test")}


def summarise(per_seed: Sequence[dict[str, Any]]) -> dict[str, Any]:
  """Mean ± std over seeds per method, and pooled paired differences against the model."""
  names = list(per_seed[0]["methods"])
  out: dict[str, Any] = {"methods": {}, "seeds": len(per_seed),
                         "n_test_spots": [r["n_test_spots"] for r in per_seed]}
  for name in names:
    vals = {k: [r["methods"][name][k] for r in per_seed]
            for k in ("val_acc", "test_acc", "test_macro_f1", "seconds")}
    out["methods"][name] = {k: common.mean_std(v) for k, v in vals.items()}
    out["methods"][name]["per_seed_test_acc"] = vals["test_acc"]
  versus = {}
  for label, pick in (("per_spot", lambda r: "logreg_spot"),
                      ("best_on_val", lambda r: r["best_baseline"])):
    diff = regions.paired_difference(
        np.concatenate([r["correct"]["model"] for r in per_seed]),
        np.concatenate([r["correct"][pick(r)] for r in per_seed]))
    seed_diffs = [r["methods"]["model"]["test_acc"] - r["methods"][pick(r)]["test_acc"]
                  for r in per_seed]
    versus[label] = {**diff, "baselines": [pick(r) for r in per_seed],
                     "per_seed": seed_diffs, "seed_std": float(np.std(seed_diffs))}
  out["versus"] = versus
  out["best_baseline"] = [r["best_baseline"] for r in per_seed]
  out["sequence_test_acc"] = common.mean_std([r["sequence_test_acc"] for r in per_seed])
  return out


def markdown(results: dict[str, Any], meta: dict[str, Any]) -> str:
  """docs/results/spatial.md from the benchmark's JSON."""
  lines = ["# Spatial regions: held-out sections, the sequence model against every baseline",
           "", f"Machine: {meta['machine']}; date {meta['date']}; command: `{meta['command']}`.",
           "", "Written by `cardiac_jax/studies/regions_benchmark.py`. Every method is scored "
           "on the same spots: every spot of the held-out test sections (per spot, the "
           f"model averages {meta['predict_walks']} walks). Accuracy and macro-F1 are mean ± "
           "std over the seeds; a seed changes the data, the held-out sections and the walks. "
           "The differences are paired over the seeds' pooled test spots (± 2 SE over spots; "
           "neighbouring spots are correlated, so this band is narrower than the truth: the "
           "seeds' spread of the difference is given beside it). Seconds: the model's whole "
           "run (data, training, its report and every baseline in it); each baseline's own fit.",
           "", f"Config: {meta['config_note']}", ""]
  for bed, res in results.items():
    lines += [f"## {bed} ({res['seeds']} seeds, test spots per seed {res['n_test_spots']})", ""]
    rows = []
    for name, m in res["methods"].items():
      label = "sequence model" if name == "model" else name
      rows.append([label, m["val_acc"], m["test_acc"], m["test_macro_f1"],
                   f"{m['seconds'][0]:.0f}"])
    lines += common.table(["method", "val acc", "test acc", "test macro-F1", "seconds"], rows)
    lines.append("")
    for label, v in res["versus"].items():
      lines.append(f"- model − {label.replace('_', ' ')} ({', '.join(sorted(set(v['baselines'])))}): "
                   f"{v['diff']:+.4f} ± {2 * v['se']:.4f} (2 SE over {v['n']} spots); per seed "
                   + ", ".join(f"{d:+.4f}" for d in v["per_seed"]))
    lines.append(f"- best baseline on validation per seed: {', '.join(res['best_baseline'])}")
    seq = res["sequence_test_acc"]
    lines.append(f"- the model per sequence (one walk per test spot): {common.fmt(seq)}")
    if res.get("map"):
      lines += ["", f"Maps of held-out section {res['map_section']} (seed 0): predicted "
                "region, confidence, true region.", "", f"![{bed}]({res['map']})"]
    lines.append("")
  return "\n".join(lines) + "\n"


def run_bed(config: ml_collections.ConfigDict, bed: str, seeds: Sequence[int],
            workdir: str, simspace: str, out: str) -> dict[str, Any]:
  """Trains (or reuses) one run per seed on one bed and summarises them."""
  from cardiac_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  per_seed = []
  for seed in seeds:
    cfg = bed_config(config, bed, seed, simspace)
    wd = os.path.join(workdir, bed, f"seed{seed}")
    report = runs.train_or_reuse(cfg, wd, input_pipeline.load_dataset(cfg))
    per_seed.append(_run_rows(wd, report))
    per_seed[-1]["workdir"] = wd
  res = summarise(per_seed)
  first = per_seed[0]
  if first["maps"]:
    name, fname = next(iter(first["maps"].items()))
    target = f"{out}_{bed}.png"
    shutil.copyfile(os.path.join(first["workdir"], "plots", fname), target)
    res["map"], res["map_section"] = os.path.basename(target), name.replace("regions_", "")
  return res


def main(argv: Sequence[str]) -> None:
  del argv
  started = time.time()
  config = FLAGS.config
  seeds = [int(s) for s in FLAGS.seeds]
  results = {}
  for bed in FLAGS.beds:
    if bed == "simspace" and not FLAGS.simspace:
      raise flags.ValidationError("--simspace=<h5ad with {seed}> is needed for the SimSpace bed")
    results[bed] = run_bed(config, bed, seeds, FLAGS.workdir, FLAGS.simspace, FLAGS.out)
  meta = {"machine": common.cpu_model(), "date": time.strftime("%Y-%m-%d %H:%M UTC",
                                                                 time.gmtime()),
          "command": "python experiments/regions_benchmark.py " + " ".join(
              a for a in sys.argv[1:]),
          "predict_walks": int(config.data.spatial.predict_walks),
          "config_note": (f"configs/spatial.py with walks_per_spot="
                          f"{config.data.spatial.walks_per_spot}, num_epochs="
                          f"{config.train.num_epochs}, length {config.data.sequences.length}; "
                          f"baselines: {', '.join(region_baselines.BASELINES)}"),
          "wall_seconds": time.time() - started}
  for bed, res in results.items():
    logging.info("%s: model %s vs best-on-val %s", bed, res["methods"]["model"]["test_acc"],
                 res["versus"]["best_on_val"])
  common.write_json(f"{FLAGS.out}.json", {"meta": meta, "beds": results})
  fileio.atomic_write_text(f"{FLAGS.out}.md", markdown(results, meta))
  print(f"wrote {FLAGS.out}.md")


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top
  define_flags()
  app.run(main)

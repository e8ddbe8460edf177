"""Clone fate from early cells: the model against every baseline and CoSpar, pooled over rotations.

  python experiments/clonal_benchmark.py --beds=embedded,lineage --seeds=0,1,2 \
      --workdir=runs/clonal_bench --out=docs/results/clonal
  python experiments/clonal_benchmark.py --beds=embedded --seeds=0 --rotations=0 \
      --cospar_rotations= --workdir=/tmp/cb --out=/tmp/cb/clonal      # one run, minutes

For each bed (the embedded clonal simulator, and lineage-simulator's division
trees barcoded and sampled by ``lineage_testbed``: data the project did not
write) and seed (the data's seed and the training seed), every rotation of the
clone split (``splits.rotation_split``: each rotation tests a different tenth
of the clones, so ten rotations test every labelled clone once) is one
``configs/clonal.py`` run, trained in its own process (its wall time and peak
memory are its own), whose report holds every validation and test clone's
reading by the model and every baseline at every observation day
(``clones.SCORES_CSV``). Pooling the test clones of all rotations gives one
test set of every clone, where a paired bootstrap over clones resolves
differences of 0.02 AUC. CoSpar (its own pinned venv, ``cospar_peer``) runs on
the same file with the same held-out clones' barcodes hidden, on
``--cospar_rotations`` only (each run costs minutes and GBs), and is compared
with the model on exactly those clones.

The best baseline is chosen on validation (mean validation AUC over the
rotations, per day); the verdicts are read at the earliest observation day at
which any method beats chance (its pooled test AUC more than two standard
errors above 0.5), and at the last day (every early cell).
"""
from __future__ import annotations

import json
import os
import pathlib
import sys
from typing import Any, Sequence

from absl import flags
from absl import logging
import numpy as np
import pandas as pd

from cardiac_jax import report as report_lib
from cardiac_jax import resources
from cardiac_jax.data import splits as splits_lib
from cardiac_jax.studies import common

FLAGS = flags.FLAGS
BEDS = ("embedded", "lineage")
FRACTIONS = (0.65, 0.25, 0.10)
ONE_CELL = ("logreg_one_cell", "logreg_latest_cell")
# How each bed's h5ad is read: obs keys, the fate classes, and what to keep.
BED_OVERRIDES = {
    "embedded": {"time_key": "diffday", "population_key": "type", "clone_key": "clone",
                 "fate_classes": ("CM", "CF"), "classes": (), "drop_labels": ("UNK",)},
    "lineage": {"time_key": "day", "population_key": "cell_type", "clone_key": "clone",
                "fate_classes": ("fateA", "fateB"), "classes": (), "drop_labels": ()},
}


def write_embedded_bed(path: pathlib.Path, seed: int, n_cells: int = 20_000,
                       n_genes: int = 2_000) -> pathlib.Path:
  """The embedded clonal simulator's time course of ``seed`` as an h5ad (written once)."""
  from cardiac_jax import fileio  # pylint: disable=g-import-not-at-top
  from cardiac_jax.data import clonal_simulator  # pylint: disable=g-import-not-at-top
  if not path.exists():
    fileio.atomic_write_h5ad(
        clonal_simulator.simulate_clones(n_cells=n_cells, n_genes=n_genes, seed=seed), path)
  return path


def overrides(bed: str, path: pathlib.Path, seed: int, rotation: int) -> list[str]:
  """The command-line overrides of ``configs/clonal.py`` for one run."""
  o = BED_OVERRIDES[bed]
  fields = {"seed": seed, "data.source": "h5ad", "data.path": str(path),
            "data.time_key": o["time_key"], "data.population_key": o["population_key"],
            "data.clone_key": o["clone_key"], "data.donor_key": "",
            "data.classes": o["classes"], "data.drop_labels": o["drop_labels"],
            "data.clonal.fate_classes": o["fate_classes"], "data.clonal.rotation": rotation,
            "data.split.seed": seed, "data.sequences.seed": seed}
  return [f"--config.{k}={v!r}" if isinstance(v, tuple) else f"--config.{k}={v}"
          for k, v in fields.items()]


def train_measured(bed: str, path: pathlib.Path, seed: int, rotation: int,
                   workdir: pathlib.Path) -> dict[str, Any]:
  """One rotation's run in its own process (skipped when its report exists)."""
  measured = workdir / "measured.json"
  if measured.exists() and (workdir / "report.json").exists():
    return json.loads(measured.read_text())
  argv = [sys.executable, "-m", "cardiac_jax.main", "--config=configs/clonal.py",
          f"--workdir={workdir}", *overrides(bed, path, seed, rotation)]
  cost = resources.run_measured(argv)
  if cost["returncode"] != 0:
    raise RuntimeError(f"clonal run failed ({cost['returncode']}): {' '.join(argv)}")
  measured.write_text(json.dumps(cost))
  return cost


def run_cospar(bed: str, path: pathlib.Path, workdir: pathlib.Path,
               run_dir: pathlib.Path) -> pd.DataFrame | None:
  """CoSpar on the run's data with its validation and test clones hidden: the test clones'
  readings per day (mean P(fate) over their early cells up to the day), in the long
  format of ``clones.SCORES_CSV``; its cost in ``cospar.json``."""
  from cardiac_jax.studies import cospar_peer  # pylint: disable=g-import-not-at-top
  out_csv = workdir / "cospar_scores.csv"
  if out_csv.exists():
    return pd.read_csv(out_csv)
  scores = pd.read_csv(run_dir / "clone_scores_by_day.csv")
  held_out = sorted(set(scores["clone"]))
  model = scores[(scores.method == "model") & (scores.split == "test")]
  fates = list(BED_OVERRIDES[bed]["fate_classes"])
  days = list(dict.fromkeys(model["day"]))
  fate_day = _fate_day(run_dir)
  # Cap what CoSpar is given near 11K cells (its cost grows with the square).
  out = cospar_peer.run_cospar(
      path, time_key=BED_OVERRIDES[bed]["time_key"],
      state_key=BED_OVERRIDES[bed]["population_key"], clone_obsm="X_clone",
      early_days=days, fate_day=fate_day, fate_classes=fates, held_out_clones=held_out,
      workdir=workdir, fate_day_fraction=0.25)
  order = {d: i for i, d in enumerate(days)}
  day_index = np.asarray([order.get(str(d), -1) for d in out["day"]])
  frames = []
  for d, day in enumerate(days):
    test = model[model.day == day]
    names, probs, _ = cospar_peer.clone_scores(out["probs"], out["clone"], cell_time=day_index,
                                               up_to=d, clones=test["clone"].to_numpy())
    frame = pd.DataFrame({"clone": names, "split": "test", "day": day, "method": "cospar",
                          "true": test["true"].to_numpy()})
    for k, name in enumerate(fates):
      frame[f"p_{name}"] = probs[:, k]
    frames.append(frame)
  table = pd.concat(frames, ignore_index=True)
  table.to_csv(out_csv, index=False)
  (workdir / "cospar.json").write_text(json.dumps(
      {k: out[k] for k in ("wall_s", "cpu_s", "peak_rss_mb", "n_cells", "n_cells_input",
                           "n_train_clones", "n_held_out_clones") if k in out}))
  return table


def _fate_day(run_dir: pathlib.Path) -> str:
  info = json.loads((run_dir / "model" / "model.json").read_text())["task_info"]
  return str(info["fate_day"])


def _readings(table: pd.DataFrame, method: str, day: str, split: str = "test"
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  rows = table[(table.method == method) & (table.day == day) & (table.split == split)]
  rows = rows.sort_values("clone")
  p_cols = [c for c in rows.columns if c.startswith("p_")]
  y = rows["true"].map({c[2:]: i for i, c in enumerate(p_cols)}).to_numpy()
  return rows["clone"].to_numpy(), y, rows[p_cols].to_numpy(np.float64)


def auc_se(y: np.ndarray, probs: np.ndarray, n_boot: int = 500, seed: int = 0) -> float:
  """Bootstrap standard error of the AUC over units."""
  rng = np.random.default_rng(seed)
  values = []
  for _ in range(n_boot):
    idx = rng.integers(0, y.size, y.size)
    a = report_lib.auc_score(y[idx], probs[idx])
    if a is not None:
      values.append(a)
  return float(np.std(values)) if values else float("nan")


def pooled(scores: pd.DataFrame, val_auc: dict[tuple[str, str], float],
           cospar: pd.DataFrame | None) -> dict[str, Any]:
  """One bed and seed: every method's pooled test AUC / accuracy per day, the best baseline
  chosen on validation, and the model's paired differences to it, to the best one-cell
  reading and to CoSpar (on CoSpar's clones)."""
  methods = list(dict.fromkeys(scores["method"]))
  out: dict[str, Any] = {"per_day": {}}
  for day in dict.fromkeys(scores["day"]):
    clones, y, model = _readings(scores, "model", day)
    row: dict[str, Any] = {"n_clones": int(y.size), "methods": {}}
    for m in methods:
      c, ym, p = _readings(scores, m, day)
      assert np.array_equal(c, clones)
      row["methods"][m] = {"auc": report_lib.auc_score(ym, p), "auc_se": auc_se(ym, p),
                           "acc": float(np.mean(p.argmax(1) == ym)),
                           "val_auc": val_auc.get((m, day))}
    baselines = [m for m in methods if m != "model"]
    rank = lambda m: -np.inf if row["methods"][m]["val_auc"] is None else row["methods"][m]["val_auc"]  # noqa: E731
    best, best_cell = max(baselines, key=rank), max(ONE_CELL, key=rank)
    for key, name in (("vs_best_baseline", best), ("vs_best_one_cell", best_cell)):
      _, _, p = _readings(scores, name, day)
      row[key] = {"baseline": name, **report_lib.auc_difference(y, model, p, n_boot=500)}
    if cospar is not None and len(cospar):
      c, yc, pc = _readings(cospar, "cospar", day)
      ok = np.all(np.isfinite(pc), axis=1)
      c, yc, pc = c[ok], yc[ok], pc[ok]
      paired = model[np.searchsorted(clones, c)]     # the model on CoSpar's clones
      row["methods"]["cospar"] = {"auc": report_lib.auc_score(yc, pc), "auc_se": auc_se(yc, pc),
                                  "acc": float(np.mean(pc.argmax(1) == yc)), "val_auc": None,
                                  "n_clones": int(yc.size)}
      row["vs_cospar"] = {"baseline": "cospar", "n_clones": int(yc.size),
                          **report_lib.auc_difference(yc, paired, pc, n_boot=500)}
    out["per_day"][day] = row
  return out


def bed_seed(bed: str, seed: int, rotations: Sequence[int], cospar_rotations: Sequence[int],
             root: pathlib.Path, bed_dir: pathlib.Path) -> dict[str, Any]:
  """All rotations of one bed and seed, pooled."""
  path = (write_embedded_bed(bed_dir / f"embedded_seed{seed}.h5ad", seed) if bed == "embedded"
          else bed_dir / f"lineage_seed{seed}.h5ad")
  if not path.exists():
    raise FileNotFoundError(f"{path}: write it first with python -m "
                            "cardiac_jax.studies.lineage_testbed --out=... --seed=...")
  scores, costs, cospar, cospar_costs, val = [], [], [], [], {}
  for r in rotations:
    run_dir = root / bed / f"seed{seed}" / f"rotation{r}"
    costs.append(train_measured(bed, path, seed, r, run_dir))
    s = pd.read_csv(run_dir / "clone_scores_by_day.csv")
    scores.append(s[s.split == "test"])
    for (m, d), g in s[s.split == "val"].groupby(["method", "day"]):
      _, y, p = _readings(g, m, d, "val")
      val.setdefault((m, d), []).append(report_lib.auc_score(y, p))
    if r in cospar_rotations:
      cdir = root / bed / f"seed{seed}" / f"cospar{r}"
      cospar.append(run_cospar(bed, path, cdir, run_dir))
      cospar_costs.append(json.loads((cdir / "cospar.json").read_text()))
  table = pd.concat(scores, ignore_index=True)
  result = pooled(table, {k: float(np.mean([a for a in v if a is not None]))
                          for k, v in val.items()},
                  pd.concat(cospar, ignore_index=True) if cospar else None)
  result.update(bed=bed, seed=seed, rotations=list(rotations),
                cospar_rotations=list(cospar_rotations), data=str(path),
                run_wall_s=[c["wall_s"] for c in costs],
                run_peak_rss_mb=[c["peak_rss_mb"] for c in costs],
                cospar_wall_s=[c["wall_s"] for c in cospar_costs],
                cospar_peak_rss_mb=[c["peak_rss_mb"] for c in cospar_costs])
  return result


def earliest_informative_day(per_day: dict[str, Any]) -> str | None:
  """The first day at which some method's pooled test AUC is > 0.5 + 2 SE."""
  for day, row in per_day.items():
    if any(m["auc"] is not None and m["auc"] - 2 * m["auc_se"] > 0.5
           for m in row["methods"].values()):
      return day
  return None


def summarise(results: list[dict[str, Any]]) -> dict[str, Any]:
  """Per bed: every method's mean ± std over seeds per day, and each comparison's mean
  difference with its standard error (the seeds' bootstrap SEs combined)."""
  out = {}
  for bed in dict.fromkeys(r["bed"] for r in results):
    rs = [r for r in results if r["bed"] == bed]
    days = list(rs[0]["per_day"])
    methods = list(rs[0]["per_day"][days[-1]]["methods"])
    table: dict[str, Any] = {"days": days, "seeds": [r["seed"] for r in rs], "methods": {},
                             "comparisons": {}}
    for m in methods:
      table["methods"][m] = {d: {k: common.mean_std([r["per_day"][d]["methods"].get(m, {}).get(k)
                                                     for r in rs])
                                 for k in ("auc", "acc")} for d in days}
    for key in ("vs_best_baseline", "vs_best_one_cell", "vs_cospar"):
      table["comparisons"][key] = {}
      for d in days:
        rows = [r["per_day"][d].get(key) for r in rs]
        rows = [x for x in rows if x and x.get("diff") is not None]
        if not rows:
          continue
        diff = float(np.mean([x["diff"] for x in rows]))
        se = float(np.sqrt(np.sum([x["se"] ** 2 for x in rows])) / len(rows))
        table["comparisons"][key][d] = {"diff": diff, "se": se,
                                        "baselines": [x["baseline"] for x in rows]}
    pooled_days = {d: {"methods": {m: {"auc": v[d]["auc"][0],
                                       "auc_se": float(np.mean([r["per_day"][d]["methods"]
                                                                [m]["auc_se"] for r in rs
                                                                if m in r["per_day"][d]["methods"]]))}
                                   for m, v in table["methods"].items() if v[d]["auc"][0]}}
                   for d in days}
    table["earliest_informative_day"] = earliest_informative_day(pooled_days)
    table["run_wall_s"] = common.mean_std([w for r in rs for w in r["run_wall_s"]])
    table["run_peak_rss_mb"] = common.mean_std([w for r in rs for w in r["run_peak_rss_mb"]])
    table["cospar_wall_s"] = common.mean_std([w for r in rs for w in r["cospar_wall_s"]])
    table["cospar_peak_rss_mb"] = common.mean_std([w for r in rs for w in r["cospar_peak_rss_mb"]])
    out[bed] = table
  return out


def markdown(summary: dict[str, Any], meta: dict[str, Any]) -> str:
  lines = ["# Clone fate from early cells: the model, baselines and CoSpar", "",
           f"Machine: {meta['machine']}; date {meta['date']}; command: `{meta['command']}`.", "",
           "Test AUC of held-out clones pooled over the rotations run of the clone split (each "
           f"rotation tests a different tenth of the clones; rotations {meta.get('rotations')}, "
           f"CoSpar on rotations {meta.get('cospar_rotations')}), mean ± std over seeds "
           f"({meta['seeds']}); a clone is read from its cells up to each observation day. "
           "Differences are paired (the same clones), mean over seeds ± the combined "
           "bootstrap standard error. The best baseline is chosen on validation.", ""]
  for bed, t in summary.items():
    days = t["days"]
    lines += [f"## {bed}", "", "Test AUC mean ± std over seeds (accuracy):", "",
              "| method | " + " | ".join(days) + " |",
              "|---" * (len(days) + 1) + "|"]
    for m, v in t["methods"].items():
      lines.append(f"| {m} | " + " | ".join(
          f"{common.fmt(v[d]['auc'], 3)} ({common.fmt(v[d]['acc'][0], 3)})" for d in days) + " |")
    lines += ["", "| comparison | " + " | ".join(days) + " |", "|---" * (len(days) + 1) + "|"]
    for key, rows in t["comparisons"].items():
      cells = [f"{rows[d]['diff']:+.3f} ± {rows[d]['se']:.3f}" if d in rows else "–"
               for d in days]
      lines.append(f"| model {key.replace('_', ' ')} | " + " | ".join(cells) + " |")
    lines += ["", f"Earliest observation day where a method beats chance (AUC > 0.5 + 2 SE): "
              f"**{t['earliest_informative_day']}**.", "",
              f"Wall time per clonal run (train + baselines + report, its own process): "
              f"{common.fmt(t['run_wall_s'], 1)} s, peak {common.fmt(t['run_peak_rss_mb'], 0)} MB; "
              f"CoSpar per run: {common.fmt(t['cospar_wall_s'], 1)} s, peak "
              f"{common.fmt(t['cospar_peak_rss_mb'], 0)} MB.", ""]
  return "\n".join(lines) + "\n"


def define_flags() -> None:
  """The study's flags (defined on call, never at import)."""
  flags.DEFINE_list("beds", list(BEDS), "Beds: embedded, lineage.")
  flags.DEFINE_list("seeds", ["0", "1", "2"], "Data and training seeds.")
  flags.DEFINE_list("rotations", [str(r) for r in range(splits_lib.rotations(FRACTIONS))],
                    "Rotations of the clone split (all: every clone tested once).")
  flags.DEFINE_list("cospar_rotations", ["0", "1"], "Rotations on which CoSpar also runs.")
  flags.DEFINE_string("workdir", "runs/clonal_bench", "Runs (reused when finished).")
  flags.DEFINE_string("bed_dir", "/work/data", "Where the beds' h5ad files are (lineage: "
                      "lineage_seed<s>.h5ad from cardiac_jax.studies.lineage_testbed).")
  flags.DEFINE_string("out", "docs/results/clonal", "Output prefix (.md, .json).")


def main(argv: Sequence[str]) -> None:
  import datetime  # pylint: disable=g-import-not-at-top
  root, bed_dir = pathlib.Path(FLAGS.workdir).resolve(), pathlib.Path(FLAGS.bed_dir)
  bed_dir.mkdir(parents=True, exist_ok=True)
  rotations = [int(r) for r in FLAGS.rotations]
  cospar_rotations = [int(r) for r in FLAGS.cospar_rotations if r != ""]
  results = []
  for bed in FLAGS.beds:
    for seed in (int(s) for s in FLAGS.seeds):
      logging.info("clonal benchmark: %s seed %d", bed, seed)
      results.append(bed_seed(bed, seed, rotations, cospar_rotations, root, bed_dir))
  summary = summarise(results)
  meta = {"machine": common.cpu_model(), "date": datetime.date.today().isoformat(),
          "command": " ".join(["python experiments/clonal_benchmark.py", *argv[1:]]),
          "seeds": [int(s) for s in FLAGS.seeds], "rotations": [int(r) for r in FLAGS.rotations],
          "cospar_rotations": cospar_rotations}
  out = pathlib.Path(FLAGS.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  common.write_json(f"{out}.json", {"meta": meta, "summary": summary, "runs": results})
  from cardiac_jax import fileio  # pylint: disable=g-import-not-at-top
  fileio.atomic_write_text(f"{out}.md", markdown(summary, meta))
  print(markdown(summary, meta))


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top
  define_flags()
  app.run(main)

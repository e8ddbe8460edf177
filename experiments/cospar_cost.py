"""CoSpar's cost and clone-fate AUC against the number of cells, on lineage test beds.

  python -m cardiac_jax.studies.lineage_testbed --out=/tmp/bed/f3.h5ad --n_founders=3 \
      --check=false                               # in a venv with the `lineage` extra
  nice -n 10 python experiments/cospar_cost.py --beds=/tmp/bed/f1.h5ad,/tmp/bed/f3.h5ad \
      --methods=multitime,clonal --out=/tmp/bed/cospar_cost

Per bed: clones with a fate (majority of their fate-day cells) and early cells
are split 60 / 40 by clone (stratified, seeded); the 40 % are held out (their
barcodes removed before CoSpar runs, `cospar_peer.mask_clones`). Each method
(and each ``--presets`` entry for multitime) runs once in the CoSpar venv; per
run: cells, wall seconds and peak RSS of CoSpar's process, the fraction of
held-out early cells the map reaches, and the held-out clones' AUC of
`cospar_peer.clone_scores` (mean P(fates[1]) over each clone's early cells)
against the clone label; the bed's per-cell logistic regression on the same split
(`lineage_testbed.holdout_auc`). Writes <out>.json and <out>.md; the runs of
2026-12-04 are in docs/results/cospar_cost.md.
"""
from __future__ import annotations

import json
import pathlib
import sys
from typing import Any

from absl import app
from absl import flags
from absl import logging
import numpy as np

_BEDS = flags.DEFINE_list("beds", [], "Lineage test bed .h5ad files (lineage_testbed).")
_METHODS = flags.DEFINE_list("methods", ["multitime", "clonal"], "cospar_peer methods.")
_PRESETS = flags.DEFINE_string(
    "presets", "", "JSON {name: {settings..., map_days_only, fate_day_fraction}} of multitime "
    "variants; {\"preset\": \"default\"} is CoSpar's own settings on all cells (default: "
    "the module's multitime preset only).")
_EARLY = flags.DEFINE_list("early_days", [], "Early days ([] = every day before the last).")
_OUT = flags.DEFINE_string("out", "/tmp/cospar_cost", "Prefix of the .json / .md results.")
_VENV = flags.DEFINE_string("venv", "", "CoSpar venv ('' = cospar_peer.ensure_venv()).")
_SEED = flags.DEFINE_integer("seed", 0, "Clone split seed.")
_TIMEOUT = flags.DEFINE_float("timeout_s", 3600, "Per-run limit.")


def split_clones(table: Any, seed: int, held_out: float = 0.4) -> tuple[list[str], list[str]]:
  """Clones with a label split by clone, stratified: (training, held out)."""
  from sklearn import model_selection  # pylint: disable=g-import-not-at-top
  names = np.asarray(table.index).astype(str)
  train, test = model_selection.train_test_split(
      names, test_size=held_out, stratify=table["label"].to_numpy(), random_state=seed)
  return sorted(train), sorted(test)


def measure(bed: str, method: str, settings: dict[str, Any] | None, name: str, workdir: str,
            seed: int) -> dict[str, Any]:
  """One run_cospar on the bed's split; cost and the held-out clones' AUC."""
  import anndata as ad  # pylint: disable=g-import-not-at-top
  from sklearn import metrics  # pylint: disable=g-import-not-at-top
  from cardiac_jax.studies import cospar_peer  # pylint: disable=g-import-not-at-top
  from cardiac_jax.studies import lineage_testbed as lt  # pylint: disable=g-import-not-at-top
  adata = ad.read_h5ad(bed)
  days = json.loads(adata.uns["lineage_testbed"])["days"]
  early, fate_day = (_EARLY.value or days[:-1]), days[-1]
  table = lt.clone_fates(adata, fate_day)
  _, held = split_clones(table, seed)
  settings = dict(settings or {})
  cells = {k: settings.pop(k) for k in ("map_days_only", "fate_day_fraction") if k in settings}
  if settings.pop("preset", None) == "default":   # CoSpar's own settings, on all cells
    settings = dict(cospar_peer.TMAP_PRESETS["default"], **settings)
    cells.setdefault("map_days_only", False)
  out = cospar_peer.run_cospar(
      bed, time_key=lt.TIME_KEY, state_key=lt.STATE_KEY, early_days=early, fate_day=fate_day,
      fate_classes=lt.FATES, held_out_clones=held, workdir=workdir, method=method,
      settings=settings, seed=seed, venv=_VENV.value or None, timeout_s=_TIMEOUT.value, **cells)
  held_cells = np.isin(out["clone"], held)
  names, scores, _ = cospar_peer.clone_scores(out["probs"][held_cells],
                                              out["clone"][held_cells])
  label = table.loc[names, "label"].to_numpy()
  auc = float(metrics.roc_auc_score(label, scores[:, 1])) if len(set(label)) == 2 else None
  return {"bed": bed, "run": name, "method": method, "n_cells": out["n_cells"],
          "n_cells_input": out["n_cells_input"], "early_days": list(early),
          "fate_day_fraction": out["fate_day_fraction"], "map_days_only": out["map_days_only"],
          "n_early_cells": int(len(out["cell_index"])), "wall_s": round(out["wall_s"], 1),
          "cpu_s": round(out["cpu_s"], 1),
          "peak_rss_mb": round(out["peak_rss_mb"]), "steps": out["steps"],
          "n_train_clones": out["n_train_clones"], "n_held_out_clones": len(held),
          "n_scored_clones": int(len(names)),
          "held_out_cells_reached": float(out["informative"][held_cells].mean()),
          "held_out_clone_auc": auc, "settings": out["settings"]}


def logreg_row(bed: str, seed: int) -> dict[str, Any]:
  """The bed's per-cell logistic regression (lineage_testbed.holdout_auc) on the same split."""
  import anndata as ad  # pylint: disable=g-import-not-at-top
  from cardiac_jax.studies import lineage_testbed as lt  # pylint: disable=g-import-not-at-top
  adata = ad.read_h5ad(bed)
  days = json.loads(adata.uns["lineage_testbed"])["days"]
  early, fate_day = (_EARLY.value or days[:-1]), days[-1]
  _, held = split_clones(lt.clone_fates(adata, fate_day), seed)
  return {"bed": bed, "run": "logreg", "method": "per-cell logreg on PCA", "n_cells": adata.n_obs,
          **lt.holdout_auc(adata, early, fate_day, held, seed=seed)}


def main(argv):
  del argv
  runs = []
  presets = json.loads(_PRESETS.value) if _PRESETS.value else {"multitime": None}
  for bed in _BEDS.value:
    runs.append(logreg_row(bed, _SEED.value))
    print(json.dumps(runs[-1]), flush=True)
    for method in _METHODS.value:
      variants = presets.items() if method == "multitime" else [(method, None)]
      for name, settings in variants:
        workdir = f"{_OUT.value}_work/{pathlib.Path(bed).stem}_{name}"
        try:
          row = measure(bed, method, settings, name, workdir, _SEED.value)
        except Exception as e:  # pylint: disable=broad-except
          logging.error("%s %s failed: %s", bed, name, e)
          row = {"bed": bed, "run": name, "method": method, "error": str(e)[-500:]}
        runs.append(row)
        print(json.dumps(row), flush=True)
        pathlib.Path(f"{_OUT.value}.json").write_text(json.dumps(runs, indent=1))
  lines = ["| bed | run | cells | wall s | CPU s | peak MB | held-out cells reached | held-out clone AUC |",
           "|---|---|---|---|---|---|---|---|"]
  for r in runs:
    if r["run"] == "logreg":
      lines.append(f"| {pathlib.Path(r['bed']).name} | logreg (one cell / pooled) | "
                   f"{r['n_cells']} | | | | | {r['one_cell_auc']:.3f} / {r['pooled_auc']:.3f} |")
      continue
    if "error" in r:
      lines.append(f"| {pathlib.Path(r['bed']).name} | {r['run']} | failed: {r['error'][:80]} "
                   "| | | | | |")
      continue
    auc = "n/a" if r["held_out_clone_auc"] is None else f"{r['held_out_clone_auc']:.3f}"
    lines.append(f"| {pathlib.Path(r['bed']).name} | {r['run']} | {r['n_cells']} of {r['n_cells_input']} | "
                 f"{r['wall_s']} | {r['cpu_s']} | {r['peak_rss_mb']} | {r['held_out_cells_reached']:.2f} | "
                 f"{auc} |")
  pathlib.Path(f"{_OUT.value}.md").write_text("\n".join(lines) + "\n")
  print("\n".join(lines))
  return 0 if all("error" not in r for r in runs) else 1


if __name__ == "__main__":
  sys.exit(app.run(main))

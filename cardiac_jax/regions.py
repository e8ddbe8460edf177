"""Regions of sections, spot by spot: the run's report and the predictor of new sections.

A region model (``configs/spatial.py``, builder ``data/regions.py``) reads walks
over the spot graph that end at a spot. Both here score SPOTS, not sequences:
every spot of the held-out sections (the report) or of a new file
(``predict``) is the end of ``n_walks`` walks among its own split's / file's
spots (``walk_probabilities``: the same graph, walk and features as training),
and the walks' probabilities are averaged per spot.

``report`` (``outputs.UNIT_REPORTS["regions"]``) replaces the headline numbers
of report.json with the spot-level ones (``test_acc``, ``test_macro_f1``,
``val_acc``, ``n_test_spots``, per-region metrics), keeps the sequence-level
ones under ``sequence_level``, adds the baselines on the same spots
(``region_baselines``; ``best_baseline`` chosen on validation, paired
differences ``vs_baselines``), and writes ``spot_predictions.csv`` and one map
per test section (``plots/regions_<section>.png``).
"""
from __future__ import annotations

import functools
import os
import pathlib
import time
from typing import Any, Callable, Sequence

from absl import logging
import numpy as np

from cardiac_jax import evaluation
from cardiac_jax import fileio
from cardiac_jax import monitor
from cardiac_jax import progress as progress_lib
from cardiac_jax import query
from cardiac_jax import region_baselines
from cardiac_jax import report as report_lib
from cardiac_jax.data import regions as data_regions
from cardiac_jax.data import splits as splits_lib
from cardiac_jax.data.errors import DataError

BLOCK_SPOTS = 4096         # spots per prediction block of new sections (bounded memory)
MAX_MAPS = 8               # section maps written by the report
PREDICTIONS_CSV = "spot_predictions.csv"

PredictFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def walk_probabilities(predict_fn: PredictFn, pcs: np.ndarray, unit_coords: np.ndarray,
                       sources: Sequence[np.ndarray], *, distance: bool) -> list[np.ndarray]:
  """Each request's (n_spots, C) mean probabilities over its walks, in ONE ``predict_fn``
  call (``evaluation.predict`` compiles once per N: one call for every split).

  Args:
    predict_fn: (x (N, L, F), mask (N, L)) -> probabilities (N, C).
    pcs: (n, n_pcs) spot embedding.
    unit_coords: (n, 2) pitch coordinates (``data.regions.pitch_coords``).
    sources: ``data.regions.walk_sources`` arrays, (W, n_spots, L) each.
    distance: the run's ``data.spatial.distance_feature``.
  """
  src = np.concatenate([s.reshape(-1, s.shape[-1]) for s in sources])
  x = data_regions.walk_features(pcs, unit_coords, src, distance=distance)
  probs = predict_fn(x, np.ones(src.shape, np.float32))
  out, start = [], 0
  for s in sources:
    n = s.shape[0] * s.shape[1]
    out.append(probs[start:start + n].reshape(s.shape[0], s.shape[1], -1).mean(axis=0))
    start += n
  return out


def paired_difference(correct_a: np.ndarray, correct_b: np.ndarray) -> dict[str, float]:
  """Accuracy of a minus accuracy of b on the same spots, and the paired standard error.

  SE = sd(a_i - b_i) / sqrt(n) over the spots. Neighbouring spots are
  correlated, so this SE is a lower bound of the true uncertainty (the seeds'
  spread tells the rest).
  """
  d = np.asarray(correct_a, np.float64) - np.asarray(correct_b, np.float64)
  n = d.size
  se = float(np.std(d, ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
  return {"diff": float(d.mean()) if n else float("nan"), "se": se, "n": int(n)}


# ---------------------------------------------------------------- the run's report


def spot_scores(labels: np.ndarray, probs: np.ndarray, rows: np.ndarray,
                class_names: Sequence[str]) -> dict[str, Any]:
  """Accuracy, macro-F1, per-region metrics and the confusion of ``rows``' predictions."""
  return report_lib.classification_metrics(labels[rows], np.argmax(probs[rows], axis=1),
                                           class_names)


def spot_loss(labels: np.ndarray, probs: np.ndarray) -> float:
  """Mean cross-entropy of the spots' averaged probabilities."""
  picked = np.clip(probs[np.arange(labels.size), labels], 1e-12, None)
  return float(-np.mean(np.log(picked)))


def report(run: Any, state: Any, workdir: str, results: dict[str, Any]) -> None:
  """Scores every held-out spot and the baselines on them; updates ``results`` in place.

  See the module docstring for what is written.
  """
  t = run.dataset.tables
  config = run.config
  names = tuple(run.dataset.class_names)
  labels, split = np.asarray(t["labels"]), np.asarray(t["split"])
  pcs, unit = np.asarray(t["pcs"]), np.asarray(t["unit_coords"], np.float64)
  n_walks = int(config.data.spatial.predict_walks)
  probs = np.full((labels.size, len(names)), np.nan, np.float32)
  rows = {name: np.flatnonzero(split == sid) for name, sid in splits_lib.SPLIT_IDS.items()}
  held = splits_lib.SPLITS      # training spots too: the gaps are then spot-level as well
  sp_cfg = config.data.spatial
  sources = [data_regions.walk_sources(unit, rows[name], length=run.dataset.length,
                                       n_walks=n_walks, seed=int(config.seed),
                                       stream=splits_lib.SPLIT_IDS[name],
                                       restart=float(sp_cfg.restart))
             for name in held]
  start = time.perf_counter()
  for name, p in zip(held, walk_probabilities(
      functools.partial(evaluation.predict, run, state), pcs, unit, sources,
      distance=bool(sp_cfg.distance_feature))):
    probs[rows[name]] = p
  predict_seconds = time.perf_counter() - start
  scores = {name: spot_scores(labels, probs, rows[name], names) for name in held}
  loss = {name: spot_loss(labels[rows[name]], probs[rows[name]]) for name in held}
  adj = data_regions.split_adjacency(unit, split)
  base, base_probs = region_baselines.run_baselines(pcs, labels, split, adj, names,
                                                    seed=int(config.seed))
  best = region_baselines.best_on_val(base)
  test = rows["test"]
  model_correct = np.argmax(probs[test], 1) == labels[test]
  versus = {name: paired_difference(model_correct, np.argmax(p[test], 1) == labels[test])
            for name, p in base_probs.items()}

  keep = ("train_acc", "train_loss", "test_acc", "test_loss", "macro_f1", "val_acc",
          "val_loss", "acc_gap", "loss_gap", "num_test", "per_class", "confusion",
          "val_test_diff")
  results["sequence_level"] = {k: results[k] for k in keep if k in results}
  results.update(
      headline=(f"per spot: every spot of the held-out split, {n_walks} walks each, "
                "probabilities averaged"),
      train_acc=scores["train"]["accuracy"], train_loss=loss["train"],
      val_loss=loss["val"], test_loss=loss["test"],
      **monitor.gaps(scores["train"]["accuracy"], scores["val"]["accuracy"], loss["train"],
                     loss["val"]),
      test_acc=scores["test"]["accuracy"], test_macro_f1=scores["test"]["macro_f1"],
      macro_f1=scores["test"]["macro_f1"], val_acc=scores["val"]["accuracy"],
      val_macro_f1=scores["val"]["macro_f1"], n_test_spots=int(test.size),
      n_val_spots=int(rows["val"].size), num_test=int(test.size),
      per_class=scores["test"]["per_class"], per_region=scores["test"]["per_class"],
      confusion=scores["test"]["confusion"],
      val_test_diff=abs(scores["val"]["accuracy"] - scores["test"]["accuracy"]),
      baselines=base, best_baseline=best, vs_baselines=versus,
      regions={"predict_walks": n_walks, "predict_seconds": predict_seconds,
               "split": run.dataset.meta["task_info"]["split"],
               "spots_per_split": {k: int(v.size) for k, v in rows.items()}})
  results["criteria"] = report_lib.success_criteria(results, config.monitor)
  if fileio.is_primary():
    write_spot_predictions(workdir, t, probs, base_probs, names)
    results["unit_plots"] = write_report_maps(workdir, t, probs, names)
  results["sections_md"] = _markdown(results)
  logging.info("regions: spot-level test acc %.4f, macro-F1 %.4f on %d spots; best baseline "
               "%s (val %.4f) test %.4f", results["test_acc"], results["test_macro_f1"],
               test.size, best, base[best]["val_acc"], base[best]["test_acc"])


def _markdown(results: dict[str, Any]) -> list[str]:
  """report.md's regions section: which number is which, and the baselines."""
  seq = results["sequence_level"]
  lines = ["", "## Regions: spot-level scores and baselines", "",
           f"The accuracy and macro-F1 at the top are {results['headline']} "
           f"("
           f"{results['n_test_spots']} test spots, {results['n_val_spots']} validation spots). "
           f"The training accuracy, the losses and the gaps are per spot too (training "
           f"spots walked among the training sections); per sequence (one walk per spot) "
           f"the test accuracy is {seq.get('test_acc', float('nan')):.4f}, validation "
           f"{seq.get('val_acc', float('nan')):.4f}, training {seq.get('train_acc', float('nan')):.4f}.",
           "", "| method | val acc | test acc | test macro-F1 | test acc - baseline (± 2 SE, "
           "paired over spots) |", "|---|---|---|---|---|",
           f"| sequence model | {results['val_acc']:.4f} | {results['test_acc']:.4f} | "
           f"{results['test_macro_f1']:.4f} | |"]
  for name, r in results["baselines"].items():
    v = results["vs_baselines"][name]
    star = " (best on val)" if name == results["best_baseline"] else ""
    lines.append(f"| {name}{star} | {r['val_acc']:.4f} | {r['test_acc']:.4f} | "
                 f"{r['test_macro_f1']:.4f} | {v['diff']:+.4f} ± {2 * v['se']:.4f} |")
  lines += ["", f"Per-spot predictions: `{PREDICTIONS_CSV}`; maps of the test sections "
            "(predicted region, confidence, true region): `plots/regions_*.png`, below."]
  return lines


def write_spot_predictions(workdir: str, tables: dict[str, np.ndarray], probs: np.ndarray,
                           base_probs: dict[str, np.ndarray], class_names: Sequence[str]
                           ) -> pathlib.Path:
  """``spot_predictions.csv``: every held-out spot, its truth, the model's and each
  baseline's prediction (atomic)."""
  import pandas as pd  # pylint: disable=g-import-not-at-top
  split = np.asarray(tables["split"])
  rows = np.flatnonzero(split >= 1)
  names = np.asarray(class_names)
  section_names = np.asarray(tables["section_names"]).astype(str)
  frame = pd.DataFrame({
      "spot": np.asarray(tables["obs_names"]).astype(str)[rows],
      "section": section_names[np.asarray(tables["section"])[rows]],
      "split": np.asarray(splits_lib.SPLITS)[split[rows]],
      "x": np.asarray(tables["coords"])[rows, 0], "y": np.asarray(tables["coords"])[rows, 1],
      "region": names[np.asarray(tables["labels"])[rows]],
      "predicted": names[np.argmax(probs[rows], axis=1)],
      "confidence": np.max(probs[rows], axis=1)})
  for c, name in enumerate(class_names):
    frame[f"prob_{name}"] = probs[rows, c]
  for name, p in base_probs.items():
    frame[f"pred_{name}"] = names[np.argmax(np.nan_to_num(p[rows], nan=-1.0), axis=1)]
  path = pathlib.Path(workdir) / PREDICTIONS_CSV
  with fileio.atomic_path(path) as tmp:
    frame.to_csv(tmp, index=False)
  return path


def write_report_maps(workdir: str, tables: dict[str, np.ndarray], probs: np.ndarray,
                      class_names: Sequence[str]) -> dict[str, str]:
  """One map per section holding test spots (at most ``MAX_MAPS``): predicted region,
  confidence and true region; returns {name: file name under plots/}."""
  split = np.asarray(tables["split"])
  section = np.asarray(tables["section"])
  section_names = np.asarray(tables["section_names"]).astype(str)
  out = {}
  for s in np.unique(section[split == splits_lib.SPLIT_IDS["test"]])[:MAX_MAPS]:
    rows = np.flatnonzero(section == s)
    predicted = np.where(split[rows] >= 1, np.argmax(np.nan_to_num(probs[rows], nan=-1.0), 1),
                         -1)
    name = f"regions_{_safe(section_names[s])}"
    section_map(np.asarray(tables["coords"])[rows], predicted, np.max(probs[rows], axis=1),
                np.asarray(tables["labels"])[rows], class_names,
                f"section {section_names[s]}", os.path.join(workdir, "plots", name + ".png"))
    out[name] = name + ".png"
  return out


def _safe(name: str) -> str:
  return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def section_map(coords: np.ndarray, predicted: np.ndarray, confidence: np.ndarray,
                truth: np.ndarray | None, class_names: Sequence[str], title: str,
                path: str | os.PathLike, *, truth_names: Sequence[str] | None = None,
                truth_title: str = "true region") -> None:
  """The section coloured by predicted region, by confidence and (given) by true region
  (``truth`` codes into ``truth_names``, default the classes)."""
  from cardiac_jax import viz  # pylint: disable=g-import-not-at-top
  panels = [("predicted region", predicted, list(class_names)), ("confidence", confidence, None)]
  if truth is not None:
    panels.append((truth_title, truth, list(truth_names or class_names)))
  viz.plot_section_maps(coords, panels, title, path=path)


# ---------------------------------------------------------------- new sections


def predict(adata: Any, model: Any, *, section_key: str = "", counts_layer: str | None = None,
            n_walks: int | None = None, key_added: str = "cardiac_jax", copy: bool = False,
            seed: int = 0, min_gene_fraction: float = query.MIN_GENE_FRACTION,
            progress: bool | None = None, **unused: Any) -> Any:
  """The region of every spot of new sections, into the AnnData.

  Spots are embedded with the training preprocessor (``query``), each section's
  spots form one graph, and every spot ends ``n_walks`` walks among them.

  Args:
    adata: spots x genes, raw counts in X (or ``layers[counts_layer]``),
      ``obsm["spatial"]`` per section and the section in ``obs[section_key]``.
    model: an ``export.Model`` of a regions run (``configs/spatial.py``).
    section_key: obs column of the sections ("" = the training data's).
    counts_layer: layer with raw counts; None or "" = X.
    n_walks: walks per spot (None = the run's ``data.spatial.predict_walks``).
    key_added: prefix of the keys written.
    copy: annotate and return a copy.
    seed: seed of the walks.
    min_gene_fraction: the fraction of the model's genes the data must carry.
    progress: a progress bar over the spots (None: in a terminal or notebook).

  Returns:
    The annotated AnnData: ``obs[f"{key_added}_region"]`` (categorical over the
    model's regions), ``obs[f"{key_added}_region_confidence"]``,
    ``obsm[f"{key_added}_region_probs"]``, ``obs[f"{key_added}_no_counts"]`` (spots
    without counts: flagged, left unpredicted, NaN), ``obsm[f"X_pca_{key_added}"]``
    and ``uns[key_added]``.

  Raises:
    DataError: no section column, missing or NaN coordinates, repeated spot
      names, non-count data or too few of the model's genes; nothing is written.
  """
  import pandas as pd  # pylint: disable=g-import-not-at-top
  from cardiac_jax.data import ingest  # pylint: disable=g-import-not-at-top
  del unused   # the cell tasks' keys (time_key, population_key, clone_key ...)
  info = model.info.get("task_info") or {}
  section_key = section_key or info.get("section_key", "section")
  walks = int(model.config.data.spatial.get("predict_walks", 8) if n_walks is None else n_walks)
  data_regions.check_unique_names(np.asarray(adata.obs_names))
  section, section_names = data_regions.section_column(adata, section_key)
  coords = ingest.spot_coordinates(adata)
  counts = query.read_counts(adata, model, counts_layer=counts_layer,
                             min_gene_fraction=min_gene_fraction, key_added=key_added)
  kept = np.flatnonzero(~counts.empty)
  lonely = [section_names[s] for s in np.unique(section[kept])
            if np.sum(section[kept] == s) < 2]
  if lonely:
    raise DataError(f"sections {lonely} have fewer than two spots with counts: a spot's region "
                    f"is read from its neighbours; drop those sections or check "
                    f"obs[{section_key!r}]")
  pcs = query.embed(counts.matrix, counts.gene_names, model.preprocessor)
  unit = data_regions.pitch_coords(coords[kept], section[kept])
  names = list(model.class_names)
  sp_cfg = model.config.data.spatial
  src = data_regions.walk_sources(unit, np.arange(kept.size), length=model.length,
                                  n_walks=walks, seed=seed,
                                  restart=float(sp_cfg.get("restart", 0.0)))
  kept_pcs = pcs[kept]
  probs = np.full((adata.n_obs, len(names)), np.nan, np.float32)
  bar = progress_lib.bar(kept.size, desc="predict", unit="spots", progress=progress)
  try:   # blocks of spots: bounded memory; predict_sequences' fixed chunk compiles once
    for start in range(0, kept.size, BLOCK_SPOTS):
      block = slice(start, start + BLOCK_SPOTS)
      probs[kept[block]], = walk_probabilities(
          model.predict_sequences, kept_pcs, unit, [src[:, block]],
          distance=bool(sp_cfg.get("distance_feature", False)))
      bar.update(src[:, block].shape[1])
  finally:
    bar.close()
  if copy:
    adata = adata.copy()
  best = np.where(counts.empty, -1, np.argmax(np.nan_to_num(probs, nan=-1.0), axis=1))
  keys = {"region": f"{key_added}_region", "confidence": f"{key_added}_region_confidence",
          "probs": f"{key_added}_region_probs", "embedding": f"X_pca_{key_added}",
          "no_counts": f"{key_added}_no_counts"}
  adata.obs[keys["region"]] = pd.Categorical.from_codes(best, categories=names)
  adata.obs[keys["confidence"]] = np.max(probs, axis=1)
  adata.obsm[keys["probs"]] = probs
  adata.obsm[keys["embedding"]] = pcs
  adata.obs[keys["no_counts"]] = counts.empty
  adata.uns[key_added] = {
      "task": "regions", "class_names": names, "model_path": str(model.path),
      "model_hash": model.hash, "sections": list(section_names),
      "n_genes_model": int(len(model.preprocessor.gene_names)),
      "n_genes_used": len(counts.used), "genes_missing": counts.missing,
      "n_no_counts": int(counts.empty.sum()),
      "params": {"section_key": section_key, "counts_layer": counts_layer or "",
                 "n_walks": walks, "seed": int(seed), "walk_length": int(model.length),
                 "min_gene_fraction": float(min_gene_fraction)},
      "keys": keys,
  }
  logging.info("predicted the regions of %d spots in %d sections: %s", kept.size,
               len(section_names), dict(zip(names, np.bincount(best[kept], minlength=len(names))
                                            .tolist())))
  return adata


def predictions_table(adata: Any, key_added: str = "cardiac_jax") -> Any:
  """A DataFrame: spot, section, region, confidence, then one probability per region."""
  import pandas as pd  # pylint: disable=g-import-not-at-top
  info = adata.uns[key_added]
  keys = info["keys"]
  table = pd.DataFrame({
      "spot": np.asarray(adata.obs_names).astype(str),
      "section": np.asarray(adata.obs[info["params"]["section_key"]]).astype(str),
      "region": np.asarray(adata.obs[keys["region"]]).astype(str),
      "confidence": np.asarray(adata.obs[keys["confidence"]])})
  probs = np.asarray(adata.obsm[keys["probs"]])
  for c, name in enumerate(info["class_names"]):
    table[f"prob_{name}"] = probs[:, c]
  return table


def plot_predictions(adata: Any, out_dir: str | os.PathLike, *, key_added: str = "cardiac_jax",
                     true_key: str = "", time_key: str = "") -> dict[str, pathlib.Path]:
  """One PNG per section: predicted region, confidence and (when given) the true region.

  ``time_key`` is the cell tasks' and unused (``prediction.UNIT_TABLES``' plot signature).
  """
  del time_key
  info = adata.uns[key_added]
  keys, names = info["keys"], list(info["class_names"])
  section_key = info["params"]["section_key"]
  section = np.asarray(adata.obs[section_key]).astype(str)
  coords = np.asarray(adata.obsm["spatial"])[:, :2]
  predicted = np.asarray(adata.obs[keys["region"]].cat.codes)
  confidence = np.asarray(adata.obs[keys["confidence"]])
  truth, truth_names = None, names
  if true_key and true_key in adata.obs.columns:
    present, truth = np.unique(np.asarray(adata.obs[true_key]).astype(str), return_inverse=True)
    truth_names = names + sorted(set(present.tolist()) - set(names))  # regions never trained on
    truth = np.asarray([truth_names.index(v) for v in present])[truth]
  out = {}
  for s in info["sections"]:
    rows = np.flatnonzero(section == s)
    path = pathlib.Path(out_dir) / f"regions_{_safe(s)}.png"
    section_map(coords[rows], predicted[rows], confidence[rows],
                None if truth is None else truth[rows], names, f"section {s}", path,
                truth_names=truth_names, truth_title=f"true region ({true_key})")
    out[f"map_{s}"] = path
  return out

"""How much better than the per-cell classifier can ANY model of a path be? On the
embedded simulator the question has an exact answer: the Bayes rule on its latents.

  python experiments/ceiling.py --presets=scale1,scale2,scale3 --data_seeds=0,1,2 \\
      --out=docs/results/ceiling

Why: a cell's label (its stage; past PROG, CM or CF by the sign of its fate latent)
reaches everything observable - its counts, its donor, every other cell and hence
every walk through it - only through its day, its transcriptome position t_expr and
its fate sign (``simulator.label_ceiling``). The Bayes rule on those three bounds the
expected accuracy of any classifier of the temporal sequences, path models included.
If the per-cell logistic regression already sits at that bound, "beat the per-cell
baseline" has nothing left to win on this data, whatever the model.

Per preset and data seed (the simulator's, the split's and the walks' seeds all set
to it), on the temporal sequences of each split (spatial spots have no latents):
``logreg_last`` and ``hgb_summary`` fitted as ``baselines.run_baselines`` fits them
(on the temporal training sequences only), the Bayes rule applied to the very same
anchors (``simulator.bayes_labels``: the ceiling on these sequences, with their
sampling noise), and its expectation over class-balanced anchors
(``simulator.label_ceiling``: the ceiling without it). Nothing here is trained on
the latents; the rule is derived from the generative model.

Diagnostics split the gap between the per-cell baseline and the ceiling. A walk is
chosen from its anchor's PCs and from other cells, which are drawn independently of
the anchor except for their donor (its batch shift and CM propensity). So a path can
tell a model about its label only what the anchor's own features say, plus what the
neighbours say about the anchor's donor. ``logreg_fresh`` is the per-cell logistic
regression fitted on ``--fresh_cells`` newly simulated labelled cells of the same
donors (a strong per-cell classifier, not a proven limit); ``logreg_fresh_donor``
adds the anchor's donor as a one-hot - more than any path can say about it - so it
bounds that channel from above, as far as a linear model can use it. ``logreg_cells``
fits the per-cell model on every training cell the training walks visit instead of
one anchor per sequence (what learning from every labelled cell on the paths buys).
The fresh cells share the data set's seed (so its donors): the first of them share
days and some count noise with the data set's cells, never labels.
"""
from __future__ import annotations

import json
import os
from typing import Any, Sequence

from absl import app
from absl import flags
from absl import logging
import numpy as np
from sklearn import preprocessing

from cardiac_jax import baselines
from cardiac_jax import config_lib
from cardiac_jax import fileio
from cardiac_jax.data import dataset as dataset_lib
from cardiac_jax.data import sources
from cardiac_jax.data import ingest
from cardiac_jax.data import simulator
from cardiac_jax.data import splits as splits_lib
from cardiac_jax.studies import common

FLAGS = flags.FLAGS

COMPETITORS = ("logreg_last", "hgb_summary")
# Diagnostics: the per-cell classifier given every labelled training cell on a walk,
# given many fresh labelled cells of the same donors, and given those and the donor.
ALL_CELLS = "logreg_cells"
FRESH_CELLS = "logreg_fresh"
FRESH_DONOR = "logreg_fresh_donor"
SPLITS = ("val", "test")


def temporal_part(ds: dataset_lib.SequenceDataset) -> dataset_lib.SequenceDataset:
  """The single-cell (modality 0) sequences only."""
  return ds.subset(np.asarray(ds.modality) == 0)


def prepared_cells(config: Any) -> tuple[Any, Any]:
  """The cells as the build prepared them (simulated again: same seed, same cells), and
  their obs rows (latents included), aligned with ``source_index``."""
  if config.data.source != "simulator":
    raise ValueError("the ceiling needs the simulator's latents; config.data.source is "
                     f"{config.data.source!r} (use a preset on the embedded simulator).")
  adata = sources.load_cells(config.data)
  cells = ingest.prepare_cells(adata, config.data)
  return cells, adata.obs.loc[cells.obs_names]


def anchor_latents(cells: Any, obs: Any, ds: dataset_lib.SequenceDataset) -> dict[str, Any]:
  """Day (index into ``config_lib.DAYS``), t_expr and fate sign of each sequence's last cell."""
  anchor = np.asarray(ds.source_index)[:, -1]
  days = np.asarray([config_lib.DAYS.index(t) for t in cells.time_labels])[cells.time_index]
  fate = obs["fate_bias"].to_numpy(np.float64)
  return {"day": days[anchor],
          # dpt_pseudotime is t_expr / T_MAX clipped to [0, 1]; the clipped cells sit
          # deep inside IPSC or the terminal stage, where the rule's answer is the same.
          "t_expr": obs["dpt_pseudotime"].to_numpy(np.float64)[anchor] * simulator.T_MAX,
          "fate_positive": fate[anchor] > 0,
          "cm_fraction": float(np.mean(fate > 0))}


def visited_training_cells(ds: dataset_lib.SequenceDataset,
                           labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Features and labels of every distinct training cell that a training walk visits.

  The per-cell baseline learns from the anchors only (one labelled cell per
  sequence); these are all the labelled training cells the sequences hold.
  """
  train = np.asarray(ds.split) == splits_lib.SPLIT_IDS["train"]
  rows, first = np.unique(np.asarray(ds.source_index)[train].ravel(), return_index=True)
  return ds.x[train].reshape(-1, ds.x.shape[-1])[first], np.asarray(labels)[rows]


def _logreg_from(train_x: np.ndarray, train_y: np.ndarray, anchor_x: np.ndarray,
                 ds: dataset_lib.SequenceDataset, seed: int) -> dict[str, Any]:
  """A per-cell logistic regression fitted on (train_x, train_y) with classes balanced as
  the anchors are, C chosen on the validation anchors, scored on val and test anchors.

  ``anchor_x`` holds each sequence's features in ``train_x``'s columns.
  """
  split, y = np.asarray(ds.split), np.asarray(ds.y)
  rows = {s: split == splits_lib.SPLIT_IDS[s] for s in SPLITS}
  scaler = preprocessing.StandardScaler().fit(train_x)
  xs = {"train": scaler.transform(train_x),
        **{s: scaler.transform(anchor_x[rows[s]]) for s in SPLITS}}
  ys = {"train": train_y, **{s: y[rows[s]] for s in SPLITS}}
  selected, pred = baselines.logreg(xs, ys, seed, class_weight="balanced")
  return {"train_cells": int(train_y.size), "C": selected["C"],
          **{s: float(np.mean(pred[s] == ys[s])) for s in SPLITS}}


def _last_step(ds: dataset_lib.SequenceDataset) -> np.ndarray:
  """Each sequence's anchor features (full paths: ``_check``)."""
  return np.asarray(ds.x)[:, -1]


def logreg_on_cells(ds: dataset_lib.SequenceDataset, labels: np.ndarray,
                    seed: int) -> dict[str, Any]:
  """The per-cell classifier fitted on every visited training cell, not the anchors only."""
  return _logreg_from(*visited_training_cells(ds, labels), _last_step(ds), ds, seed)


def fresh_cells(config: Any, n_cells: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Features (PCs, day, modality), labels and donors of ``n_cells`` newly simulated cells.

  Same seed, so the same donors and programmes (the donors' draws do not depend on
  n_cells), embedded with the data set's own training-fitted preprocessor.
  """
  from cardiac_jax.data import preprocess  # pylint: disable=g-import-not-at-top
  from cardiac_jax.data import sequences  # pylint: disable=g-import-not-at-top
  fresh = config.copy_and_resolve_references()
  fresh.data.simulator.n_cells = int(n_cells)
  cells = ingest.prepare_cells(sources.load_cells(fresh.data), fresh.data)
  pp = preprocess.Preprocessor.load(dataset_lib.cache_paths(config.data)[1])
  pcs = np.asarray(pp.transform(cells.counts, cells.gene_names), np.float32)
  day = sequences.time_feature(cells.time_index, len(cells.time_labels))[:, None]
  return (np.concatenate([pcs, day, np.zeros_like(day)], axis=1), cells.labels,
          np.asarray(cells.donors).astype(str))


def _one_hot(values: np.ndarray, vocabulary: np.ndarray) -> np.ndarray:
  return (np.asarray(values)[:, None] == vocabulary[None, :]).astype(np.float32)


def logreg_on_fresh_cells(config: Any, ds: dataset_lib.SequenceDataset, n_cells: int,
                          anchor_donors: np.ndarray) -> dict[str, dict[str, Any]]:
  """The per-cell classifier fitted on fresh labelled cells, without and with the donor."""
  feats, labels, donors = fresh_cells(config, n_cells)
  last, seed = _last_step(ds), int(config.seed)
  vocab = np.unique(np.concatenate([donors, np.asarray(anchor_donors).astype(str)]))
  return {FRESH_CELLS: _logreg_from(feats, labels, last, ds, seed),
          FRESH_DONOR: _logreg_from(
              np.concatenate([feats, _one_hot(donors, vocab)], axis=1), labels,
              np.concatenate([last, _one_hot(anchor_donors, vocab)], axis=1), ds, seed)}


def _check(config: Any) -> None:
  """Refuses the configs whose sequences the measurements here would misread."""
  seq = config.data.sequences
  if float(seq.observed_fraction) != 1.0 or bool(seq.time_shuffle):
    raise ValueError("the ceiling reads each sequence's last step as its anchor: use full, "
                     "time-ordered paths (data.sequences.observed_fraction=1, time_shuffle=False).")
  if bool(config.data.split.group_by_donor):
    raise ValueError("with data.split.group_by_donor the fresh cells would include the held-out "
                     "donors; measure the ceiling on the default (cell-level) split.")


def measure(config: Any, n_fresh: int = 0) -> dict[str, Any]:
  """The ceiling and the baselines on one configured data set (temporal sequences)."""
  _check(config)
  ds = temporal_part(dataset_lib.build_dataset(config.data, progress=False))
  cells, obs = prepared_cells(config)
  latents = anchor_latents(cells, obs, ds)
  class_names = tuple(ds.class_names)
  to_class = np.asarray([class_names.index(p) if p in class_names else -1
                         for p in config_lib.POPULATIONS])
  bayes = to_class[simulator.bayes_labels(latents["day"], latents["t_expr"],
                                          latents["fate_positive"], latents["cm_fraction"])]
  split, y = np.asarray(ds.split), np.asarray(ds.y)
  rows = {s: split == splits_lib.SPLIT_IDS[s] for s in SPLITS}
  fitted = baselines.run_baselines(ds, names=COMPETITORS, seed=int(config.seed))
  expected = simulator.label_ceiling(latents["cm_fraction"])
  out = {"preset": config.name, "data_seed": int(config.data.simulator.seed),
         "n": {s: int(rows[s].sum()) for s in SPLITS},
         "cm_fraction": latents["cm_fraction"],
         "ceiling_expected": expected["balanced"],
         "ceiling_per_class": expected["per_class"],
         "bayes": {s: float(np.mean(bayes[rows[s]] == y[rows[s]])) for s in SPLITS}}
  for name in COMPETITORS:
    out[name] = {s: float(fitted[name][f"{s}_acc"]) for s in SPLITS}
  # Class ids of the prepared cells are the dataset's (the same class list).
  out[ALL_CELLS] = logreg_on_cells(ds, cells.labels, int(config.seed))
  if n_fresh:
    anchor_donors = np.asarray(cells.donors).astype(str)[np.asarray(ds.source_index)[:, -1]]
    out.update(logreg_on_fresh_cells(config, ds, n_fresh, anchor_donors))
  return out


METHODS = ("bayes",) + COMPETITORS + (ALL_CELLS, FRESH_CELLS, FRESH_DONOR)
LABELS = {"bayes": "Bayes rule (latents)", "logreg_last": "logreg last",
          "hgb_summary": "HGB pooled", ALL_CELLS: "logreg, every training cell",
          FRESH_CELLS: "logreg, fresh cells", FRESH_DONOR: "logreg, fresh cells + donor"}


def _methods(results: Sequence[dict[str, Any]]) -> tuple[str, ...]:
  return tuple(k for k in METHODS if all(k in r for r in results))


def summarise(results: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
  """Per preset, the mean over data seeds of every accuracy and each method's gap to the
  expected ceiling (positive: below it)."""
  out = {}
  for preset in dict.fromkeys(r["preset"] for r in results):
    rs = [r for r in results if r["preset"] == preset]
    row = {"runs": len(rs), "ceiling_expected": float(np.mean([r["ceiling_expected"] for r in rs]))}
    for key in _methods(rs):
      for s in SPLITS:
        row[f"{key}_{s}"] = float(np.mean([r[key][s] for r in rs]))
      row[f"{key}_below_expected"] = row["ceiling_expected"] - row[f"{key}_test"]
    out[preset] = row
  return out


def _pair(r: dict[str, Any], key: str) -> str:
  return f"{r[key]['val']:.4f} / {r[key]['test']:.4f}"


def to_markdown(results: Sequence[dict[str, Any]], summary: dict[str, dict[str, float]]) -> str:
  se = common.se_diff
  methods = _methods(results)
  lines = ["# The ceiling of the embedded simulator's labels (experiments/ceiling.py)", "",
           "Temporal sequences only (val / test accuracy). `Bayes rule`: the rule of "
           "`simulator.label_ceiling` applied to each sequence's anchor latents (day, t_expr, "
           "fate sign), the best any classifier of these sequences can do; `expected`: its "
           "accuracy over class-balanced anchors, without test-set noise. `logreg, every "
           "training cell`: the per-cell logistic regression fitted on every distinct training "
           "cell the training walks visit (classes balanced) instead of the anchors only; "
           "`logreg, fresh cells`: fitted on newly simulated labelled cells of the same donors "
           "(a strong per-cell classifier of the anchor's features); `+ donor`: the same with "
           "the donor as a one-hot, more than a path can say about it (the only link between "
           "an anchor's label and the other cells of its walk). The band is two standard "
           "errors of a difference of two accuracies on that test split.",
           ""]
  lines += common.table(
      ["preset", "data seed", "test n", "expected ceiling"] + [LABELS[k] for k in methods]
      + ["Bayes − logreg last, test (2 SE)"],
      [[r["preset"], r["data_seed"], r["n"]["test"], r["ceiling_expected"]]
       + [_pair(r, k) for k in methods]
       + [f"{r['bayes']['test'] - r['logreg_last']['test']:+.4f} "
          f"(±{2 * se(r['bayes']['test'], r['logreg_last']['test'], r['n']['test']):.3f})"]
       for r in results])
  lines += ["", "Means over data seeds (val / test), and each method's test gap to the expected "
            "ceiling:", ""]
  lines += common.table(
      ["preset", "runs", "expected ceiling"] + [LABELS[k] for k in methods]
      + [f"expected − {LABELS[k]}" for k in methods[1:]],
      [[p, s["runs"], s["ceiling_expected"]]
       + [f"{s[f'{k}_val']:.4f} / {s[f'{k}_test']:.4f}" for k in methods]
       + [f"{s[f'{k}_below_expected']:+.4f}" for k in methods[1:]] for p, s in summary.items()])
  per_class = results[0]["ceiling_per_class"]
  lines += ["", "Expected ceiling per class (first run): " + ", ".join(
      f"{c} {v:.3f}" for c, v in per_class.items()), ""]
  return "\n".join(lines)


def plot(results: Sequence[dict[str, Any]], path: str) -> str:
  """Test accuracy per run of each method against the expected ceiling."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(10, 3.8))
  x = np.arange(len(results))
  for i, (key, marker) in enumerate(zip(_methods(results), "*osdv^")):
    ax.plot(x + (i - 2.5) * 0.1, [r[key]["test"] for r in results], marker, label=LABELS[key])
  ax.hlines([r["ceiling_expected"] for r in results], x - 0.3, x + 0.3, colors="k",
            label="expected ceiling")
  ax.set_xticks(x, [f"{r['preset']}\nseed {r['data_seed']}" for r in results], fontsize=8)
  ax.set_ylabel("test accuracy (temporal sequences)")
  ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
  fig.tight_layout()
  fileio.save_figure(fig, path)
  return path


def run(presets: Sequence[str], data_seeds: Sequence[int], out: str,
        quick: bool = False, n_fresh: int = 0) -> dict[str, Any]:
  """Measures every preset x data seed; writes ``out``.json, .md and .png."""
  results = []
  for name in presets:
    for seed in data_seeds:
      config = config_lib.with_data_seed(config_lib.preset(name, "quick" if quick else None),
                                         seed)
      results.append(measure(config, n_fresh))
      logging.info("ceiling %s seed %d: %s", name, seed, json.dumps(results[-1]))
  summary = summarise(results)
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  report = {"runs": results, "summary": summary}
  common.write_json(out + ".json", report)
  fileio.atomic_write_text(out + ".md", to_markdown(results, summary))
  plot(results, out + ".png")
  return report


def define_flags() -> None:
  """The script's flags (defined here, not at import, like every study's)."""
  flags.DEFINE_list("presets", ["scale1", "scale2", "scale3"], "configs/<name>.py each.")
  flags.DEFINE_list("data_seeds", ["0"], "Data seeds (simulator, split and walks).")
  flags.DEFINE_bool("quick", False, "The presets' quick variant (debug sizes).")
  flags.DEFINE_string("out", "runs/ceiling/ceiling", "Output prefix: .json, .md, .png.")
  flags.DEFINE_integer("fresh_cells", 150_000, "Labelled cells of the same donors "
                       "for the per-cell classifier's own limit (0 = skip).")


def main(argv: Sequence[str]) -> None:
  del argv
  report = run(FLAGS.presets, [int(s) for s in FLAGS.data_seeds], FLAGS.out, FLAGS.quick,
               FLAGS.fresh_cells)
  print(to_markdown(report["runs"], report["summary"]))


if __name__ == "__main__":
  define_flags()
  app.run(main)

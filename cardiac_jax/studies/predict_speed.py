"""Where ``predict``'s time goes at full size, and what fewer walks cost in labels.

  python experiments/bench_full_data.py --stages=simulate --workdir=/tmp/full
  python -m cardiac_jax.studies.bench_full_data --stage=train_model --workdir=/tmp/full \
      --train_cells=20000 --train_epochs=12
  python experiments/predict_speed.py --cells=/tmp/full/cells.h5ad \
      --model=/tmp/full/model_run/model --out=docs/results/predict_speed

Three parts, all on the same cells and model:
1. ``commands``: the README's ``cardiac-jax predict`` in a fresh process, as a user
   runs it, with the default adaptive walks and with ``--walk_margin=1`` (every cell
   ``n_walks`` walks: the labels of before); wall, peak RSS, mean walks per cell,
   accuracy against the simulator's ``type`` and agreement of the labels.
2. ``sweep``: on ``--sweep_cells`` random anchors among all the cells (one graph),
   agreement with the 8-walk labels and accuracy for 1, 2, 4 walks and for adaptive
   walks (one walk, then ``n`` for the cells under the margin) for every ``n`` of
   ``--adaptive_walks`` and margin of ``--margins`` (in-process, seeds as ``predict``'s).
3. ``throughput``: walks/s of the model in one process: one chunk at a time against
   ``export.PREDICT_THREADS`` chunks in flight, float32 against bfloat16, and the
   stages of one prediction (graph, walks, model) timed.
Writes <out>.json and <out>.md.
"""
from __future__ import annotations

import contextlib
import pathlib
import sys
import time
from typing import Any, Sequence

from absl import app
from absl import flags
from absl import logging
import numpy as np

from cardiac_jax import fileio
from cardiac_jax import resources
from cardiac_jax.studies import common

FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_string("cells", None, "h5ad of cells to predict (raw counts, obs diffday/type).")
  flags.DEFINE_string("model", None, "Exported model folder.")
  flags.DEFINE_string("out", "runs/predict_speed", "Output prefix (<out>.json, <out>.md).")
  flags.DEFINE_list("parts", ["commands", "sweep", "throughput"], "Parts to run.")
  flags.DEFINE_integer("sweep_cells", 8000, "Anchors of the sweep.")
  flags.DEFINE_list("margins", ["0.1", "0.2"], "walk_margin values swept.")
  flags.DEFINE_list("graph_cells", ["5000"], "graph_cells_per_day values swept (besides the "
                    "model's training density).")
  flags.DEFINE_list("adaptive_walks", ["4", "8"],
                    "n_walks of the adaptive rows (walks of the cells under the margin).")
  flags.DEFINE_string("true_key", "type", "obs column of the true labels.")


def _labels(csv: pathlib.Path) -> np.ndarray:
  import pandas as pd  # pylint: disable=g-import-not-at-top
  return pd.read_csv(csv, usecols=["label"])["label"].astype(str).to_numpy()


def _accuracy(pred: np.ndarray, true: np.ndarray, classes: Sequence[str]) -> float:
  known = np.isin(true, list(classes))           # cells of a class the model knows
  return float(np.mean(pred[known] == true[known]))


def commands(cells: str, model_path: str, workdir: pathlib.Path) -> list[dict[str, Any]]:
  """The CLI in fresh processes: the labels of before (every cell 8 walks among all the
  cells), adaptive walks among all the cells, and the default (adaptive walks among as
  many cells per day as the model's training walks had)."""
  import anndata  # pylint: disable=g-import-not-at-top
  from cardiac_jax import export  # pylint: disable=g-import-not-at-top
  classes = export.load_model(model_path).class_names
  true = anndata.read_h5ad(cells, backed="r").obs[FLAGS.true_key].astype(str).to_numpy()
  rows, reference = [], None
  for name, extra in (("every cell 8 walks among all cells (before)",
                       ["--walk_margin=1", "--graph_cells_per_day=0"]),
                      ("adaptive walks among all cells", ["--graph_cells_per_day=0"]),
                      ("default (adaptive walks, training density)", [])):
    out = workdir / f"predicted_{len(rows)}.h5ad"
    csv = out.with_suffix(".csv")
    argv = [sys.executable, "-m", "cardiac_jax.cli", "predict", f"--model={model_path}",
            f"--input={cells}", f"--output={out}", f"--csv={csv}", *extra]
    logging.info("%s", " ".join(argv))
    cost = resources.run_measured(argv)
    if cost["returncode"] != 0:
      raise RuntimeError(f"{' '.join(argv)} failed ({cost['returncode']})")
    labels = _labels(csv)
    walks = anndata.read_h5ad(out, backed="r").obs["cardiac_jax_n_walks"].to_numpy()
    reference = labels if reference is None else reference
    rows.append({"setting": name, "argv": argv[2:], "wall_s": cost["wall_s"],
                 "peak_rss_gb": cost["peak_rss_mb"] / 2**10, "mean_walks": float(walks.mean()),
                 "accuracy": _accuracy(labels, true, classes),
                 "agreement_with_8_walks": float(np.mean(labels == reference))})
    out.unlink()
  return rows


def sweep(cells: str, model_path: str) -> tuple[list[dict[str, Any]], dict[str, float]]:
  """Agreement with the 8-walk labels against walks, on a subset of anchors."""
  import anndata  # pylint: disable=g-import-not-at-top
  from cardiac_jax import export  # pylint: disable=g-import-not-at-top
  from cardiac_jax import prediction  # pylint: disable=g-import-not-at-top
  from cardiac_jax import query  # pylint: disable=g-import-not-at-top
  from cardiac_jax.data import ingest  # pylint: disable=g-import-not-at-top
  model = export.load_model(model_path)
  stages = {}
  start = time.perf_counter()
  adata = ingest.load_h5ad(cells)
  stages["load_h5ad_s"] = time.perf_counter() - start
  start = time.perf_counter()
  time_index = query.map_time_labels(query.time_column(adata, "diffday"), model.time_labels)
  counts = query.read_counts(adata, model, counts_layer=None,
                             min_gene_fraction=query.MIN_GENE_FRACTION, key_added="x")
  pcs = query.embed(counts.matrix, counts.gene_names, model.preprocessor)
  stages["counts_and_embed_s"] = time.perf_counter() - start
  true = adata.obs[FLAGS.true_key].astype(str).to_numpy()
  del adata, counts
  rng = np.random.default_rng(1)
  anchors = np.sort(rng.choice(pcs.shape[0], min(FLAGS.sweep_cells, pcs.shape[0]),
                               replace=False))
  names = np.asarray(model.class_names)

  train_density = int(model.info["walks"].get("train_cells_per_day", 0))
  caps = sorted({int(c) for c in FLAGS.graph_cells} | ({train_density} - {0}))

  def run(n_walks: int, margin: float, cap: int = 0,
          seed: int = 0) -> tuple[np.ndarray, float, float]:
    t0 = time.perf_counter()
    probs, used = prediction.walk_probabilities(model, pcs, time_index, anchors,
                                                n_walks=n_walks, walk_margin=margin,
                                                seed=seed, graph_cells_per_day=cap,
                                                progress=False)
    return names[probs.argmax(axis=1)], float(used.mean()), time.perf_counter() - t0

  def row(setting: str, labels: np.ndarray, used: float, seconds: float) -> dict[str, Any]:
    return {"setting": setting, "mean_walks": used, "seconds": seconds,
            "agreement": float(np.mean(labels == reference)),
            "accuracy": _accuracy(labels, true[anchors], names)}

  with _graphs_built_once():
    reference, _, seconds = run(8, 1.0)
    rows = [row("8 walks among all cells (reference)", reference, 8.0, seconds)]
    rows.append(row("8 walks among all cells, walk seed 1 (the reference's own noise)",
                    *run(8, 1.0, seed=1)))
    for n_walks in (1, 2, 4):
      rows.append(row(f"{n_walks} walks", *run(n_walks, 1.0)))
    for n_walks in (int(n) for n in FLAGS.adaptive_walks):
      for margin in (float(m) for m in FLAGS.margins):
        rows.append(row(f"adaptive, {n_walks} walks under margin {margin:g}",
                        *run(n_walks, margin)))
    for cap in caps:
      what = f"among {cap} cells per day" + (" (training density)" if cap == train_density
                                             else "")
      rows.append(row(f"8 walks {what}", *run(8, 1.0, cap)))
      rows.append(row(f"1 walk {what}", *run(1, 1.0, cap)))
      rows.append(row(f"adaptive (default margin) {what}",
                      *run(8, prediction.WALK_MARGIN, cap)))
  stages.update(_stage_times(model, pcs, time_index))
  return rows, stages


@contextlib.contextmanager
def _graphs_built_once():
  """Within: ``temporal_graph`` builds each (cells, points) graph once (the sweep's rows
  share graphs; ``walk_probabilities`` builds its own each call)."""
  from cardiac_jax.data import sequences  # pylint: disable=g-import-not-at-top
  original, built = sequences.temporal_graph, {}

  def once(pcs, time_index, labels, rows, k, points=None):
    key = (id(pcs), k, None if points is None else hash(np.asarray(points).tobytes()))
    if key not in built:
      built[key] = original(pcs, time_index, labels, rows, k, points=points)
    return built[key]

  sequences.temporal_graph = once
  try:
    yield
  finally:
    sequences.temporal_graph = original


def _stage_times(model: Any, pcs: np.ndarray, time_index: np.ndarray) -> dict[str, float]:
  """Graph build, walks + features of one block, and model walks/s in one process."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from cardiac_jax import export  # pylint: disable=g-import-not-at-top
  from cardiac_jax import prediction  # pylint: disable=g-import-not-at-top
  from cardiac_jax.data import sequences  # pylint: disable=g-import-not-at-top
  n = pcs.shape[0]
  out = {}
  density = int(model.info["walks"].get("train_cells_per_day", 0))
  if density:
    t0 = time.perf_counter()
    sequences.temporal_graph(pcs, time_index, np.zeros(n, np.int32), np.arange(n),
                             model.k_neighbors,
                             points=sequences.reference_points(time_index, density, 0))
    out[f"graph_among_{density}_cells_per_day_s"] = time.perf_counter() - t0
  t0 = time.perf_counter()
  graph = sequences.temporal_graph(pcs, time_index, np.zeros(n, np.int32), np.arange(n),
                                   model.k_neighbors)
  out["graph_among_all_cells_s"] = time.perf_counter() - t0
  block = np.arange(min(prediction.BLOCK_CELLS, n))
  t0 = time.perf_counter()
  src = sequences.walk(graph, block, model.length, np.random.default_rng(0))
  x = sequences.assemble_features(pcs, src, sequences.time_feature(
      time_index, len(model.time_labels)), 0)
  out["walks_and_features_per_1000_s"] = (time.perf_counter() - t0) / block.size * 1000
  mask = np.ones(src.shape, np.float32)
  x4, m4 = np.concatenate([x] * 4), np.concatenate([mask] * 4)
  original = (export.PREDICT_THREADS, model.model)
  try:
    for threads in (1, export.PREDICT_THREADS):
      for dtype in ("float32", "bfloat16"):
        export.PREDICT_THREADS = threads
        model.model = original[1].clone(dtype=jnp.dtype(dtype))
        model.predict_sequences(x[:model.predict_chunk], mask[:model.predict_chunk])
        best = np.inf
        for _ in range(3):
          t0 = time.perf_counter()
          model.predict_sequences(x4, m4)
          best = min(best, time.perf_counter() - t0)
        out[f"walks_per_s_{threads}_threads_{dtype}"] = x4.shape[0] / best
  finally:
    export.PREDICT_THREADS, model.model = original
  return out


def main(argv: Sequence[str]) -> None:
  del argv
  out = pathlib.Path(FLAGS.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  result: dict[str, Any] = {"cells": FLAGS.cells, "model": FLAGS.model,
                            "cpu": common.cpu_model(), "date": time.strftime("%Y-%m-%d")}
  if "sweep" in FLAGS.parts or "throughput" in FLAGS.parts:
    result["sweep"], result["stages"] = sweep(FLAGS.cells, FLAGS.model)
  if "commands" in FLAGS.parts:
    result["commands"] = commands(FLAGS.cells, FLAGS.model, out.parent)
  common.write_json(out.with_suffix(".json"), result)
  lines = [f"# predict at full size ({result['date']}, {result['cpu']})", ""]
  if "commands" in result:
    lines += ["## The command, fresh process", ""] + common.table(
        ["setting", "wall s", "peak RSS GB", "walks per cell", "accuracy",
         "agreement with 8 walks"],
        [(r["setting"], round(r["wall_s"], 1), round(r["peak_rss_gb"], 2),
          round(r["mean_walks"], 2), r["accuracy"], r["agreement_with_8_walks"])
         for r in result["commands"]]) + [""]
  if "sweep" in result:
    lines += [f"## Walks against labels ({FLAGS.sweep_cells} anchors)", ""] + common.table(
        ["setting", "walks per cell", "agreement with 8 walks", "accuracy",
         "seconds (a graph's first row includes building it)"],
        [(r["setting"], round(r["mean_walks"], 2), r["agreement"], r["accuracy"],
          round(r["seconds"], 1))
         for r in result["sweep"]]) + ["", "## Stages and throughput (one process)", ""]
    lines += common.table(["measure", "value"],
                          [(k, round(v, 3)) for k, v in result["stages"].items()]) + [""]
  fileio.atomic_write_text(out.with_suffix(".md"), "\n".join(lines))
  print("\n".join(lines))



if __name__ == "__main__":
  define_flags()
  app.run(main)

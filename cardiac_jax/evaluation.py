"""Eval-mode passes over a split, and the report of a run's best checkpoint.

A split is a list of fixed-size padded chunks (``input_pipeline.eval_chunks``);
each chunk is one call of the jitted ``train.eval_chunk``. Sums stay on the
device across chunks and the host fetches them once, then divides: averages
are summed loss over count, never means of per-chunk means.

Nothing here imports ``train``: the functions take a built run (``train.Run``)
and its jitted eval function, so the train loop can report through them.
"""
from __future__ import annotations

import time
from typing import Any, Callable

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from cardiac_jax import checkpoint as checkpoint_lib
from cardiac_jax import input_pipeline
from cardiac_jax import models
from cardiac_jax import monitor
from cardiac_jax import report as report_lib
from cardiac_jax.data import splits as splits_lib

Chunks = list[tuple[jax.Array, jax.Array]]


def eval_sums(eval_fn: Callable, state: Any, data: dict[str, jax.Array], chunks: Chunks, *,
              with_probs: bool = False) -> tuple[dict[str, jax.Array], list[jax.Array]]:
  """On-device loss/correct/count sums over a split (and its per-chunk probabilities)."""
  total, probs = None, []
  for idx, weight in chunks:
    sums, p = eval_fn(state, data, idx, weight)
    total = sums if total is None else jax.tree.map(jnp.add, total, sums)
    if with_probs:
      probs.append(p)
  return total, probs


def summarise_eval(total: dict[str, Any]) -> dict[str, Any]:
  """Host-side averages from fetched sums: summed loss over count, not means of means."""
  count = float(total["count"])
  return {"loss": float(total["loss"]) / max(count, 1.0),
          "acc": float(total["correct"]) / max(count, 1.0), "count": int(count)}


def evaluate(eval_fn: Callable, state: Any, data: dict[str, jax.Array], chunks: Chunks, *,
             with_probs: bool = False) -> dict[str, Any]:
  """Eval-mode loss/accuracy over a split (and optionally its class probabilities)."""
  total, probs = eval_sums(eval_fn, state, data, chunks, with_probs=with_probs)
  out = summarise_eval(jax.device_get(total))
  if with_probs:
    out["probs"] = np.asarray(jax.device_get(jnp.concatenate(probs)))[:out["count"]]
  return out


def with_branch_gate(state: Any, value: float) -> Any:
  """``state`` with the sequence branch's evaluation weight set (models with a cell head)."""
  if "branch_gate" not in state.batch_stats:
    return state
  stats = dict(state.batch_stats)
  stats["branch_gate"] = jnp.asarray(value, jnp.float32)
  return state.replace(batch_stats=stats)


def select_branch_gate(run: Any, state: Any) -> tuple[Any, dict[str, Any] | None]:
  """Sets the weight of the sequence branch against the per-cell head on VALIDATION.

  Why: the per-cell head alone is a logistic regression on the last cell; the
  sequence branch adds what the path knows, but on data where the path knows
  little it mostly adds variance. Like a baseline's regularisation strength,
  the weight (``train.branch_gate_grid``; 0 = the cell head alone, 1 = the sum
  as trained) is chosen by validation accuracy, ties to the lower validation
  loss; test never takes part. Returns the state with the chosen weight (it
  then travels with the weights) and what was measured, or (state, None) for a
  model without a cell head or an empty grid.
  """
  grid = tuple(float(g) for g in run.config.train.get("branch_gate_grid", ()))
  if "branch_gate" not in state.batch_stats or not grid:
    return state, None
  scores = [evaluate(run.fns.eval_chunk, with_branch_gate(state, g), run.data,
                     run.chunks["val"]) for g in grid]
  best = max(range(len(grid)), key=lambda i: (scores[i]["acc"], -scores[i]["loss"]))
  logging.info("branch gate %.2f chosen on validation (val acc per gate %s)", grid[best],
               {g: round(s["acc"], 4) for g, s in zip(grid, scores)})
  return with_branch_gate(state, grid[best]), {
      "chosen": grid[best], "grid": list(grid), "val_acc": [s["acc"] for s in scores],
      "val_loss": [s["loss"] for s in scores]}


def predict(run: Any, state: Any, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """Class probabilities (N, C) for new, unlabelled sequences in eval mode."""
  data = input_pipeline.device_arrays(x, np.zeros(len(x), np.int32), mask)
  chunks = input_pipeline.eval_chunks(np.arange(len(x)),
                                      input_pipeline.chunk_size(run.config, len(x)))
  return evaluate(run.fns.eval_chunk, state, data, chunks, with_probs=True)["probs"]


def report_best(run: Any, workdir: str, ckpt: checkpoint_lib.Checkpointer,
                records: list[dict[str, Any]], es: monitor.EarlyStopping,
                t_start: float, *,
                on_best: Callable[[Any, Any, str], Any] | None = None) -> dict[str, Any]:
  """Evaluates the best checkpoint's weights on every split and writes the report.

  ``on_best(run, state, workdir)``, when given, receives the best state with the
  chosen branch gate (the exported model must carry exactly what was reported).
  """
  state, meta = ckpt.restore_best(run.abstract_state)
  state, gate = select_branch_gate(run, state)
  evals = {name: evaluate(run.fns.eval_chunk, state, run.data, run.chunks[name],
                          with_probs=(name == "test"))
           for name in splits_lib.SPLITS}
  split = np.asarray(run.dataset.split)
  results = report_lib.summarise(
      config=run.config,
      evals=evals,
      y_test=np.asarray(run.dataset.y)[split == splits_lib.SPLIT_IDS["test"]],
      class_names=tuple(run.dataset.class_names),
      records=records,
      best_epoch=int(meta["epoch"]),
      early_stopped=es.should_stop,
      num_params=models.count_params(state.params),
      wall_seconds=time.time() - t_start,
  )
  results["branch_gate"] = gate
  report_lib.write_report(workdir, results, records)
  if on_best is not None:
    on_best(run, state, workdir)
  logging.info("Test accuracy %.4f, macro-F1 %.4f (best epoch %d of %d); report in %s",
               results["test_acc"], results["macro_f1"], results["best_epoch"],
               results["epochs_run"], workdir)
  return results

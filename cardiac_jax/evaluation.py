"""Eval-mode passes over a split, and the report of a run's best checkpoint.

A split is a list of fixed-size padded chunks (``input_pipeline.eval_chunks``);
each chunk is one call of the jitted ``train.eval_chunk``. Sums stay on the
device across chunks and the host fetches them once, then divides: averages
are summed loss over count, never means of per-chunk means.

The functions take a built run (``run.Run``) and its jitted eval function, so
the train loop, inference and the studies report through the same code. Every
state has the member axis (``members``): scores come per member, and a split's
reported score is the members' ensemble.
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
from cardiac_jax import members as members_lib
from cardiac_jax import models
from cardiac_jax import monitor
from cardiac_jax import parallel
from cardiac_jax import report as report_lib
from cardiac_jax import run as run_lib
from cardiac_jax import steps
from cardiac_jax.data import splits as splits_lib

Chunks = list[tuple[jax.Array, jax.Array]]


def eval_sums(eval_fn: Callable, state: steps.TrainState, data: dict[str, jax.Array], chunks: Chunks, *,
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


def evaluate(eval_fn: Callable, state: steps.TrainState, data: dict[str, jax.Array],
             chunks: Chunks, *, with_probs: bool = False) -> list[dict[str, Any]]:
  """Eval-mode loss/accuracy over a split for each member (and optionally its class
  probabilities): one dict per member, every member in one call per chunk, one fetch."""
  total, probs = parallel.fetch(eval_sums(eval_fn, state, data, chunks,
                                          with_probs=with_probs))
  out = []
  for k in range(members_lib.count(total)):
    ev = summarise_eval(members_lib.take(total, k))
    if with_probs:
      ev["probs"] = np.concatenate([np.asarray(p[k]) for p in probs])[:ev["count"]]
    out.append(ev)
  return out


def with_branch_gate(state: steps.TrainState, value: Any) -> steps.TrainState:
  """``state`` with the sequence branch's evaluation weight set (models with a cell head);
  ``value`` is one weight, or one per member."""
  if "branch_gate" not in state.batch_stats:
    return state
  stats = dict(state.batch_stats)
  stats["branch_gate"] = jnp.broadcast_to(jnp.asarray(value, jnp.float32),
                                          jnp.shape(stats["branch_gate"]))
  return state.replace(batch_stats=stats)


def select_branch_gate(run: run_lib.Run, state: steps.TrainState
                       ) -> tuple[steps.TrainState, dict[str, Any] | None]:
  """Sets the weight of the sequence branch against the per-cell head on VALIDATION.

  Why: the per-cell head alone is a logistic regression on the last cell; the
  sequence branch adds what the path knows, but on data where the path knows
  little it mostly adds variance. Like a baseline's regularisation strength,
  the weight (``train.branch_gate_grid``; 0 = the cell head alone, 1 = the sum
  as trained) is chosen by validation accuracy, ties to the lower validation
  loss; test never takes part. Returns the state with the chosen weight (it
  then travels with the weights) and what was measured, or (state, None) for a
  model without a cell head or an empty grid. Members choose their own weight
  ("chosen", "val_acc" and "val_loss" hold one entry per member; ``members.unwrap``).
  """
  grid = tuple(float(g) for g in run.config.train.get("branch_gate_grid", ()))
  if "branch_gate" not in state.batch_stats or not grid:
    return state, None
  k = run.num_members
  scores = [evaluate(run.fns.eval_chunk, with_branch_gate(state, g), run.data,
                     run.chunks["val"]) for g in grid]   # [gate][member]
  chosen, val_acc, val_loss = [], [], []
  for m in range(k):
    best = max(range(len(grid)), key=lambda i: (scores[i][m]["acc"], -scores[i][m]["loss"]))
    chosen.append(grid[best])
    val_acc.append([s[m]["acc"] for s in scores])
    val_loss.append([s[m]["loss"] for s in scores])
  logging.info("branch gate %s chosen on validation (val acc per gate %s)", chosen,
               {g: [round(s[m]["acc"], 4) for m in range(k)] for g, s in zip(grid, scores)})
  unwrap = members_lib.unwrap
  return with_branch_gate(state, chosen), {
      "chosen": unwrap(chosen), "grid": list(grid), "val_acc": unwrap(val_acc),
      "val_loss": unwrap(val_loss)}


def predict(run: run_lib.Run, state: steps.TrainState, x: np.ndarray,
            mask: np.ndarray) -> np.ndarray:
  """Class probabilities (N, C) for new, unlabelled sequences in eval mode: the
  members' ensemble, the mean of their probabilities."""
  data = input_pipeline.device_arrays(x, np.zeros(len(x), np.int32), mask)
  chunks = input_pipeline.eval_chunks(np.arange(len(x)),
                                      input_pipeline.chunk_size(run.config, len(x)))
  evs = evaluate(run.fns.eval_chunk, state, data, chunks, with_probs=True)
  return members_lib.ensemble_probs([e["probs"] for e in evs])


def _ensemble_evals(run: run_lib.Run, state: steps.TrainState
                    ) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
  """Every split scored by the members' ensemble, and each member's own scores."""
  split, y = np.asarray(run.dataset.split), np.asarray(run.dataset.y)
  evals, per_member = {}, {}
  for name in splits_lib.SPLITS:
    evs = evaluate(run.fns.eval_chunk, state, run.data, run.chunks[name], with_probs=True)
    evals[name] = members_lib.ensemble_scores(evs, y[split == splits_lib.SPLIT_IDS[name]])
    per_member[name] = evs
  return evals, per_member


def _members_summary(run: run_lib.Run, per_member: dict[str, list[dict[str, Any]]],
                     meta: dict[str, Any]) -> dict[str, Any]:
  """Each member's own numbers, and their mean and std, beside the ensemble's."""
  out: dict[str, Any] = {"num_members": run.num_members,
                         "seeds": members_lib.seeds(run.config),
                         "best_epoch": list(meta["best_epoch"])}
  for name, evs in per_member.items():
    acc = [e["acc"] for e in evs]
    out[f"{name}_acc"] = acc
    out[f"{name}_acc_mean"] = float(np.mean(acc))
    out[f"{name}_acc_std"] = float(np.std(acc))
    out[f"{name}_loss"] = [e["loss"] for e in evs]
  gaps = [tr["acc"] - va["acc"] for tr, va in zip(per_member["train"], per_member["val"])]
  out["acc_gap"], out["acc_gap_mean"] = gaps, float(np.mean(gaps))
  # The test metrics a single run reports, per member, so a K-member run stands in
  # for K single-seed runs (experiments/seed_benchmark.py) without retraining.
  names = tuple(run.dataset.class_names)
  y_test = np.asarray(run.dataset.y)[np.asarray(run.dataset.split)
                                     == splits_lib.SPLIT_IDS["test"]]
  cls = [report_lib.classification_metrics(y_test, np.argmax(e["probs"], -1), names)
         for e in per_member["test"]]
  out["test_macro_f1"] = [c["macro_f1"] for c in cls]
  out["test_confusion"] = [c["confusion"] for c in cls]
  out["test_fate_pair_acc"] = [report_lib.pair_accuracy(
      y_test, e["probs"], names, report_lib.fate_pair(run.config)) for e in per_member["test"]]
  return out


def report_best(run: run_lib.Run, workdir: str, ckpt: checkpoint_lib.Checkpointer,
                records: list[dict[str, Any]], es: members_lib.MemberStopping,
                t_start: float, *,
                on_best: Callable[[run_lib.Run, steps.TrainState, str, dict[str, Any]], Any]
                | None = None) -> dict[str, Any]:
  """Evaluates the best checkpoint's weights on every split and writes the report.

  ``on_best(run, state, workdir, results)``, when given, receives the best state
  with the chosen branch gate (the exported model must carry exactly what was
  reported) before the report is written, and may add to ``results`` (a task's
  scores of whole clones or spots: ``outputs.finish_run``).
  """
  state, meta = ckpt.restore_best(run.abstract_state)
  state = members_lib.from_storage(state, run.num_members)
  state, gate = select_branch_gate(run, state)
  k = run.num_members
  evals, per_member = _ensemble_evals(run, state)
  split = np.asarray(run.dataset.split)
  results = report_lib.summarise(
      config=run.config,
      evals=evals,
      y_test=np.asarray(run.dataset.y)[split == splits_lib.SPLIT_IDS["test"]],
      class_names=tuple(run.dataset.class_names),
      records=records,
      best_epoch=int(meta["epoch"]),
      early_stopped=es.should_stop,
      num_params=models.count_params(state.params) // k,
      wall_seconds=time.time() - t_start,
  )
  results["branch_gate"] = gate
  if k > 1:   # a one-member run's report is its member's own: no table of one
    results["members"] = _members_summary(run, per_member, meta)
  if on_best is not None:
    on_best(run, state, workdir, results)
  report_lib.write_report(workdir, results, records)
  logging.info("Test accuracy %.4f, macro-F1 %.4f (best epoch %d of %d); report in %s",
               results["test_acc"], results["macro_f1"], results["best_epoch"],
               results["epochs_run"], workdir)
  return results

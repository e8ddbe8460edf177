"""The runs a study trains: configs with other sequences, reuse of finished runs, summaries.

A run whose workdir already holds a finished run of the same config is reused,
not retrained, so interrupted studies resume and studies can share runs (a
``reference_workdir``). The horizon and the time shuffle are applied after the
dataset cache, so every run of a study shares one set of splits.
"""
from __future__ import annotations

import json
import os
from typing import Any, Iterator, Mapping, Sequence, TypeVar

from absl import logging
import ml_collections
import numpy as np

from cardiac_jax import baselines as baselines_lib
from cardiac_jax import fingerprint as fingerprint_lib
from cardiac_jax import input_pipeline
from cardiac_jax import monitor
from cardiac_jax import progress
from cardiac_jax import scaling
from cardiac_jax import train as train_lib
from cardiac_jax.data import splits as splits_lib

_RUN_KEYS = ("train_acc", "val_acc", "test_acc", "macro_f1", "acc_gap", "loss_gap",
             "num_params", "epochs_run", "best_epoch", "wall_seconds")

T = TypeVar("T")


def with_data(config: ml_collections.ConfigDict,
              **sequence_fields: Any) -> ml_collections.ConfigDict:
  """A copy with ``config.data.sequences`` fields replaced (horizon, time shuffle)."""
  config = config.copy_and_resolve_references()
  for key, value in sequence_fields.items():
    if key not in config.data.sequences:
      raise KeyError(f"unknown config field data.sequences.{key}; see cardiac_jax/config_lib.py.")
    config.data.sequences[key] = value
  return config


def finished_report(config: ml_collections.ConfigDict, workdir: str,
                    dataset: Any) -> dict[str, Any] | None:
  """The report of a FINISHED run of exactly this config and data in ``workdir``, else None.

  Finished: early-stopped, or ran all ``num_epochs`` of the resolved config. The
  config fingerprint (every field that changes the run, plus the data key) must
  match, so a report of another config or horizon is never mistaken for this one.
  """
  report_path = os.path.join(workdir, "report.json")
  stored = fingerprint_lib.read_config_file(workdir)
  if stored is None or not os.path.exists(report_path):
    return None
  resolved = scaling.resolve_config(config, len(dataset.y))
  fp = fingerprint_lib.fingerprint(resolved, input_pipeline.data_key(dataset))
  if fingerprint_lib.fingerprint_diff(stored.get("fingerprint", {}), fp):
    return None
  with open(report_path) as f:
    report = json.load(f)
  if report.get("early_stopped") or report.get("epochs_run", 0) >= resolved.train.num_epochs:
    return report
  return None


def train_or_reuse(config: ml_collections.ConfigDict, workdir: str,
                   dataset: Any) -> dict[str, Any]:
  """``train.train_and_evaluate`` unless ``workdir`` holds this run finished.

  A partial run resumes from its checkpoint; a different config in the workdir
  raises ``ConfigError`` (from the train loop) rather than being overwritten.
  """
  workdir = os.path.abspath(workdir)
  report = finished_report(config, workdir, dataset)
  if report is not None:
    logging.info("Reusing the finished run in %s (test acc %.4f).", workdir,
                 report["test_acc"])
    return report
  return train_lib.train_and_evaluate(config, workdir, dataset=dataset)


def member_results(results: Mapping[str, Any]) -> list[dict[str, Any]]:
  """A K-member run's report as K single-seed reports, one per member.

  Member k trains exactly as a run with seed ``seed + k`` would
  (tests/test_members.py), so its numbers stand in for that run's; the run's
  wall and training seconds are split evenly between the members, and
  ``epochs_run`` is the run's (its last member's stop), not each member's.
  """
  m = results["members"]
  k_all = len(m["seeds"])
  out = []
  for k, seed in enumerate(m["seeds"]):
    r = {"seed": int(seed), "member_of": int(m["seeds"][0]),
         "train_acc": m["train_acc"][k], "val_acc": m["val_acc"][k],
         "test_acc": m["test_acc"][k], "macro_f1": m["test_macro_f1"][k],
         "fate_pair_acc": m["test_fate_pair_acc"][k], "acc_gap": m["acc_gap"][k],
         "best_epoch": m["best_epoch"][k], "epochs_run": results["epochs_run"],
         "class_names": results["class_names"], "num_params": results["num_params"],
         "wall_seconds": results["wall_seconds"] / k_all,
         "train_seconds": results.get("train_seconds", 0.0) / k_all}
    if "train_loss" in m:   # reports written before they were kept per member lack these
      r.update(train_loss=m["train_loss"][k], val_loss=m["val_loss"][k],
               confusion=m["test_confusion"][k])
    out.append(r)
  return out


def consecutive(seeds: Sequence[int]) -> bool:
  """True for seeds s, s + 1, ..., the seeds of one run's members (members.seeds)."""
  return len(seeds) > 1 and list(seeds) == list(range(seeds[0], seeds[0] + len(seeds)))


def run_summary(results: Mapping[str, Any], dataset: Any) -> dict[str, Any]:
  """The numbers a study table needs from one run's results."""
  out = {k: results[k] for k in _RUN_KEYS if k in results}
  if "loss_gap" not in out:   # a report.json written before report.summarise had it
    out["loss_gap"] = monitor.gaps(results["train_acc"], results["val_acc"],
                                   results["train_loss"], results["val_loss"])["loss_gap"]
  out["sequences"] = int(len(dataset.y))
  out["train_sequences"] = int(np.sum(np.asarray(dataset.split) == splits_lib.SPLIT_IDS["train"]))
  out["test_sequences"] = int(results.get(
      "num_test", np.sum(np.asarray(dataset.split) == splits_lib.SPLIT_IDS["test"])))
  out.update(baselines_lib.fate_metrics(results["confusion"], results["class_names"]))
  return out


def each_run(items: Sequence[T], desc: str) -> Iterator[T]:
  """``items`` in order, under one ``progress.bar`` of runs (the package's one bar policy)."""
  with progress.bar(len(items), desc=desc, unit="run", progress=None) as bar:
    for item in items:
      yield item
      bar.update(1)

"""A trained run after the fact: its best weights, predictions, a fresh report, an export.

Each entry point rebuilds the run from the config (``run.open_run``) and
refuses a workdir trained with another fingerprint, so predictions never come
from the weights of another model or dataset.
"""
from __future__ import annotations

import os
import pathlib
import time
from typing import Any

import ml_collections

from cardiac_jax import checkpoint as checkpoint_lib
from cardiac_jax import evaluation
from cardiac_jax import export as export_lib
from cardiac_jax import fingerprint as fingerprint_lib
from cardiac_jax import members as members_lib
from cardiac_jax import outputs
from cardiac_jax import report as report_lib
from cardiac_jax import run as run_lib
from cardiac_jax import steps
from cardiac_jax.data import dataset as dataset_lib
from cardiac_jax.errors import ConfigError

predict = evaluation.predict   # (run, state, x, mask) -> probabilities (N, C)


def restore_best(config: ml_collections.ConfigDict, workdir: str, *,
                 dataset: dataset_lib.SequenceDataset | None = None
                 ) -> tuple[run_lib.Run, steps.TrainState, dict[str, Any]]:
  """The best checkpoint of ``workdir`` (with the member axis) and the run it belongs to.

  The branch gate is chosen on validation exactly as the report chose it
  (``evaluation.select_branch_gate``), so predictions match the report.
  """
  run, workdir = run_lib.open_run(config, workdir, dataset)
  with checkpoint_lib.Checkpointer(workdir, run.config.train.keep_checkpoints) as ckpt:
    state, meta = ckpt.restore_best(run.abstract_state)
  fingerprint_lib.check_workdir(workdir, run.fingerprint, meta)
  state, _ = evaluation.select_branch_gate(run, members_lib.from_storage(state, run.num_members))
  return run, state, meta


def evaluate_and_report(config: ml_collections.ConfigDict, workdir: str, *,
                        dataset: dataset_lib.SequenceDataset | None = None) -> dict[str, Any]:
  """Restores the workdir's best checkpoint and rewrites the report; no training."""
  t_start = time.time()
  run, workdir = run_lib.open_run(config, workdir, dataset)
  with checkpoint_lib.Checkpointer(workdir, run.config.train.keep_checkpoints) as ckpt:
    if ckpt.latest_epoch() is None and ckpt.best_epoch() is None:
      raise checkpoint_lib.CheckpointError(
          f"no checkpoint in {workdir}; train first (--mode=train) with this --workdir.")
    restored = ckpt.restore_latest(run.abstract_state)
    if restored is None:
      raise checkpoint_lib.CheckpointError(f"no readable checkpoint in {workdir}.")
    _, meta = restored
    fingerprint_lib.check_workdir(workdir, run.fingerprint, meta)
    es = members_lib.stopping(run.config, meta["early_stopping"])
    records = report_lib.truncate_metrics(
        os.path.join(workdir, report_lib.METRICS_FILE), int(meta["epoch"]))
    return evaluation.report_best(run, workdir, ckpt, records, es, t_start,
                                  on_best=outputs.finish_run)


def export_workdir(workdir: str | os.PathLike) -> pathlib.Path:
  """Exports an older workdir (trained before runs exported themselves) from its
  config.json and the cached preprocessor."""
  payload = fingerprint_lib.read_config_file(str(workdir))
  if payload is None:
    raise ConfigError(f"no {fingerprint_lib.CONFIG_FILE} in {workdir}; pass the --workdir of "
                      "a trained run")
  config = ml_collections.ConfigDict(payload["config"])
  for name in ("classes", "drop_labels", "fate_classes", "time_order"):
    if isinstance(config.data.get(name), list):
      config.data[name] = tuple(config.data[name])
  run, state, _ = restore_best(config, str(workdir))
  return export_lib.export_model(run, state, workdir)

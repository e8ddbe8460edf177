"""The train loop: epochs, records, checkpoints, resumption, then the report.

Shape of one epoch: the host computes each member's class-stratified batch
order (from seed and epoch, so a resumed run sees the same data), then ONE
jitted call (``steps.train_epoch`` over the member axis) scans the optimizer
steps over the device-resident dataset. The host fetches the epoch's sums and
the eval-mode passes over the training and validation splits once, writes one
metrics.jsonl line, updates early stopping and saves the checkpoint.

Around it: the pure steps in ``steps``, the run's construction in ``run``,
batch orders and eval chunks in ``input_pipeline``, eval passes and the final
report in ``evaluation``, restore/predict in ``inference``, device placement
in ``parallel``, resume checks in ``fingerprint``, the member axis in
``members``.
"""
from __future__ import annotations

import os
import time
from typing import Any

from absl import logging
import jax
import ml_collections
import numpy as np
import optax

from cardiac_jax import checkpoint as checkpoint_lib
from cardiac_jax import evaluation
from cardiac_jax import fingerprint as fingerprint_lib
from cardiac_jax import input_pipeline
from cardiac_jax import members as members_lib
from cardiac_jax import models
from cardiac_jax import outputs
from cardiac_jax import monitor
from cardiac_jax import parallel
from cardiac_jax import progress as progress_lib
from cardiac_jax import report as report_lib
from cardiac_jax import run as run_lib
from cardiac_jax import steps
from cardiac_jax.data import dataset as dataset_lib

# Each member's parameter norm for the epoch's record, in one compiled program: run
# eagerly, vmap dispatches (and compiles) every op of every leaf on its own, about
# 2.5 s of a process's first epoch.
_param_norms = jax.jit(jax.vmap(optax.tree.norm))


def _run_epoch(run: run_lib.Run, state: steps.TrainState,
               epoch: int) -> tuple[steps.TrainState, dict[str, Any]]:
  """Trains one epoch (one jitted call) and evaluates train and val, with ONE host fetch.

  Returns the state and the fetched {"train_sums", "train_eval", "val_eval", "step",
  "param_norm"}, each with the member axis.
  """
  y_train = run.dataset.y[run.train_pos]
  orders = [run.train_pos[input_pipeline.stratified_order(
      y_train, run.config.train.batch_size, seed, epoch)].astype(np.int32)
            for seed in members_lib.seeds(run.config)]
  idx = parallel.place_batches(np.stack(orders), batch_axis=2)
  state, sums = run.fns.train_epoch(state, run.data, idx, run.train_rng)
  train_total, val_total = (
      evaluation.eval_sums(run.fns.eval_chunk, state, run.data, run.chunks[name])[0]
      for name in ("train", "val"))
  fetched = parallel.fetch({"train_sums": sums, "train_eval": train_total,
                            "val_eval": val_total, "step": state.step,
                            "param_norm": _param_norms(state.params)})
  return state, fetched


def _member_record(run: run_lib.Run, fetched: dict[str, Any], epoch: int,
                   seconds: float) -> dict[str, Any]:
  """One member's metrics.jsonl record from its fetched values."""
  sums, step = fetched["train_sums"], int(fetched["step"])
  train_eval = evaluation.summarise_eval(fetched["train_eval"])
  val_eval = evaluation.summarise_eval(fetched["val_eval"])
  monitor.check_finite(epoch, step, sums, train_eval, val_eval)
  return monitor.epoch_record(
      epoch=epoch, step=step, sums=sums, steps=run.steps_per_epoch,
      param_norm=float(fetched["param_norm"]), train_eval=train_eval,
      val_eval=val_eval, seconds=seconds, monitor_cfg=run.config.monitor)


def _record_epoch(run: run_lib.Run, fetched: dict[str, Any], epoch: int, seconds: float,
                  es: members_lib.MemberStopping
                  ) -> tuple[dict[str, Any], members_lib.MemberStopping]:
  """The epoch's record and the early-stopping state after it.

  Each member still training gets its own record and stopping update; the line
  written is ``members.epoch_record`` of them.
  """
  metric = run.config.train.early_stopping_metric
  per = [_member_record(run, members_lib.take(fetched, k), epoch, seconds) if live else None
         for k, live in enumerate(es.active)]
  es = es.update([float("nan") if r is None else r[metric] for r in per])
  for r, member in zip(per, es.members):
    if r is not None:
      r["best_epoch"] = member.best_epoch
  record = members_lib.epoch_record(per, run.config.monitor)
  record["best_epoch"] = es.best_epoch
  return record, es


def _init_or_resume(run: run_lib.Run, workdir: str, ckpt: checkpoint_lib.Checkpointer
                    ) -> tuple[steps.TrainState, int, members_lib.MemberStopping,
                               steps.TrainState | None]:
  """A fresh state at epoch 0, or the newest checkpoint's state, epoch and stopping state.

  The fourth value is the best-so-far state that the next improvements merge
  into (each member's own best weights; None for a fresh start).
  """
  k = run.num_members
  restored = ckpt.restore_latest(run.abstract_state)
  if restored is None:
    state = parallel.place(run.fns.init(run.init_rng, run.data["x"][:1],
                                        run.data["mask"][:1]))
    return state, 0, members_lib.stopping(run.config), None
  state, meta = restored
  fingerprint_lib.check_workdir(workdir, run.fingerprint, meta)
  logging.info("Resuming %s from epoch %d (step %d).", workdir, int(meta["epoch"]),
               int(np.max(parallel.fetch(state.step))))
  es = members_lib.stopping(run.config, meta["early_stopping"])
  best = None
  if ckpt.best_epoch() is not None:
    best = parallel.place(members_lib.from_storage(ckpt.restore_best(run.abstract_state)[0], k))
  return parallel.place(members_lib.from_storage(state, k)), int(meta["epoch"]), es, best


def _checkpoint_meta(run: run_lib.Run, epoch: int,
                     es: members_lib.MemberStopping) -> dict[str, Any]:
  return {"epoch": epoch, "early_stopping": es.to_dict(), "best_value": es.best_value,
          "best_epoch": es.best_epoch, "fingerprint": run.fingerprint,
          "data_key": run.fingerprint["data.cache_key"], "seed": run.config.seed}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       dataset: dataset_lib.SequenceDataset | None = None) -> dict[str, Any]:
  """Trains (resuming from ``workdir`` if it holds a checkpoint), then tests and reports.

  Args:
    config: a config from ``config_lib``; None sizes are filled by ``scaling``.
    workdir: run directory (metrics.jsonl, config.json, checkpoints/, report.*,
      plots/, model/).
    dataset: a ``SequenceDataset``; built from ``config.data`` when None.

  Returns:
    The final metrics (see ``report.write_report``): test_acc, macro_f1,
    best_epoch, epochs_run, early_stopped, acc_gap, ...

  Raises:
    ConfigError: the workdir holds a run with an incompatible config.
    FloatingPointError: the loss became NaN/Inf (no checkpoint of it is saved).
  """
  t_start = time.time()
  run, workdir = run_lib.open_run(config, workdir, dataset)
  os.makedirs(workdir, exist_ok=True)
  config = run.config
  metrics_path = os.path.join(workdir, report_lib.METRICS_FILE)

  with checkpoint_lib.Checkpointer(workdir, config.train.keep_checkpoints) as ckpt:
    state, start, es, best = _init_or_resume(run, workdir, ckpt)
    fingerprint_lib.write_config_file(workdir, config, run.fingerprint)
    records = report_lib.truncate_metrics(metrics_path, start)
    logging.info("%d training sequences, %d steps/epoch, %d epochs, %d parameters x %d "
                 "member(s).", len(run.train_pos), run.steps_per_epoch,
                 config.train.num_epochs, models.count_params(state.params) // run.num_members,
                 run.num_members)

    bar = progress_lib.bar(config.train.num_epochs, initial=start, desc="train", unit="epoch",
                           progress=None if config.train.progress_bar else False)
    try:
      for epoch in range(start + 1, config.train.num_epochs + 1):
        if es.should_stop:
          break
        t0 = time.time()
        state, fetched = _run_epoch(run, state, epoch)
        record, es = _record_epoch(run, fetched, epoch, time.time() - t0, es)
        report_lib.append_metrics(metrics_path, record)
        records.append(record)
        improved = bool(np.any(es.improved))
        if improved:   # each member's own best weights
          best = members_lib.merge_best(state if best is None else best, state, es.improved)
        ckpt.save(epoch, members_lib.to_storage(state), _checkpoint_meta(run, epoch, es),
                  best=improved, best_state=None if best is None else members_lib.to_storage(best))
        monitor.log_epoch(record, config)
        bar.update(1)
        bar.set_postfix(val_acc=f"{record['val_acc']:.3f}", gap=f"{record['acc_gap']:+.3f}")
    except KeyboardInterrupt:
      logging.warning("Interrupted; waiting for checkpoint writes. Rerun with the same "
                      "--workdir to resume from the last completed epoch (%s).",
                      ckpt.latest_epoch())
      ckpt.wait()
      raise
    finally:
      bar.close()
    ckpt.wait()
    return evaluation.report_best(run, workdir, ckpt, records, es, t_start,
                                  on_best=outputs.finish_run)

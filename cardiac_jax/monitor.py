"""Overfitting levels from the train/validation gap, and early-stopping state.

Both are plain host-side Python: they run once per epoch on numbers already
fetched from the device. ``EarlyStopping`` is an immutable value that
round-trips through JSON so it can live in checkpoint metadata and a resumed
run continues the same patience count.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

from absl import logging
import ml_collections

OK, MODERATE, SIGNIFICANT = "ok", "moderate", "significant"
MODES = ("max", "min")
# The metric each early-stopping choice watches, and whether larger is better.
METRIC_MODES = {"val_acc": "max", "val_loss": "min"}


def overfitting_level(acc_gap: float, moderate: float, significant: float) -> str:
  """Classifies a train-minus-validation accuracy gap.

  Strictly greater than a threshold crosses it, so a gap exactly at 0.08 is
  still "ok". A NaN gap (nothing measured) is "ok": there is no evidence.
  """
  if moderate > significant:
    raise ValueError(
        f"monitor.moderate_gap={moderate} is above monitor.significant_gap={significant}; "
        "the moderate threshold must be the lower one.")
  if acc_gap > significant:
    return SIGNIFICANT
  if acc_gap > moderate:
    return MODERATE
  return OK


def gaps(train_acc: float, val_acc: float, train_loss: float,
         val_loss: float) -> dict[str, float]:
  """The overfitting gaps, signed so that positive means "train looks better".

  Returns:
    {"acc_gap": train_acc - val_acc, "loss_gap": val_loss - train_loss}.
  """
  return {"acc_gap": float(train_acc) - float(val_acc),
          "loss_gap": float(val_loss) - float(train_loss)}


@dataclasses.dataclass(frozen=True)
class EarlyStopping:
  """Patience-based early stopping on one validation metric.

  Attributes:
    patience: epochs without improvement after which to stop.
    mode: "max" (accuracy) or "min" (loss).
    min_delta: an improvement must beat the best by more than this.
    best_value: best metric so far (None before the first update).
    best_epoch: 1-based epoch of ``best_value`` (0 before the first update).
    bad_epochs: consecutive epochs without improvement.
    epoch: epochs seen so far (the 1-based index of the last update).
    improved: whether the last update set a new best (drives best checkpoints).
  """
  patience: int
  mode: str = "max"
  min_delta: float = 0.0
  best_value: float | None = None
  best_epoch: int = 0
  bad_epochs: int = 0
  epoch: int = 0
  improved: bool = False

  def __post_init__(self):
    if self.mode not in MODES:
      raise ValueError(f"early-stopping mode {self.mode!r} is unknown; choose one of {MODES}.")
    if self.patience < 1:
      raise ValueError(
          f"train.early_stopping_patience must be >= 1, got {self.patience}.")

  @classmethod
  def for_metric(cls, metric: str, patience: int) -> "EarlyStopping":
    """Early stopping on ``metric`` ("val_acc" or "val_loss") with its natural direction."""
    if metric not in METRIC_MODES:
      raise ValueError(
          f"train.early_stopping_metric={metric!r} is unknown; choose one of "
          f"{sorted(METRIC_MODES)}.")
    return cls(patience=int(patience), mode=METRIC_MODES[metric])

  def is_better(self, value: float) -> bool:
    """Whether ``value`` beats the best so far (NaN never does)."""
    if value is None or math.isnan(value):
      return False
    if self.best_value is None:
      return True
    if self.mode == "max":
      return value > self.best_value + self.min_delta
    return value < self.best_value - self.min_delta

  def update(self, value: float) -> "EarlyStopping":
    """Returns the state after one more epoch whose metric is ``value``."""
    epoch = self.epoch + 1
    if self.is_better(value):
      return dataclasses.replace(self, best_value=float(value), best_epoch=epoch,
                                 bad_epochs=0, epoch=epoch, improved=True)
    return dataclasses.replace(self, bad_epochs=self.bad_epochs + 1, epoch=epoch,
                               improved=False)

  @property
  def should_stop(self) -> bool:
    return self.bad_epochs >= self.patience

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "EarlyStopping":
    fields = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in fields})


# ---------------------------------------------------------------- one epoch's record


def check_finite(epoch: int, step: int, sums: dict[str, Any], train_eval: dict[str, Any],
                 val_eval: dict[str, Any]) -> None:
  """Raises FloatingPointError naming the step when a loss of the epoch is NaN/Inf.

  ``sums["first_bad_step"]`` is the first train step with a non-finite loss
  (-1 if none); the eval losses are checked at the epoch's last step.
  """
  bad = [(int(sums["first_bad_step"]), "training loss")] if sums["first_bad_step"] >= 0 else []
  bad += [(step - 1, f"{name} loss (eval mode)")
          for name, ev in (("train", train_eval), ("validation", val_eval))
          if not math.isfinite(ev["loss"])]
  if bad:
    at, what = bad[0]
    raise FloatingPointError(
        f"non-finite {what} at epoch {epoch}, optimizer step {at}; stopped without saving "
        "this epoch. Try a lower --config.train.learning_rate, check the input features "
        "for NaN/Inf, and use --config.model.dtype=float32.")


def epoch_record(*, epoch: int, step: int, sums: dict[str, Any], steps: int,
                 param_norm: float, train_eval: dict[str, Any], val_eval: dict[str, Any],
                 seconds: float, monitor_cfg: ml_collections.ConfigDict) -> dict[str, Any]:
  """One line of ``metrics.jsonl`` from the epoch's fetched sums and eval results.

  Health (big_vision, scenic): ``grad_norm`` (before clipping) and
  ``update_norm`` are means over the epoch's ``steps``; ``param_norm`` is the
  global norm of the parameters at the epoch's end.
  """
  count = max(float(sums["count"]), 1.0)
  g = gaps(train_eval["acc"], val_eval["acc"], train_eval["loss"], val_eval["loss"])
  return {
      "epoch": epoch,
      "step": step,
      "lr": float(sums["lr"]),
      "label_smoothing": float(sums["label_smoothing"]),
      "weight_decay": float(sums["weight_decay"]),
      "train_loss": train_eval["loss"],
      "train_acc": train_eval["acc"],
      "train_loss_running": float(sums["loss"]) / count,
      "train_acc_running": float(sums["correct"]) / count,
      "val_loss": val_eval["loss"],
      "val_acc": val_eval["acc"],
      **g,
      "overfitting": overfitting_level(g["acc_gap"], monitor_cfg.moderate_gap,
                                       monitor_cfg.significant_gap),
      "grad_norm": float(sums["grad_norm"]) / max(steps, 1),
      "update_norm": float(sums["update_norm"]) / max(steps, 1),
      "param_norm": float(param_norm),
      "seconds": seconds,
  }


def log_epoch(r: dict[str, Any], config: ml_collections.ConfigDict) -> None:
  """One log line per epoch; a warning (with the threshold) when it overfits."""
  msg = ("epoch %d/%d step %d: train loss %.4f acc %.4f | val loss %.4f acc %.4f | "
         "gap %+.4f (%s) | lr %.2e ls %.3f wd %.3f | |g| %.3f | %.1fs")
  args = (r["epoch"], config.train.num_epochs, r["step"], r["train_loss"], r["train_acc"],
          r["val_loss"], r["val_acc"], r["acc_gap"], r["overfitting"], r["lr"],
          r["label_smoothing"], r["weight_decay"], r["grad_norm"], r["seconds"])
  if r["overfitting"] == OK:
    logging.info(msg, *args)
  else:
    logging.warning(msg + " -- %s overfitting: train accuracy exceeds validation by more "
                    "than %.2f", *args, r["overfitting"],
                    config.monitor.moderate_gap if r["overfitting"] == MODERATE
                    else config.monitor.significant_gap)

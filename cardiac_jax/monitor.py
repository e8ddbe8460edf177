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

"""Overfitting levels and early-stopping state."""
import json
import math

import pytest

from cardiac_jax import monitor


@pytest.mark.parametrize("gap, level", [
    (-0.2, "ok"), (0.0, "ok"), (0.08, "ok"), (0.0801, "moderate"), (0.15, "moderate"),
    (0.1501, "significant"), (0.9, "significant"), (math.nan, "ok")])
def test_overfitting_level_thresholds_are_strict(gap, level):
  assert monitor.overfitting_level(gap, 0.08, 0.15) == level


def test_overfitting_level_rejects_swapped_thresholds():
  with pytest.raises(ValueError, match="moderate"):
    monitor.overfitting_level(0.1, 0.2, 0.1)


def test_early_stopping_max_counts_patience_from_the_best():
  es = monitor.EarlyStopping.for_metric("val_acc", patience=2)
  es = es.update(0.5)
  assert (es.best_epoch, es.bad_epochs, es.improved) == (1, 0, True)
  es = es.update(0.5)                          # a tie is not an improvement
  assert (es.best_epoch, es.bad_epochs, es.improved, es.should_stop) == (1, 1, False, False)
  es = es.update(0.6)
  assert (es.best_value, es.best_epoch, es.bad_epochs) == (0.6, 3, 0)
  es = es.update(0.4).update(math.nan)         # NaN never improves
  assert es.should_stop and es.best_epoch == 3 and es.epoch == 5


def test_early_stopping_min_mode_for_loss():
  es = monitor.EarlyStopping.for_metric("val_loss", patience=1)
  assert es.mode == "min"
  es = es.update(1.0).update(0.9)
  assert es.best_epoch == 2 and not es.should_stop
  es = es.update(0.95)
  assert es.should_stop and es.best_value == 0.9


def test_early_stopping_round_trips_through_json():
  es = monitor.EarlyStopping.for_metric("val_acc", patience=3).update(0.7).update(0.6)
  back = monitor.EarlyStopping.from_dict(json.loads(json.dumps(es.to_dict())))
  assert back == es
  assert back.update(0.65) == es.update(0.65)


def test_early_stopping_rejects_bad_settings():
  with pytest.raises(ValueError, match="early_stopping_metric"):
    monitor.EarlyStopping.for_metric("val_f1", patience=3)
  with pytest.raises(ValueError, match="patience"):
    monitor.EarlyStopping(patience=0)


def test_gaps_signs_train_better_as_positive():
  g = monitor.gaps(train_acc=0.9, val_acc=0.7, train_loss=0.3, val_loss=0.8)
  assert g == pytest.approx({"acc_gap": 0.2, "loss_gap": 0.5})
  assert monitor.gaps(0.5, 0.6, 1.0, 0.9) == pytest.approx({"acc_gap": -0.1, "loss_gap": -0.1})

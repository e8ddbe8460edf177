"""Two-class accuracy on a fate branch (report.pair_accuracy), for the model and baselines."""
import numpy as np
import pytest

from cardiac_jax import baselines, config_lib, report

NAMES = ("A", "CM", "CF")


def test_pair_accuracy_ignores_other_classes_and_other_rows():
  y = np.array([1, 1, 2, 2, 0])
  probs = np.array([[0.9, 0.06, 0.04],    # CM row: argmax is A, but CM > CF -> right
                    [0.1, 0.3, 0.6],      # CM row: CF > CM -> wrong
                    [0.8, 0.05, 0.15],    # CF row: right
                    [0.0, 0.6, 0.4],      # CF row: wrong
                    [0.0, 0.0, 1.0]])     # class A: not counted
  assert report.pair_accuracy(y, probs, NAMES, ("CM", "CF")) == pytest.approx(0.5)
  assert report.pair_accuracy(y, probs, NAMES, ("CF", "CM")) == pytest.approx(0.5)
  assert report.pair_accuracy(y, probs, NAMES, ("CM", "X")) is None
  assert report.pair_accuracy(np.array([1, 0]), probs[:2], NAMES, ("CM", "CF")) is None


def test_fate_pair_comes_from_the_config():
  config = config_lib.base_config()
  assert report.fate_pair(config) == ("CM", "CF")
  config.data.fate_classes = ("fateA", "fateB")
  assert report.fate_pair(config) == ("fateA", "fateB")


class _Data:
  def __init__(self, seed=0, n=300, length=4):
    rng = np.random.default_rng(seed)
    self.y = rng.integers(0, 3, n).astype(np.int32)
    centres = np.array([[0, 0], [2, 0], [2, 1.0]], np.float32)
    self.x = (centres[self.y][:, None, :] + rng.normal(size=(n, length, 2))).astype(np.float32)
    self.x = np.concatenate([self.x, np.zeros((n, length, 2), np.float32)], axis=-1)
    self.mask = np.ones((n, length), np.float32)
    self.split = np.repeat(np.arange(3, dtype=np.int8), n // 3)
    self.class_names = NAMES
    self.meta = {"n_pcs": 2}


def test_baselines_report_the_pair_accuracy_from_their_probabilities():
  ds = _Data()
  r = baselines.run_baselines(ds, names=("majority", "logreg_last", "hgb_summary"))
  for name in ("logreg_last", "hgb_summary"):
    acc = r[name]["fate_pair_acc"]
    assert acc is not None and 0.5 < acc <= 1.0
  # The majority class predicts one fixed class of the pair for every row.
  test = ds.split == 2
  counts = np.bincount(ds.y[test], minlength=3)
  expected = max(counts[1], counts[2]) / (counts[1] + counts[2])
  train_counts = np.bincount(ds.y[ds.split == 0], minlength=3)
  picked = 1 if train_counts[1] >= train_counts[2] else 2
  assert r["majority"]["fate_pair_acc"] == pytest.approx(counts[picked] / (counts[1] + counts[2]))
  assert r["majority"]["fate_pair_acc"] <= expected + 1e-9
  r2 = baselines.run_baselines(ds, names=("logreg_last",), fate_classes=("A", "CM"))
  assert r2["logreg_last"]["fate_pair_acc"] != r["logreg_last"]["fate_pair_acc"]

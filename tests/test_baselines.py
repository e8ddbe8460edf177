"""Baselines on synthetic sequence datasets whose answer is known by construction."""
import dataclasses

import numpy as np
import pytest

from cardiac_jax import baselines
from cardiac_jax.data import sequences
from cardiac_jax.data.dataset import SequenceDataset

CLASSES = ("IPSC", "MES", "CMES", "PROG", "CM", "CF")


def _dataset(x, y, seed=0, fractions=(0.6, 0.2, 0.2), mask=None, class_names=("A", "B")):
  n, length, _ = x.shape
  rng = np.random.default_rng(seed)
  split = rng.choice(3, size=n, p=fractions).astype(np.int8)
  return SequenceDataset(
      x=x.astype(np.float32), y=np.asarray(y, np.int32),
      mask=np.ones((n, length), np.float32) if mask is None else mask.astype(np.float32),
      split=split, modality=np.zeros(n, np.int8),
      source_index=np.zeros((n, length), np.int64), class_names=tuple(class_names), meta={})


def _order_only(n=600, length=12, n_feat=4, seed=0):
  """Label = direction in time: the SAME multiset of values, ascending (0) or descending (1).

  Order-blind pooled features (mean over steps) carry nothing; the last step is the
  max (class 0) or the min (class 1) of the sequence, so a per-cell classifier on
  it is nearly perfect.
  """
  rng = np.random.default_rng(seed)
  values = np.sort(rng.standard_normal((n, length, n_feat)), axis=1)
  y = rng.integers(0, 2, n)
  x = np.where(y[:, None, None] == 0, values, values[:, ::-1])
  return _dataset(x, y, seed)


def test_order_only_label_pooled_chance_last_step_informative():
  r = baselines.run_baselines(_order_only())
  assert r["logreg_last"]["test_acc"] > 0.9
  assert r["hgb_summary"]["test_acc"] > 0.9        # slope / first / last see the order
  assert abs(r["logreg_mean"]["test_acc"] - 0.5) < 0.15
  assert abs(r["knn_mean"]["test_acc"] - 0.5) < 0.15
  for res in r.values():
    for s in ("train", "val", "test"):
      assert 0.0 <= res[f"{s}_acc"] <= 1.0 and 0.0 <= res[f"{s}_macro_f1"] <= 1.0


def test_label_in_mean_only_pooled_beats_last_step():
  """Each step is class mean + heavy noise: pooling averages the noise away."""
  rng = np.random.default_rng(1)
  n, length = 600, 30
  y = rng.integers(0, 2, n)
  x = (y[:, None, None] * 1.0 + 2.0 * rng.standard_normal((n, length, 3)))
  r = baselines.run_baselines(_dataset(x, y, 1), names=("logreg_last", "logreg_mean"))
  assert r["logreg_mean"]["test_acc"] > 0.9
  assert r["logreg_last"]["test_acc"] < 0.75
  assert r["logreg_mean"]["selected"]["C"] in baselines.LOGREG_C


def _paced(y_sets_day: bool, n=600, length=12, f=0.25, seed=6):
  """Walk-like sequences (2 PCs, day, modality) with only the first ceil(f * L) steps visible.

  The anchor day T sets the pacing of the steps' days (``step_times``). With
  ``y_sets_day`` the label decides T (2 or 6) and the PCs are noise; otherwise T
  is random and the label is in the PCs only.
  """
  rng = np.random.default_rng(seed)
  y = rng.integers(0, 2, n)
  t = np.where(y == 1, 6, 2) if y_sets_day else rng.choice([2, 6], n)
  x = np.zeros((n, length, 4), np.float32)
  x[..., :2] = rng.standard_normal((n, length, 2))
  if not y_sets_day:
    x[..., :2] += 3.0 * y[:, None, None]
  x[..., 2] = sequences.step_times(t, length) / 6.0
  x, mask = sequences.apply_horizon(x, np.ones((n, length), np.float32), f)
  ds = _dataset(x, y, seed, mask=mask)
  return dataclasses.replace(ds, meta={"n_pcs": 2})


def test_day_only_is_at_chance_without_day_information_and_not_with_it():
  blind = baselines.run_baselines(_paced(False), names=("day_only", "logreg_mean"))
  assert blind["logreg_mean"]["test_acc"] > 0.9          # the label is in the PCs ...
  assert abs(blind["day_only"]["test_acc"] - 0.5) < 0.12   # ... which day_only never sees
  paced = baselines.run_baselines(_paced(True), names=("day_only",))["day_only"]
  assert paced["test_acc"] > 0.9                        # 3 of 12 steps: pacing gives T away


def _days_then_last(label_in_days: bool, n=600, length=10, seed=8):
  """2 PCs, day, modality; the last step always on day 0.5. The label is either in the
  earlier steps' days (0.2 vs 0.4) or in the last step's PCs, never both."""
  rng = np.random.default_rng(seed)
  y = rng.integers(0, 2, n)
  x = np.zeros((n, length, 4), np.float32)
  x[..., :2] = rng.standard_normal((n, length, 2))
  if label_in_days:
    x[:, :-1, 2] = np.where(y == 1, 0.2, 0.4)[:, None]
  else:
    x[:, :-1, 2] = rng.choice([0.2, 0.4], n)[:, None]
    x[:, -1, :2] += 3.0 * y[:, None]
  x[:, -1, 2] = 0.5
  return dataclasses.replace(_dataset(x, y, seed), meta={"n_pcs": 2})


def test_last_day_sees_both_the_last_step_and_the_prefix_days():
  names = ("logreg_last", "day_only", "logreg_last_day")
  in_days = baselines.run_baselines(_days_then_last(True), names=names)
  assert abs(in_days["logreg_last"]["test_acc"] - 0.5) < 0.12   # the last step knows nothing
  assert in_days["day_only"]["test_acc"] > 0.95
  assert in_days["logreg_last_day"]["test_acc"] > 0.95
  in_last = baselines.run_baselines(_days_then_last(False), names=names)
  assert abs(in_last["day_only"]["test_acc"] - 0.5) < 0.12
  assert in_last["logreg_last"]["test_acc"] > 0.95
  assert in_last["logreg_last_day"]["test_acc"] > 0.95
  # The fitted probabilities (for stacking checks) use the same features.
  _, probs = baselines.baseline_probs(_days_then_last(True), "logreg_last_day")
  assert probs["test"].shape[1] == 2


def test_day_features_ignore_hidden_steps():
  x = np.zeros((2, 4, 3), np.float32)
  x[..., 1] = [[0.0, 0.5, 0.5, 1.0], [0.5, 0.5, 9.0, 9.0]]
  mask = np.array([[1, 1, 1, 1], [1, 1, 0, 0]], np.float32)
  feats = baselines.day_features(x, mask, 1)
  np.testing.assert_allclose(feats[:, :4], [[0, 0.5, 0.5, 1], [0.5, 0.5, -1, -1]])
  np.testing.assert_allclose(feats[:, 4:], [[0.25, 0.5, 0.25], [0, 1, 0]])   # days 0, 0.5, 1


def test_majority_is_the_majority_fraction():
  rng = np.random.default_rng(2)
  y = rng.choice(3, size=500, p=(0.2, 0.7, 0.1))
  ds = _dataset(rng.standard_normal((500, 5, 2)), y, 2, class_names=("a", "b", "c"))
  r = baselines.run_baselines(ds, names=("majority",))["majority"]
  top = np.bincount(ds.y[ds.split == 0]).argmax()
  assert r["selected"] == {"class": ("a", "b", "c")[top]}
  for s, sid in (("train", 0), ("val", 1), ("test", 2)):
    assert r[f"{s}_acc"] == pytest.approx(np.mean(ds.y[ds.split == sid] == top))


def test_pooled_features_ignore_hidden_steps_and_slope_is_exact():
  rng = np.random.default_rng(3)
  n, length, f = 5, 9, 3
  t = np.arange(length) / (length - 1)
  a, b = rng.standard_normal((n, 1, f)), rng.standard_normal((n, 1, f))
  x = (a + b * t[None, :, None]).astype(np.float32)
  mask = np.ones((n, length), np.float32)
  mask[:, 6:] = 0
  mask[0, 1:] = 0                                   # one visible step: slope 0, std 0
  garbage = np.where(mask[..., None] > 0, x, 1e6).astype(np.float32)
  p, q = baselines.pooled_features(x, mask), baselines.pooled_features(garbage, mask)
  for k in p:
    np.testing.assert_allclose(p[k], q[k], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(p["slope"][1:], b[1:, 0], rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(p["last"][1:], x[1:, 5], rtol=1e-6)
  np.testing.assert_allclose(p["first"], x[:, 0], rtol=1e-6)
  np.testing.assert_allclose(p["slope"][0], 0.0, atol=1e-6)
  np.testing.assert_allclose(p["std"][0], 0.0, atol=1e-6)
  np.testing.assert_allclose(p["mean"][1:], x[1:, :6].mean(axis=1), rtol=1e-5, atol=1e-6)


def test_no_visible_step_is_an_error():
  with pytest.raises(ValueError, match="visible"):
    baselines.pooled_features(np.zeros((2, 3, 1)), np.array([[1, 0, 0], [0, 0, 0]]))


def test_standardisation_uses_train_rows_only():
  """Shifting val/test features by a constant must shift their standardised values,

  which would not happen if the scaler saw val/test (their mean would absorb it).
  """
  feats = np.random.default_rng(4).standard_normal((100, 3))
  split = np.repeat([0, 1, 2], [60, 20, 20])
  rows = {s: np.flatnonzero(split == i) for i, s in enumerate(baselines.SPLITS)}
  shifted = feats.copy()
  shifted[60:] += 50.0
  a = baselines._standardise(feats, rows)    # pylint: disable=protected-access
  b = baselines._standardise(shifted, rows)  # pylint: disable=protected-access
  np.testing.assert_allclose(a["train"], b["train"], rtol=1e-5)
  assert np.all(b["test"] - a["test"] > 10.0)
  np.testing.assert_allclose(a["train"].mean(axis=0), 0.0, atol=1e-5)


def test_fate_metrics_cm_vs_cf():
  conf = np.zeros((6, 6), int)
  cm, cf, prog = CLASSES.index("CM"), CLASSES.index("CF"), CLASSES.index("PROG")
  conf[cm, cm], conf[cm, cf] = 8, 2         # 10 true CM, 8 right
  conf[cf, cf], conf[cf, prog] = 3, 7       # 10 true CF, 3 right (PROG counts as wrong)
  conf[prog, cm] = 5                        # a wrong CM prediction of a PROG: not counted
  m = baselines.fate_metrics(conf, CLASSES)
  assert m["cm_cf_acc"] == pytest.approx(11 / 20)
  assert m["per_class_acc"]["CM"] == pytest.approx(0.8)
  assert m["per_class_acc"]["PROG"] == 0.0
  assert m["per_class_acc"]["IPSC"] is None
  assert baselines.fate_metrics(np.eye(2), ("A", "B"))["cm_cf_acc"] is None


def test_cm_cf_accuracy_of_a_fitted_baseline_matches_definition():
  ds = _order_only(seed=5)
  ds6 = _dataset(ds.x, np.where(ds.y == 0, 4, 5), 5, class_names=CLASSES)  # CM / CF
  r = baselines.run_baselines(ds6, names=("logreg_last",))["logreg_last"]
  assert r["cm_cf_acc"] == pytest.approx(r["test_acc"])
  assert set(r["per_class_acc"]) == set(CLASSES)


def test_best_on_val_skips_majority_and_unknown_names_raise():
  res = {"majority": {"val_acc": 0.9}, "a": {"val_acc": 0.5}, "b": {"val_acc": 0.7}}
  assert baselines.best_on_val(res) == "b"
  with pytest.raises(ValueError, match="unknown baselines"):
    baselines.run_baselines(_order_only(n=60), names=("ridge",))


def test_baseline_probs_are_the_fitted_baselines():
  """Same fit as run_baselines: its val / test argmax give the reported accuracies."""
  ds = _order_only()
  reported = baselines.run_baselines(ds, names=("logreg_last", "hgb_summary"))
  y, split = np.asarray(ds.y), np.asarray(ds.split)
  for name in ("logreg_last", "hgb_summary"):
    selected, probs = baselines.baseline_probs(ds, name)
    assert selected == reported[name]["selected"]
    for s, sid in (("val", 1), ("test", 2)):
      np.testing.assert_allclose(probs[s].sum(axis=1), 1.0, rtol=1e-5)
      acc = float(np.mean(probs[s].argmax(axis=1) == y[split == sid]))
      assert acc == pytest.approx(reported[name][f"{s}_acc"])
  with pytest.raises(ValueError, match="no probabilities"):
    baselines.baseline_probs(ds, "majority")

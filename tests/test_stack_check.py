"""experiments/stack_check.py: the sequence branch weighted on validation over a baseline."""
import numpy as np

from cardiac_jax.studies import stack_check as stack


def _logits(y, n_classes, strength, rng):
  z = rng.normal(size=(len(y), n_classes))
  z[np.arange(len(y)), y] += strength
  return z


def test_a_branch_without_information_gets_weight_zero_and_is_the_baseline():
  rng = np.random.default_rng(0)
  y = {s: rng.integers(0, 3, 400) for s in stack.SPLITS}
  base = {s: _logits(y[s], 3, 1.0, rng) for s in stack.SPLITS}
  zero = {s: np.zeros_like(base[s]) for s in stack.SPLITS}
  out = stack.stacked(base, zero, y)
  assert out["gate"] == 0.0                      # every weight ties: the smallest wins
  for s in stack.SPLITS:
    assert out[s] == np.mean(base[s].argmax(1) == y[s])


def test_an_informative_branch_is_weighted_by_validation_only():
  rng = np.random.default_rng(1)
  y = {s: rng.integers(0, 3, 400) for s in stack.SPLITS}
  base = {s: _logits(y[s], 3, 0.5, rng) for s in stack.SPLITS}
  branch = {s: _logits(y[s], 3, 2.0, rng) for s in stack.SPLITS}
  out = stack.stacked(base, branch, y)
  assert out["gate"] > 0.0 and out["val"] > np.mean(base["val"].argmax(1) == y["val"])
  assert out["val"] == max(out["val_grid"])
  # Test labels never choose: scrambling them leaves the chosen weight unchanged.
  scrambled = dict(y, test=rng.permutation(y["test"]))
  assert stack.stacked(base, branch, scrambled)["gate"] == out["gate"]

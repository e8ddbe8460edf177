"""train.num_members = K: K models in one compiled epoch, each the run of its own seed."""
import json
import os

import jax
import numpy as np
import pytest

from cardiac_jax import export as export_lib
from cardiac_jax import inference
from cardiac_jax import members as members_lib
from cardiac_jax import monitor
from cardiac_jax import report as report_lib
from cardiac_jax import train
from cardiac_jax.errors import ConfigError
from test_train import synthetic_dataset, tiny_config, train_until_interrupted

EPOCHS = 3


@pytest.fixture(scope="module")
def dataset():
  return synthetic_dataset()


def _config(k: int = 1, seed: int = 0, **overrides):
  config = tiny_config(num_epochs=EPOCHS, **overrides)
  config.seed = seed
  config.train.num_members = k
  return config


@pytest.fixture(scope="module")
def separate_runs(tmp_path_factory, dataset):
  out = {}
  for seed in (0, 1):
    workdir = str(tmp_path_factory.mktemp(f"k1_seed{seed}"))
    out[seed] = (workdir, train.train_and_evaluate(_config(1, seed), workdir, dataset=dataset))
  return out


@pytest.fixture(scope="module")
def member_run(tmp_path_factory, dataset):
  workdir = str(tmp_path_factory.mktemp("k2"))
  return workdir, train.train_and_evaluate(_config(2), workdir, dataset=dataset)


def test_members_equal_separate_runs_of_their_seeds(separate_runs, member_run):
  workdir, results = member_run
  joint = report_lib.read_metrics(os.path.join(workdir, "metrics.jsonl"))
  assert [r["epoch"] for r in joint] == list(range(1, EPOCHS + 1))
  for k in (0, 1):
    alone = report_lib.read_metrics(os.path.join(separate_runs[k][0], "metrics.jsonl"))
    for a, b in zip(alone, joint):
      mine = b["members"][k]
      for key in ("train_loss", "val_loss", "train_loss_running", "lr", "label_smoothing",
                  "param_norm"):
        assert mine[key] == pytest.approx(a[key], rel=1e-3, abs=1e-5), (k, a["epoch"], key)
      assert mine["best_epoch"] == a["best_epoch"]
    assert results["members"]["best_epoch"][k] == separate_runs[k][1]["best_epoch"]
    assert results["members"]["test_acc"][k] == pytest.approx(
        separate_runs[k][1]["test_acc"], abs=1.5 / results["num_test"])
  # The line the learning curves draw is the members' mean.
  assert joint[-1]["val_loss"] == pytest.approx(
      np.mean([m["val_loss"] for m in joint[-1]["members"]]))
  assert results["members"]["seeds"] == [0, 1]
  assert results["num_params"] == separate_runs[0][1]["num_params"]


def test_report_is_the_ensemble_and_the_markdown_lists_members(member_run, dataset):
  workdir, results = member_run
  run, state, _ = inference.restore_best(_config(2), workdir, dataset=dataset)
  test = dataset.part("test")
  probs = inference.predict(run, state, test.x, test.mask)
  np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
  assert np.mean(probs.argmax(-1) == test.y) == pytest.approx(results["test_acc"], abs=1e-9)
  with open(os.path.join(workdir, "report.md")) as f:
    text = f.read()
  assert "## Members (2, seeds 0, 1" in text


def test_ensemble_probabilities_are_the_members_mean(member_run, dataset):
  """The exported model of K members predicts the mean of each member's own prediction."""
  workdir, _ = member_run
  run, state, _ = inference.restore_best(_config(2), workdir, dataset=dataset)
  test = dataset.part("test")
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  ensemble = np.asarray(export_lib.probabilities(variables, test.x, test.mask,
                                                 module=run.model, num_members=2))
  singles = [np.asarray(export_lib.probabilities(members_lib.take(variables, k), test.x,
                                                 test.mask, module=run.model, num_members=1))
             for k in (0, 1)]
  np.testing.assert_allclose(ensemble, (singles[0] + singles[1]) / 2, atol=1e-6)
  assert not np.allclose(singles[0], singles[1])      # the members differ
  np.testing.assert_allclose(inference.predict(run, state, test.x, test.mask), ensemble,
                             atol=1e-5)


def test_resume_with_members_matches_uninterrupted(tmp_path, dataset, member_run):
  straight_dir, straight_results = member_run
  workdir = str(tmp_path / "resumed")
  assert train_until_interrupted(_config(2), workdir, dataset) == [1, 2]
  results = train.train_and_evaluate(_config(2), workdir, dataset=dataset)
  a = report_lib.read_metrics(os.path.join(straight_dir, "metrics.jsonl"))
  b = report_lib.read_metrics(os.path.join(workdir, "metrics.jsonl"))
  assert [r["epoch"] for r in b] == [1, 2, 3]
  for ra, rb in zip(a, b):
    for ma, mb in zip(ra["members"], rb["members"]):
      assert ma["val_loss"] == pytest.approx(mb["val_loss"], abs=1e-6)
  assert results["members"]["test_acc"] == straight_results["members"]["test_acc"]
  assert results["test_acc"] == straight_results["test_acc"]


def test_member_stopping_freezes_stopped_members():
  es = members_lib.MemberStopping.for_metric("val_loss", 1, 2)
  es = es.update([1.0, 1.0])
  assert es.improved == [True, True] and es.best_epoch == [1, 1]
  es = es.update([2.0, 0.5])          # member 0 gets worse: patience 1 stops it
  assert es.active == [False, True] and not es.should_stop
  es = es.update([0.1, 0.4])          # member 0 is stopped: its 0.1 does not count
  assert es.improved == [False, True] and es.best_epoch == [1, 3]
  assert es.best_value == [1.0, 0.4]
  es = es.update([0.1, 0.9])
  assert es.should_stop
  again = members_lib.MemberStopping.from_dict(json.loads(json.dumps(es.to_dict())))
  assert again == es
  assert members_lib.MemberStopping.from_dict(es.to_dict(), patience=5).active == [True, True]


def test_merge_best_takes_only_the_improved_members():
  best = {"w": np.zeros((3, 2, 2)), "b": np.zeros((3,))}
  state = {"w": np.ones((3, 2, 2)), "b": np.ones((3,))}
  merged = jax.device_get(members_lib.merge_best(best, state, [False, True, False]))
  np.testing.assert_array_equal(merged["w"][:, 0, 0], [0, 1, 0])
  np.testing.assert_array_equal(merged["b"], [0, 1, 0])


def test_mean_record_ignores_stopped_members():
  def rec(v, level):
    return {"epoch": 4, "step": 40, "val_loss": v, "overfitting": level}
  cfg = _config().monitor
  recs = [{**rec(1.0, monitor.OK), "acc_gap": 0.0}, None,
          {**rec(3.0, monitor.SIGNIFICANT), "acc_gap": 0.2}]
  out = members_lib.mean_record(recs, cfg)
  assert out["val_loss"] == 2.0 and out["epoch"] == 4
  assert out["acc_gap"] == pytest.approx(0.1)
  assert out["overfitting"] == monitor.MODERATE     # the level of the mean gap (0.08 < 0.1)
  assert out["members"][1] is None


def test_num_members_must_be_positive():
  config = _config(0)
  with pytest.raises(ConfigError, match="num_members must be >= 1"):
    members_lib.num_members(config)


# What rounding may move between the two member axes, as a share of what another seed
# moves (the two members of one run ARE two seeds). Measured (tiny config, 3 epochs, CPU):
# the largest axis difference is 0.5 % of the seed spread; a member trained with a wrong
# seed, or gradients mixed across members, moves it by ~100 %.
AXIS_SHARE_OF_SEED_SPREAD = 0.02


def test_vmapped_members_equal_mapped_members(tmp_path, dataset, member_run):
  """The two ways of running members in one program train the same models.

  Not to a fixed float tolerance: batched matmuls sum in another order, and Adam turns
  rounding in near-zero gradients into full-size steps, so losses part by up to ~1e-3
  relative within an epoch while the models stay the same. The bound is the seed-to-seed
  spread of the same run, which is what a member trained wrongly would show.
  """
  assert members_lib.member_axis(_config(2)) == (
      "map" if jax.default_backend() == "cpu" else "vmap")
  other = "vmap" if members_lib.member_axis(_config(2)) == "map" else "map"
  config = _config(2)
  config.train.member_axis = other
  results = train.train_and_evaluate(config, str(tmp_path), dataset=dataset)
  ref = report_lib.read_metrics(os.path.join(member_run[0], "metrics.jsonl"))
  got = report_lib.read_metrics(os.path.join(str(tmp_path), "metrics.jsonl"))
  assert len(got) == len(ref)
  for a, b in zip(ref, got):
    for key in ("train_loss", "val_loss", "param_norm"):
      spread = abs(a["members"][0][key] - a["members"][1][key])
      assert spread > 1e-3 * abs(a["members"][0][key]), (a["epoch"], key)  # two seeds differ
      for k in (0, 1):
        moved = abs(b["members"][k][key] - a["members"][k][key])
        assert moved <= AXIS_SHARE_OF_SEED_SPREAD * spread, (other, a["epoch"], k, key,
                                                              moved / spread)
  assert results["members"]["best_epoch"] == member_run[1]["members"]["best_epoch"]


def test_member_axis_must_be_known():
  config = _config(2)
  config.train.member_axis = "pmap"
  with pytest.raises(ConfigError, match="member_axis"):
    members_lib.member_axis(config)

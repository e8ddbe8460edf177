"""experiments/seed_benchmark.py: model vs baselines over seeds on one data set's splits."""
import json
import os

import pytest

from cardiac_jax import config_lib
from cardiac_jax.studies import seed_benchmark as bench


@pytest.fixture(scope="module")
def horizon(tmp_path_factory):
  config = config_lib.preset("debug")
  config.train.num_epochs = 2
  return bench.benchmark_horizon(config, 1.0, [0, 1], str(tmp_path_factory.mktemp("bench")))


def test_one_run_per_seed_against_the_baselines_of_the_same_splits(horizon):
  h = horizon
  assert [r["seed"] for r in h["runs"]] == [0, 1]
  assert len({r["workdir"] for r in h["runs"]}) == 2
  for r in h["runs"]:
    with open(os.path.join(r["workdir"], "report.json")) as fh:
      assert json.load(fh)["test_acc"] == pytest.approx(r["test_acc"])
  mean = sum(r["test_acc"] for r in h["runs"]) / 2
  assert h["model"]["test_acc"][0] == pytest.approx(mean)
  best = h["best_baseline"]
  assert best not in ("majority", "day_only")
  assert h["baselines"][best]["val_acc"] == max(
      v["val_acc"] for k, v in h["baselines"].items() if k not in ("majority", "day_only"))
  assert h["diff_vs_best"] == pytest.approx(mean - h["baselines"][best]["test_acc"])
  assert h["fate_classes"] == ["CM", "CF"] and h["n_test_fate"] > 0
  assert best in h["verdict"]


def test_rerun_reuses_finished_runs(horizon, tmp_path):
  first = horizon["runs"][0]
  config = config_lib.preset("debug")
  config.train.num_epochs = 2
  again = bench.benchmark_horizon(config, 1.0, [0], os.path.dirname(os.path.dirname(
      first["workdir"])))
  assert again["runs"][0]["test_acc"] == pytest.approx(first["test_acc"])
  assert again["runs"][0]["epochs_run"] == first["epochs_run"]


def test_markdown_has_a_row_per_horizon_and_per_run(horizon):
  md = bench.markdown({"debug": {"horizons": [horizon]}})
  assert md.count("| debug | 1 | ") == 1 + len(horizon["runs"])
  assert "verdict" in md and horizon["best_baseline"] in md


def test_a_members_run_counts_as_its_seeds_and_as_one_ensemble(horizon, tmp_path):
  config = config_lib.preset("debug")
  config.train.num_epochs = 2
  config.train.num_members = 2
  h = bench.benchmark_horizon(config, 1.0, [0], str(tmp_path))
  assert [r["seed"] for r in h["runs"]] == [0, 1]
  assert [e["members"] for e in h["ensembles"]] == [[0, 1]]
  # Member k is the run a single-model benchmark trains with seed k.
  for member, single in zip(h["runs"], horizon["runs"]):
    assert member["test_acc"] == pytest.approx(single["test_acc"], abs=0.01)
    assert member["best_epoch"] == single["best_epoch"]
  assert h["model"]["test_acc"][0] == pytest.approx(
      sum(r["test_acc"] for r in h["runs"]) / 2)
  with open(os.path.join(h["ensembles"][0]["workdir"], "report.json")) as fh:
    assert json.load(fh)["test_acc"] == pytest.approx(h["ensemble"]["model"]["test_acc"][0])
  assert h["ensemble"]["diff_vs_best"] == pytest.approx(
      h["ensembles"][0]["test_acc"] - h["baselines"][h["best_baseline"]]["test_acc"])
  md = bench.markdown({"debug": {"horizons": [h]}})
  assert "ensembles of 2 (n = 1)" in md and "ensemble 0+1" in md
  assert "0 (member of run 0)" in md and "1 (member of run 0)" in md

"""The three studies in quick mode (tiny data, 1 epoch), plus their pure helpers.

The studies share runs the way a user would chain them: ablations and early
fate reuse the multiscale scale1 run as their reference model, so the module
trains four tiny models in all (the order-blind ablation run is checked with a
stand-in trainer, to keep the module under two minutes on a busy CPU).
"""
import json
import os

import numpy as np
import pytest

from cardiac_jax import baselines
from cardiac_jax import config_lib
from cardiac_jax.data.dataset import SequenceDataset
from cardiac_jax.studies import ablations
from cardiac_jax.studies import early_fate
from cardiac_jax.studies import multiscale
from cardiac_jax.studies import runs



def quick_one_epoch(name):
  """``--config=configs/<name>.py:quick --config.train.num_epochs=1``."""
  config = config_lib.preset(name, "quick")
  config.train.num_epochs = 1
  return config

PNG_MAGIC = b"\x89PNG"


def _in_unit(*values):
  return all(0.0 <= v <= 1.0 for v in values)


def _mtimes(workdir):
  out = {}
  for dirpath, _, files in os.walk(workdir):
    for f in files:
      out[os.path.join(dirpath, f)] = os.stat(os.path.join(dirpath, f)).st_mtime_ns
  return out


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
  root = tmp_path_factory.mktemp("studies")
  ms = multiscale.run_multiscale({s: quick_one_epoch(s) for s in ("scale1", "scale2")}, (0,),
                                 workdir_root=str(root / "ms"))
  ref = os.path.join(root, "ms", "scale1_seed0")
  abl = ablations.run_ablations(quick_one_epoch("scale1"), str(root / "abl"),
                                reference_workdir=ref, order_blind=False)
  ef = early_fate.run_early_fate(quick_one_epoch("scale1"), str(root / "ef"), (1.0, 0.5),
                                 reference_workdir=ref)
  return root, ms, abl, ef


# ---------------------------------------------------------------- multiscale


def test_multiscale_files_and_best_scale_on_val(studies):
  root, ms, _, _ = studies
  on_disk = json.loads((root / "ms" / "multiscale.json").read_text())
  assert on_disk["best_scale_by_val"] == ms["best_scale_by_val"]
  runs = on_disk["runs"]
  assert [r["scale"] for r in runs] == ["scale1", "scale2"]
  for r in runs:
    assert _in_unit(r["train_acc"], r["val_acc"], r["test_acc"], r["macro_f1"])
    assert r["acc_gap"] == pytest.approx(r["train_acc"] - r["val_acc"])
    report = json.loads(open(os.path.join(r["workdir"], "report.json")).read())
    assert r["loss_gap"] == report["loss_gap"] == pytest.approx(
        report["val_loss"] - report["train_loss"])
    assert r["epochs_run"] == 1 and r["best_epoch"] == 1 and r["num_params"] > 0
    assert r["wall_seconds"] > 0 and os.path.exists(os.path.join(r["workdir"], "report.json"))
  # scale2 has 1.5x the sequences of scale1 in quick mode too.
  assert runs[1]["sequences"] > runs[0]["sequences"]
  vals = {r["scale"]: r["val_acc"] for r in runs}
  assert on_disk["best_scale_by_val"] == max(vals, key=vals.get)
  tests = [r["test_acc"] for r in runs]
  spread = on_disk["test_acc_spread"]
  assert spread["max_minus_min"] == pytest.approx(max(tests) - min(tests))
  assert spread["std"] == pytest.approx(np.std(tests))
  md = (root / "ms" / "multiscale.md").read_text()
  assert f"Best scale on validation: {ms['best_scale_by_val']}" in md
  assert (root / "ms" / "multiscale.png").read_bytes()[:4] == PNG_MAGIC


def test_multiscale_rerun_reuses_finished_runs(studies):
  root, ms, _, _ = studies
  before = _mtimes(root / "ms" / "scale1_seed0")
  again = multiscale.run_multiscale({"scale1": quick_one_epoch("scale1")}, (0,),
                                    workdir_root=str(root / "ms"))
  assert _mtimes(root / "ms" / "scale1_seed0") == before   # nothing retrained or rewritten
  assert again["runs"][0]["test_acc"] == ms["runs"][0]["test_acc"]
  # The single-scale rerun rewrote the study files: restore the two-scale version.
  multiscale.run_multiscale({s: quick_one_epoch(s) for s in ("scale1", "scale2")}, (0,),
                            workdir_root=str(root / "ms"))


def test_best_scale_ties_go_to_the_smaller_scale_whatever_the_order():
  tied = {"scale3": {"val_acc": 0.8}, "scale1": {"val_acc": 0.8}, "scale2": {"val_acc": 0.7}}
  assert multiscale.best_scale(tied) == "scale1"
  assert multiscale.best_scale(dict(reversed(list(tied.items())))) == "scale1"
  assert multiscale.best_scale({"scale2": {"val_acc": 0.6},
                               "scale1": {"val_acc": 0.5}}) == "scale2"


# ---------------------------------------------------------------- ablations


def test_ablations_table_and_verdict_follow_the_numbers(studies):
  root, ms, abl, _ = studies
  on_disk = json.loads((root / "abl" / "ablations.json").read_text())
  keys = [r["key"] for r in on_disk["rows"]]
  assert keys[:2] == ["model", "model_time_shuffled"]
  assert set(keys[2:]) == set(baselines.BASELINES)
  assert "`day_only` is a diagnostic" in (root / "abl" / "ablations.md").read_text()
  for r in on_disk["rows"]:
    assert _in_unit(r["train_acc"], r["val_acc"], r["test_acc"], r["macro_f1"])
  # The normal model is the reused multiscale scale1 run, not a retrained one.
  assert abl["model"]["test_acc"] == ms["runs"][0]["test_acc"]
  assert not os.path.exists(root / "abl" / "model")
  assert os.path.exists(root / "abl" / "model_time_shuffled" / "report.json")
  assert "model_order_blind" not in on_disk
  cfg = json.loads((root / "abl" / "model_time_shuffled" / "config.json").read_text())
  assert cfg["config"]["data"]["sequences"]["time_shuffle"] is True
  v = on_disk["verdict"]
  pooled = {k: abl["baselines"][k] for k in ablations.POOLED}
  assert v["best_pooled"] == max(ablations.POOLED, key=lambda k: pooled[k]["val_acc"])
  assert v["margin_vs_pooled"] == pytest.approx(
      abl["model"]["test_acc"] - pooled[v["best_pooled"]]["test_acc"])
  assert v["shuffle_drop"] == pytest.approx(
      abl["model"]["test_acc"] - abl["model_time_shuffled"]["test_acc"])
  assert v["beats_pooled"] == (v["margin_vs_pooled"] > v["noise_band"]["pooled"])
  assert f"{abl['model']['test_acc']:.3f}" in v["text"]
  assert v["text"] in (root / "abl" / "ablations.md").read_text()


def test_ablations_order_blind_run_gets_shuffled_data_without_day(studies, monkeypatch):
  """Wiring of the three model runs, with a stand-in for the trainer (no training)."""
  root, _, abl, _ = studies
  calls = []

  def fake_train(config, workdir, dataset):
    calls.append((config, workdir, dataset))
    test = np.asarray(dataset.split) == 2
    conf = np.zeros((6, 6), int)
    np.add.at(conf, (dataset.y[test], dataset.y[test]), 1)   # a perfect classifier
    return {"train_acc": 1.0, "val_acc": 1.0, "test_acc": 1.0, "macro_f1": 1.0,
            "acc_gap": 0.0, "train_loss": 0.1, "val_loss": 0.1, "num_params": 1,
            "epochs_run": 1, "best_epoch": 1, "wall_seconds": 0.0, "num_test": int(test.sum()),
            "confusion": conf.tolist(), "class_names": list(dataset.class_names)}

  monkeypatch.setattr(runs, "train_or_reuse", fake_train)
  out = ablations.run_ablations(quick_one_epoch("scale1"), str(root / "abl_fake"))
  (c0, w0, d0), (c1, w1, d1), (c2, w2, d2) = calls
  assert not c0.data.sequences.time_shuffle and c1.data.sequences.time_shuffle
  assert c2.data.sequences.time_shuffle and len({w0, w1, w2}) == 3
  day = d0.meta["n_pcs"]
  np.testing.assert_array_equal(d0.split, d2.split)       # identical splits everywhere
  assert not np.array_equal(d0.x, d1.x)                    # time really shuffled
  np.testing.assert_allclose(np.sort(d0.x[..., day], 1), np.sort(d1.x[..., day], 1))
  assert np.all(d2.x[..., day] == 0)
  np.testing.assert_array_equal(np.delete(d2.x, day, -1), np.delete(d1.x, day, -1))
  assert [r["key"] for r in out["rows"]][:3] == ["model", "model_time_shuffled",
                                                 "model_order_blind"]
  assert "order_blind_hurts" in out["verdict"] and "no-day row" in (
      root / "abl_fake" / "ablations.md").read_text()
  # Baselines do not depend on the trainer: identical to the real study's.
  assert out["baselines"]["logreg_last"]["test_acc"] == abl["baselines"]["logreg_last"]["test_acc"]


def test_ablation_verdict_logic():
  base = {"majority": {"val_acc": 0.2, "test_acc": 0.2},
          "logreg_last": {"val_acc": 0.6, "test_acc": 0.6},
          "logreg_mean": {"val_acc": 0.7, "test_acc": 0.6},
          "hgb_summary": {"val_acc": 0.65, "test_acc": 0.7},
          "knn_mean": {"val_acc": 0.5, "test_acc": 0.5}}
  good = ablations.ablation_verdict({"test_acc": 0.9}, {"test_acc": 0.88}, base, 1000,
                                    {"test_acc": 0.6})
  assert good["best_pooled"] == "logreg_mean"          # chosen on val, not on test
  assert good["beats_pooled"] and good["beats_last_step"]
  assert not good["shuffle_hurts"] and good["order_blind_hurts"]
  assert good["uses_temporal_information"]
  assert "does not clearly hurt" in good["text"] and "beats" in good["text"]
  tied = ablations.ablation_verdict({"test_acc": 0.61}, {"test_acc": 0.61}, base, 100)
  assert not tied["beats_pooled"] and not tied["uses_temporal_information"]
  worse = ablations.ablation_verdict({"test_acc": 0.3}, {"test_acc": 0.3}, base, 1000)
  assert "is clearly worse than" in worse["text"]


def test_drop_day_feature_zeroes_only_the_day_and_changes_the_key():
  rng = np.random.default_rng(0)
  n_pcs = 3
  ds = SequenceDataset(
      x=rng.standard_normal((4, 5, n_pcs + 2)).astype(np.float32), y=np.zeros(4, np.int32),
      mask=np.ones((4, 5), np.float32), split=np.array([0, 1, 2, 0], np.int8),
      modality=np.zeros(4, np.int8), source_index=np.zeros((4, 5), np.int64),
      class_names=("a",), meta={"n_pcs": n_pcs, "cache_key": "k"})
  out = ablations.drop_day_feature(ds)
  assert np.all(out.x[..., n_pcs] == 0)
  np.testing.assert_array_equal(np.delete(out.x, n_pcs, -1), np.delete(ds.x, n_pcs, -1))
  assert out.meta["cache_key"] != ds.meta["cache_key"]
  assert np.any(ds.x[..., n_pcs] != 0)                 # the input is not modified


# ---------------------------------------------------------------- early fate


def test_early_fate_curve(studies):
  root, ms, _, ef = studies
  on_disk = json.loads((root / "ef" / "early_fate.json").read_text())
  assert on_disk["fractions"] == [0.5, 1.0]
  rows = on_disk["rows"]
  assert [r["visible_steps"] for r in rows] == [8, 16]
  for r in rows:
    assert _in_unit(r["model_test_acc"], r["baseline_test_acc"])
    for k in ("model_cm_cf_acc", "baseline_cm_cf_acc"):
      assert r[k] is None or _in_unit(r[k])
  full = on_disk["baselines"]["1.00"]
  order = [k for k in baselines.BASELINES if k not in baselines.DIAGNOSTICS]  # ties: simpler first
  assert on_disk["best_baseline"] == max(order, key=lambda k: full[k]["val_acc"])
  assert rows[1]["baseline_test_acc"] == full[on_disk["best_baseline"]]["test_acc"]
  for r, f in zip(rows, ("0.50", "1.00")):
    assert r["day_only_test_acc"] == on_disk["baselines"][f]["day_only"]["test_acc"]
  md = (root / "ef" / "early_fate.md").read_text()
  assert "day-only test acc" in md and "CM-vs-CF accuracy is the honest" in md
  # f=1.0 reuses the reference run; f=0.5 is a run trained on truncated sequences.
  assert rows[1]["model_test_acc"] == ms["runs"][0]["test_acc"]
  cfg = json.loads((root / "ef" / "model_f0.50" / "config.json").read_text())
  assert cfg["config"]["data"]["sequences"]["observed_fraction"] == 0.5
  assert "trained and evaluated per horizon" in (root / "ef" / "early_fate.md").read_text()
  assert (root / "ef" / "early_fate.png").read_bytes()[:4] == PNG_MAGIC
  assert ef["summary"] == on_disk["summary"]


@pytest.mark.parametrize("fractions", [(0.0, 1.0), (0.5, 1.5), ()])
def test_early_fate_rejects_bad_fractions(tmp_path, fractions):
  with pytest.raises(ValueError, match="fractions"):
    early_fate.run_early_fate(config_lib.preset("debug", "quick"), str(tmp_path), fractions)


def test_multiscale_trains_consecutive_seeds_as_members_of_one_run(tmp_path):
  """--seeds=0,1: one compiled run of two members per scale, one table row per seed."""
  ms = multiscale.run_multiscale({"scale1": quick_one_epoch("scale1")}, (0, 1),
                                 workdir_root=str(tmp_path))
  assert sorted(os.listdir(tmp_path)) == ["multiscale.json", "multiscale.md", "multiscale.png",
                                          "scale1_seeds0-1"]
  report = json.loads((tmp_path / "scale1_seeds0-1" / "report.json").read_text())
  assert report["members"]["seeds"] == [0, 1]
  assert [r["seed"] for r in ms["runs"]] == [0, 1]
  assert [r["test_acc"] for r in ms["runs"]] == report["members"]["test_acc"]
  assert [r["best_epoch"] for r in ms["runs"]] == report["members"]["best_epoch"]
  assert all(r["cm_cf_acc"] is None or 0 <= r["cm_cf_acc"] <= 1 for r in ms["runs"])
  assert ms["scales"]["scale1"]["seeds"] == [0, 1]


def test_only_consecutive_seeds_are_members_of_one_run():
  assert runs.consecutive([0, 1, 2]) and runs.consecutive([5, 6])
  assert not runs.consecutive([0]) and not runs.consecutive([0, 2])
  assert not runs.consecutive([2, 1])

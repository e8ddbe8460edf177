"""The simulator's label ceiling (simulator.label_ceiling) and experiments/ceiling.py."""
import json
import os

import numpy as np
import pytest
from sklearn import ensemble

from cardiac_jax import config_lib
from cardiac_jax.data import simulator
from cardiac_jax.studies import ceiling

POPULATIONS = config_lib.POPULATIONS


@pytest.fixture(scope="module")
def latents():
  """Latents of 60,000 simulated cells (few genes: only obs is used), UNK dropped."""
  adata = simulator.simulate_cells(n_cells=60_000, n_genes=120, n_donors=19, seed=3)
  obs = adata.obs
  keep = (obs["type"] != "UNK").to_numpy()
  label = obs["type"].cat.codes.to_numpy()[keep]      # PROGRAMME_NAMES order: POPULATIONS first
  return {"day": obs["diffday"].cat.codes.to_numpy()[keep],
          "label": label,
          "t_expr": obs["dpt_pseudotime"].to_numpy(np.float64)[keep] * simulator.T_MAX,
          "fate_positive": obs["fate_bias"].to_numpy()[keep] > 0,
          "cm_fraction": float(np.mean(obs["fate_bias"].to_numpy()[keep] > 0))}


def _balanced(lat, n_per_class, rng):
  """Two disjoint class-balanced draws (train, test): each class's cells are shuffled
  and split, then drawn with replacement within their half, as anchors are."""
  train, test = [], []
  for c in range(len(POPULATIONS)):
    pool = rng.permutation(np.flatnonzero(lat["label"] == c))
    half = pool.size // 2
    train.append(rng.choice(pool[:half], n_per_class))
    test.append(rng.choice(pool[half:], n_per_class))
  return np.concatenate(train), np.concatenate(test)


def test_the_density_is_the_one_the_cells_are_sampled_from(latents):
  grid = np.arange(0.05, 4.45, 0.002)                  # inside dpt_pseudotime's clipping
  stages = {"IPSC": 0, "MES": 1, "CMES": 2, "PROG": 3, "CM": 4, "CF": 4}
  checked = 0
  for name, stage in stages.items():
    for day in range(len(config_lib.DAYS)):
      t = latents["t_expr"][(latents["label"] == POPULATIONS.index(name)) &
                            (latents["day"] == day)]
      if t.size < 400:
        continue
      full = np.arange(-3.0, 8.0, 0.002)
      cdf_full = np.cumsum(simulator.latent_position_density(day, stage, full)) * 0.002
      model_cdf = np.interp(grid, full, cdf_full)
      empirical = np.searchsorted(np.sort(t), grid, side="right") / t.size
      assert np.max(np.abs(model_cdf - empirical)) < 2.0 / np.sqrt(t.size), (name, day)
      checked += 1
  assert checked >= 10


def test_the_rule_reaches_its_expected_ceiling_and_nothing_fitted_beats_it(latents):
  rng = np.random.default_rng(0)
  expected = simulator.label_ceiling(latents["cm_fraction"])["balanced"]
  train, test = _balanced(latents, 3_000, rng)
  rule = simulator.bayes_labels(latents["day"][test], latents["t_expr"][test],
                                latents["fate_positive"][test], latents["cm_fraction"])
  rule_acc = float(np.mean(rule == latents["label"][test]))
  se = np.sqrt(expected * (1 - expected) / test.size)
  assert abs(rule_acc - expected) < 4 * se

  # Boosted trees fitted on the same latents (balanced, disjoint cells) do not do better.
  feats = np.stack([latents["day"], latents["t_expr"], latents["fate_positive"]], 1)
  clf = ensemble.HistGradientBoostingClassifier(max_iter=150, random_state=0)
  clf.fit(feats[train], latents["label"][train])
  fitted_acc = float(np.mean(clf.predict(feats[test]) == latents["label"][test]))
  assert fitted_acc <= rule_acc + 0.005
  # ... while being a competent classifier of them (so the bound above is not vacuous).
  assert fitted_acc > rule_acc - 0.03


def test_the_ceiling_falls_as_the_transcriptome_drifts_from_the_label():
  values = [simulator.label_ceiling(0.32, asynchrony=a)["balanced"] for a in (0.02, 0.1, 0.3, 0.6)]
  assert values[0] > 0.99
  assert all(a > b for a, b in zip(values, values[1:]))
  per_class = simulator.label_ceiling(0.32)["per_class"]
  assert list(per_class) == list(POPULATIONS)
  assert all(0.0 < v <= 1.0 for v in per_class.values())


def test_bad_arguments_are_named():
  with pytest.raises(simulator.DataError, match="cm_fraction"):
    simulator.label_ceiling(1.0)
  with pytest.raises(simulator.DataError, match="asynchrony"):
    simulator.latent_position_density(0, 0, np.zeros(3), asynchrony=0.0)
  config = config_lib.preset("debug")
  config.data.source = "h5ad"
  with pytest.raises(ValueError, match="latents"):
    ceiling.prepared_cells(config)
  for field, value, match in (("sequences.observed_fraction", 0.5, "full"),
                              ("sequences.time_shuffle", True, "full"),
                              ("split.group_by_donor", True, "held-out donors")):
    config = config_lib.preset("debug")
    section, name = field.split(".")
    config.data[section][name] = value
    with pytest.raises(ValueError, match=match):
      ceiling.measure(config)


def test_the_script_writes_its_table_for_every_preset_and_seed(tmp_path):
  out = str(tmp_path / "ceiling")
  report = ceiling.run(["scale1"], [0, 1], out, quick=True, n_fresh=4_000)
  assert [(r["preset"], r["data_seed"]) for r in report["runs"]] == [("scale1_quick", 0),
                                                                       ("scale1_quick", 1)]
  for r in report["runs"]:
    assert 0.85 < r["ceiling_expected"] < 0.95
    for key in ("bayes", "logreg_last", "hgb_summary"):
      assert set(r[key]) == {"val", "test"} and all(0 <= v <= 1 for v in r[key].values())
    # Every training cell on a walk is at least every distinct training anchor.
    assert r["logreg_cells"]["train_cells"] >= 6 * 20 * 0.65 * 0.5
    assert r["logreg_fresh"]["train_cells"] > 3_500          # UNK dropped
    for key in ("logreg_fresh", "logreg_fresh_donor"):
      assert all(0 <= r[key][s] <= 1 for s in ("val", "test"))
    # The rule's classes are mapped onto the dataset's by name: a wrong mapping would put
    # it near chance (1/6); the expected ceiling is 0.90 (val n = 60, so about ±0.08).
    assert r["bayes"]["val"] > 0.75
    assert r["n"]["test"] > 0
  # The two seeds are different data (seed changes simulator, split and walks).
  assert report["runs"][0]["cm_fraction"] != report["runs"][1]["cm_fraction"]
  summary = report["summary"]["scale1_quick"]
  assert summary["runs"] == 2
  assert summary["logreg_last_test"] == pytest.approx(
      np.mean([r["logreg_last"]["test"] for r in report["runs"]]))
  assert json.load(open(out + ".json"))["summary"] == json.loads(json.dumps(report["summary"]))
  md = open(out + ".md").read()
  assert md.count("| scale1_quick |") == 3          # two runs, one summary row
  assert os.path.getsize(out + ".png") > 1_000

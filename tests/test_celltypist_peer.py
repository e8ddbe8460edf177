"""celltypist_peer: its scoring, held-out subsets, the run's training cells, the extra's pins.

CellTypist itself is never imported here (it lives in its own venv); the study's
end-to-end numbers are in docs/results/celltypist.md.
"""
import configparser
import pathlib

import anndata
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from cardiac_jax import config_lib
from cardiac_jax import fingerprint
from cardiac_jax.studies import celltypist_peer

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_score_leaves_out_unknown_labels_and_macro_averages_f1():
  true = np.array(["A", "A", "B", "B", "UNK"])
  pred = np.array(["A", "B", "B", "B", "A"])
  got = celltypist_peer.score(true, pred, ["A", "B"])
  assert (got["n_cells"], got["n_scored"]) == (5, 4)
  assert got["accuracy"] == pytest.approx(0.75)
  # A: precision 1, recall 1/2 -> 2/3; B: precision 2/3, recall 1 -> 4/5.
  assert got["macro_f1"] == pytest.approx((2 / 3 + 4 / 5) / 2)
  with pytest.raises(ValueError, match="no held-out cell"):
    celltypist_peer.score(np.array(["UNK"]), np.array(["A"]), ["A", "B"])


def test_heldout_file_is_the_input_or_a_seeded_subset(tmp_path):
  n = 40
  adata = anndata.AnnData(
      X=sp.csr_matrix(np.arange(n * 3, dtype=np.float32).reshape(n, 3)),
      obs=pd.DataFrame({"type": ["A", "B"] * (n // 2)}, index=[f"c{i}" for i in range(n)]))
  src = tmp_path / "cells.h5ad"
  adata.write_h5ad(src)
  assert celltypist_peer.heldout_file(str(src), 0, tmp_path, seed=0) == src
  assert celltypist_peer.heldout_file(str(src), n, tmp_path, seed=0) == src
  path = celltypist_peer.heldout_file(str(src), 15, tmp_path, seed=0)
  sub = anndata.read_h5ad(path)
  assert sub.n_obs == 15 and len(set(sub.obs_names)) == 15
  rows = [int(c[1:]) for c in sub.obs_names]
  assert rows == sorted(rows)
  np.testing.assert_array_equal(sub.X.toarray(), adata.X.toarray()[rows])
  other = tmp_path / "other"
  other.mkdir()
  again = anndata.read_h5ad(celltypist_peer.heldout_file(str(src), 15, other, seed=0))
  assert list(again.obs_names) == list(sub.obs_names)       # the same cells for every method


def test_training_cells_are_the_runs_train_split_with_their_own_labels(tmp_path):
  from cardiac_jax.data import simulator  # pylint: disable=g-import-not-at-top
  config = config_lib.base_config()
  config.data.source = "simulator"
  config.data.simulator.n_cells, config.data.simulator.n_genes = 400, 80
  config.data.spatial.enabled = False
  fingerprint.write_config_file(str(tmp_path), config, {})
  cells = celltypist_peer.training_cells(tmp_path)
  sim = simulator.simulate_cells(n_cells=400, n_genes=80, seed=config.data.simulator.seed)
  kept = sim.obs["type"].astype(str) != "UNK"
  labels = cells.obs[celltypist_peer.LABEL_KEY].to_numpy()
  assert "UNK" not in set(labels)
  assert 0.6 < cells.n_obs / kept.sum() < 0.7                    # the 65 % train split
  truth = sim.obs["type"].astype(str)
  np.testing.assert_array_equal(labels, truth.loc[cells.obs_names].to_numpy())
  np.testing.assert_array_equal(cells.X.toarray(), sim[cells.obs_names].X.toarray())


def test_markdown_has_a_row_per_method_and_size():
  row = {"bed": "embedded", "n_cells": 30000, "n_scored": 29000, "method": "CellTypist",
         "accuracy": 0.9, "macro_f1": 0.85, "train_wall_s": 12.0, "train_peak_rss_gb": 1.0,
         "annotate_wall_s": 3.0, "annotate_peak_rss_gb": 2.0}
  reference = {k: row[k] for k in ("bed", "n_cells", "n_scored", "accuracy", "macro_f1")}
  lines = celltypist_peer.markdown([{"rows": [row, dict(row, method="cardiac_jax"),
                                              dict(reference, method="reference")]}])
  assert len(lines) == 5 and "30,000 (29,000)" in lines[2] and "0.9000" in lines[2]
  assert "| 12.0 | 1.00 | 3.0 | 2.00 |" in lines[2]
  assert lines[4].endswith("| – | – | – | – |")          # no cost for the reference row


def test_celltypist_extra_pins_celltypist_and_caps_scikit_learn():
  cfg = configparser.ConfigParser()
  cfg.read(ROOT / "setup.cfg")
  extra = [r.strip() for r in cfg["options.extras_require"]["celltypist"].splitlines()
           if r.strip()]
  assert "celltypist==1.7.1" in extra
  assert any(r.startswith("scikit-learn") and "<1.8" in r for r in extra)
  assert celltypist_peer.WORKER.exists()


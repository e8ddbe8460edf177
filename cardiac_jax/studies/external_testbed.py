"""An external test bed: a branching time course from a simulator we did not write.

  pip install -e ".[external]"
  python experiments/external_testbed.py --out=/work/data/ext_a.h5ad --tree=a --seed=0
  python -m cardiac_jax.main --config=configs/scale1.py $(python -c \
      "import json;print(' '.join(json.load(open('/work/data/ext_a.json'))['overrides']))")

Why: the embedded simulator shares its authors' assumptions with the model, so
a good score on it proves little. markovmodus (Bleher; MIT; pinned in the
``external`` extra) simulates cells hopping along a user-given directed state
graph (a continuous-time Markov chain) while each gene's unspliced/spliced counts
relax, stochastically, towards the current state's targets; measurement noise is
negative binomial. A cell that just changed state still carries its old
programme, so boundaries are soft without any help from us.

How the time course is made: like a real differentiation harvested on several
days, every time point is an independent ``markovmodus.simulate_dataset`` run of
``n_cells / len(time_points)`` cells that all start in the root state and run for
``t`` time units (one unit = one "day"); the time label is that ``t`` (an
integer, written as an int column). The population label is the latent state's
name. There is no donor column.

How the signal was chosen (per-cell logistic regression on PCA, ``--check``:
log1p of counts per 1e4, scaled, 50 PCs fitted on a stratified 65 % part, scored
on the rest; tree "a", 3,000 cells): markovmodus' own defaults (150 markers per
state at 10 vs 2 counts, no dispersion, decay = splicing = 0.3 per day) give
0.66, because at 0.3 per day a cell's counts lag a whole state behind its label
at these transition rates; with decay = splicing = 1.5 (relaxation in ~0.7 day)
the same markers give 0.84. The defaults here keep the fast relaxation and
weaken the programmes instead: 40 markers per state at 12 vs 2 counts, 8 of them
shared along every edge of the graph, negative-binomial theta 5 - 0.81 (tree
"a") and 0.79 (tree "b"), inside the 0.7-0.9 aimed for. (With 25 markers at 5
vs 2 and theta 2 it is 0.45: too hard.)
"""
from __future__ import annotations

import json
import os
import pathlib
import shlex
from typing import Any, Sequence

from absl import app
from absl import flags
from absl import logging
import numpy as np
import pandas as pd
import scipy.sparse as sp

# Trees: state names in state-id order (the root first) and directed edges with
# their rates (per day). "a" is shaped like the cardiac course (a chain, then one
# branch into two fates); "b" branches twice, into three terminal fates.
TREES: dict[str, dict[str, Any]] = {
    "a": {
        "states": ("root", "early", "mid", "prog", "fateA", "fateB"),
        "edges": {("root", "early"): 0.45, ("early", "mid"): 0.45, ("mid", "prog"): 0.45,
                  ("prog", "fateA"): 0.25, ("prog", "fateB"): 0.2},
        "time_points": (1, 2, 3, 5, 7, 9, 12),
        "fate_pair": ("fateA", "fateB"),       # the branch scored as data.fate_classes
    },
    "b": {
        "states": ("stem", "bipotent", "left", "right", "leftA", "leftB", "rightEnd"),
        "edges": {("stem", "bipotent"): 0.5, ("bipotent", "left"): 0.3,
                  ("bipotent", "right"): 0.25, ("left", "leftA"): 0.2, ("left", "leftB"): 0.2,
                  ("right", "rightEnd"): 0.3},
        "time_points": (1, 3, 5, 8, 12),
        "fate_pair": ("leftA", "leftB"),
    },
}
POPULATION_KEY = "population"
TIME_KEY = "time"
FLAGS = flags.FLAGS


def transition_rates(tree: dict[str, Any]) -> np.ndarray:
  """The (n_states, n_states) rate matrix of a TREES entry."""
  states = tree["states"]
  rates = np.zeros((len(states), len(states)))
  for (src, dst), rate in tree["edges"].items():
    rates[states.index(src), states.index(dst)] = rate
  return rates


def simulate_time_course(tree: dict[str, Any], n_cells: int, seed: int, *,
                         time_points: Sequence[float] | None = None, n_genes: int = 1_000,
                         markers_per_state: int = 40, marker_overlap: int = 8,
                         baseline_expression: float = 2.0, marker_expression: float = 12.0,
                         dispersion: float | None = 5.0, decay_rate: float = 1.5,
                         splicing_rate: float = 1.5, dt: float = 0.25) -> Any:
  """One markovmodus run per time point, stacked into one AnnData (raw counts, CSR).

  Returns AnnData with integer counts in X, ``obs[POPULATION_KEY]`` (state name),
  ``obs[TIME_KEY]`` (int day) and the settings in ``uns["external_testbed"]``.
  """
  import anndata as ad   # pylint: disable=g-import-not-at-top
  import markovmodus     # pylint: disable=g-import-not-at-top

  states = tuple(tree["states"])
  time_points = tuple(tree["time_points"] if time_points is None else time_points)
  if n_cells < len(time_points):
    raise ValueError(f"n_cells={n_cells} is fewer than the {len(time_points)} time points")
  per_time = np.full(len(time_points), n_cells // len(time_points))
  per_time[:n_cells % len(time_points)] += 1
  rates = transition_rates(tree)
  root = np.zeros(len(states))
  root[0] = 1.0
  parts = []
  for k, (t, n) in enumerate(zip(time_points, per_time)):
    params = markovmodus.SimulationParameters(
        num_states=len(states), transition_rates=rates, num_genes=n_genes,
        markers_per_state=markers_per_state, marker_overlap=marker_overlap,
        baseline_expression=baseline_expression, marker_expression=marker_expression,
        dispersion=dispersion, splicing_rate=splicing_rate, decay_rate=decay_rate,
        initial_state_probs=root, num_cells=int(n), t_final=float(t), dt=dt,
        rng_seed=seed * 1000 + k)
    part = markovmodus.simulate_dataset(params)   # spliced counts in X
    labels = np.asarray(states)[part.obs["state"].to_numpy().astype(int)]
    parts.append(ad.AnnData(
        X=sp.csr_matrix(np.asarray(part.X, dtype=np.int32)),
        obs=pd.DataFrame({POPULATION_KEY: labels, TIME_KEY: np.full(int(n), int(t)),
                          "sim_state": part.obs["state"].to_numpy().astype(int)},
                         index=[f"t{t}_cell{i}" for i in range(int(n))]),
        var=pd.DataFrame(index=np.asarray(part.var_names).astype(str))))
    logging.info("time %s: %d cells %s", t, n, dict(zip(*np.unique(labels, return_counts=True))))
  adata = ad.concat(parts, join="outer", merge="same")
  adata.obs[POPULATION_KEY] = adata.obs[POPULATION_KEY].astype(str)
  adata.obs[TIME_KEY] = adata.obs[TIME_KEY].astype(np.int64)
  settings = dict(simulator="markovmodus", version=markovmodus.__version__, seed=seed,
                  states=list(states), time_points=list(time_points),
                  edges=[[s, d, r] for (s, d), r in tree["edges"].items()], n_genes=n_genes,
                  markers_per_state=markers_per_state, marker_overlap=marker_overlap,
                  baseline_expression=baseline_expression,
                  marker_expression=marker_expression, dispersion=dispersion,
                  decay_rate=decay_rate, splicing_rate=splicing_rate, dt=dt)
  adata.uns["external_testbed"] = json.dumps(settings)
  return adata


def write_h5ad(adata: Any, out: str | os.PathLike) -> pathlib.Path:
  """Writes ``adata`` atomically (``fileio.atomic_write_h5ad``)."""
  from cardiac_jax import fileio   # pylint: disable=g-import-not-at-top
  return fileio.atomic_write_h5ad(adata, out)


def time_ordered_classes(adata: Any) -> tuple[str, ...]:
  """The class list ``data.classes = ()`` derives: by mean time-point index, ties by name."""
  from cardiac_jax.data import ingest   # pylint: disable=g-import-not-at-top
  times = adata.obs[TIME_KEY].to_numpy()
  _, time_index = np.unique(times, return_inverse=True)
  return ingest.derive_classes(adata.obs[POPULATION_KEY].to_numpy().astype(str), time_index)


def _tuple_flag(values: Sequence[str]) -> str:
  return "(" + ",".join(repr(str(c)) for c in values) + ("," if len(values) == 1 else "") + ")"


def overrides(path: str | os.PathLike, classes: Sequence[str] = (),
              fate_pair: Sequence[str] = ()) -> list[str]:
  """The --config.* flags that run cardiac_jax.main on a file written here.

  Explicit ``classes`` run on any version of cardiac_jax; ``()`` lets ingest take
  every population present, ordered by mean time. ``fate_pair`` names the two
  sister fates the report scores as a two-class accuracy (``data.fate_classes``).
  """
  fate = [f"--config.data.fate_classes={_tuple_flag(fate_pair)}"] if fate_pair else []
  return [
      "--config.data.source=h5ad",
      f"--config.data.path={pathlib.Path(path).resolve()}",
      f"--config.data.population_key={POPULATION_KEY}",
      f"--config.data.time_key={TIME_KEY}",
      "--config.data.donor_key=",
      f"--config.data.classes={_tuple_flag(classes)}",
      "--config.data.drop_labels=()",
      "--config.data.spatial.enabled=false",
  ] + fate


def per_cell_accuracy(adata: Any, seed: int = 0, n_pcs: int = 50) -> float:
  """Held-out accuracy of a logistic regression on PCA of log-normalised counts."""
  from sklearn.decomposition import PCA   # pylint: disable=g-import-not-at-top
  from sklearn.linear_model import LogisticRegression  # pylint: disable=g-import-not-at-top
  from sklearn.model_selection import train_test_split  # pylint: disable=g-import-not-at-top
  from sklearn.preprocessing import StandardScaler   # pylint: disable=g-import-not-at-top
  counts = sp.csr_matrix(adata.X, dtype=np.float64)
  size = np.maximum(np.asarray(counts.sum(axis=1)).ravel(), 1.0)
  x = np.log1p(sp.diags(1e4 / size) @ counts).toarray()
  y = adata.obs[POPULATION_KEY].to_numpy().astype(str)
  train, test = train_test_split(np.arange(len(y)), train_size=0.65, stratify=y,
                                 random_state=seed)
  scaler = StandardScaler().fit(x[train])
  pca = PCA(n_components=min(n_pcs, x.shape[1] - 1), random_state=seed)
  z_train = pca.fit_transform(np.clip(scaler.transform(x[train]), -10, 10))
  z_test = pca.transform(np.clip(scaler.transform(x[test]), -10, 10))
  clf = LogisticRegression(max_iter=2_000).fit(z_train, y[train])
  return float(clf.score(z_test, y[test]))


def define_flags() -> None:
  """The script's flags (defined here, not at import, like every study's)."""
  flags.DEFINE_string("out", None, "Output .h5ad (written atomically).")
  flags.DEFINE_string("config_out", None, "JSON of --config overrides; default: "
                      "--out with .json.")
  flags.DEFINE_enum("tree", "a", sorted(TREES), "State graph (see TREES).")
  flags.DEFINE_integer("seed", 0, "Seed; time point k uses seed * 1000 + k.")
  flags.DEFINE_integer("n_cells", 5_000, "Cells in all, spread evenly over the days.")
  flags.DEFINE_integer("n_genes", 1_000, "Genes.")
  flags.DEFINE_integer("markers_per_state", 40, "markovmodus markers_per_state.")
  flags.DEFINE_integer("marker_overlap", 8, "Markers shared along each edge.")
  flags.DEFINE_float("baseline_expression", 2.0, "Non-marker spliced target.")
  flags.DEFINE_float("marker_expression", 12.0, "Marker spliced target.")
  flags.DEFINE_float("dispersion", 5.0, "Negative-binomial theta (smaller: noisier).")
  flags.DEFINE_float("decay_rate", 1.5, "Spliced decay rate (per day).")
  flags.DEFINE_float("splicing_rate", 1.5, "Splicing rate (per day).")
  flags.DEFINE_float("dt", 0.25, "Simulator time step (days).")
  flags.DEFINE_bool("check", True, "Print the per-cell logistic-regression accuracy.")


def main(argv: Sequence[str]) -> None:
  del argv
  if not FLAGS.out:
    raise app.UsageError("--out is required")
  adata = simulate_time_course(
      TREES[FLAGS.tree], FLAGS.n_cells, FLAGS.seed, n_genes=FLAGS.n_genes,
      markers_per_state=FLAGS.markers_per_state, marker_overlap=FLAGS.marker_overlap,
      baseline_expression=FLAGS.baseline_expression, marker_expression=FLAGS.marker_expression,
      dispersion=FLAGS.dispersion if FLAGS.dispersion > 0 else None,
      decay_rate=FLAGS.decay_rate, splicing_rate=FLAGS.splicing_rate, dt=FLAGS.dt)
  out = write_h5ad(adata, FLAGS.out)
  table = pd.crosstab(adata.obs[POPULATION_KEY], adata.obs[TIME_KEY], margins=True)
  print(f"wrote {out}: {adata.n_obs} cells x {adata.n_vars} genes\n{table}")
  classes = time_ordered_classes(adata)
  pair = TREES[FLAGS.tree]["fate_pair"]
  summary = {"overrides": overrides(out, classes, pair), "classes": list(classes),
             # data.classes=(): the same list, derived by ingest
             "overrides_derived_classes": overrides(out, fate_pair=pair),
             "n_cells": int(adata.n_obs),
             "n_genes": int(adata.n_vars),
             "cells_per_population": {str(k): int(v) for k, v in
                                      adata.obs[POPULATION_KEY].value_counts().items()},
             "time_points": sorted(int(t) for t in adata.obs[TIME_KEY].unique()),
             "settings": json.loads(adata.uns["external_testbed"])}
  if FLAGS.check:
    summary["per_cell_logreg_accuracy"] = per_cell_accuracy(adata, seed=FLAGS.seed)
    print(f"per-cell logistic regression on 50 PCs: {summary['per_cell_logreg_accuracy']:.3f}")
  from cardiac_jax import fileio   # pylint: disable=g-import-not-at-top
  config_out = FLAGS.config_out or str(out.with_suffix(".json"))
  fileio.atomic_write_json(config_out, summary)
  print(f"wrote {config_out}; run with:\n  python -m cardiac_jax.main --config=configs/scale1.py "
        + " ".join(shlex.quote(o) for o in summary["overrides"]))


if __name__ == "__main__":
  define_flags()
  app.run(main)

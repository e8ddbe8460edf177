"""Does the path add anything to the best per-cell classifier? The trained sequence
branch stacked on a fitted baseline instead of the model's own cell head.

  python experiments/stack_check.py --config=configs/scale1.py \
      --workdir=runs/bench/scale1/f1/seed0     # + the run's own overrides

The model's evaluation logits are ``cell head + gate * sequence branch``. Here the
chosen checkpoint's sequence branch (its logits, read as the difference between
gate 1 and gate 0) is added to the log-probabilities of a baseline fitted exactly as
``baselines.run_baselines`` fits it (``--baseline``, default the per-cell logistic
regression), with the weight chosen on validation from ``GRID``; gate 0 is the
baseline itself. Also printed: the model's own head with the same wider grid. Per
member, validation and test accuracy; test never chooses anything.
"""
from __future__ import annotations

import json
from typing import Sequence

from absl import app
from absl import flags
from ml_collections import config_flags
import numpy as np

from cardiac_jax import baselines
from cardiac_jax import evaluation
from cardiac_jax import inference
from cardiac_jax.data import dataset as dataset_lib
from cardiac_jax.data import splits as splits_lib

FLAGS = flags.FLAGS
GRID = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0)
SPLITS = ("val", "test")


def _log(p: np.ndarray) -> np.ndarray:
  return np.log(np.maximum(np.asarray(p, np.float64), 1e-30))


def stacked(base: dict[str, np.ndarray], branch: dict[str, np.ndarray],
            y: dict[str, np.ndarray]) -> dict[str, object]:
  """``base + g * branch`` for g in GRID, g chosen by validation accuracy (ties: smaller g)."""
  acc = {s: [float(np.mean((base[s] + g * branch[s]).argmax(1) == y[s])) for g in GRID]
         for s in SPLITS}
  best = int(np.argmax(acc["val"]))
  return {"gate": GRID[best], "val": acc["val"][best], "test": acc["test"][best],
          "val_grid": acc["val"], "test_grid": acc["test"]}


def define_flags() -> None:
  """The script's flags (defined here, not at import: cardiac_jax.main defines --config too)."""
  config_flags.DEFINE_config_file("config", "configs/scale1.py", "The run's config.")
  flags.DEFINE_string("workdir", None, "The run's workdir.", required=True)
  flags.DEFINE_string("baseline", "logreg_last", "The baseline to stack on.")


def main(argv: Sequence[str]) -> None:
  del argv
  config = FLAGS.config
  ds = dataset_lib.build_dataset(config.data)
  run, state, meta = inference.restore_best(config, FLAGS.workdir, dataset=ds)
  split, labels = np.asarray(ds.split), np.asarray(ds.y)
  y = {s: labels[split == splits_lib.SPLIT_IDS[s]] for s in SPLITS}
  logp = {(g, s): [_log(e["probs"]) for e in evaluation.evaluate(
      run.fns.eval_chunk, evaluation.with_branch_gate(state, g), run.data, run.chunks[s],
      with_probs=True)] for g in (0.0, 1.0) for s in SPLITS}
  selected, probs = baselines.baseline_probs(ds, FLAGS.baseline, seed=int(config.seed))
  base = {s: _log(probs[s]) for s in SPLITS}
  result = {"workdir": FLAGS.workdir, "best_epoch": meta["epoch"], "baseline": FLAGS.baseline,
            "selected": selected,
            "baseline_acc": {s: float(np.mean(base[s].argmax(1) == y[s])) for s in SPLITS},
            "own_head": [], "on_baseline": []}
  for m in range(run.num_members):
    branch = {s: logp[(1.0, s)][m] - logp[(0.0, s)][m] for s in SPLITS}
    result["own_head"].append(stacked({s: logp[(0.0, s)][m] for s in SPLITS}, branch, y))
    result["on_baseline"].append(stacked(base, branch, y))
  print(json.dumps(result))
  for key in ("own_head", "on_baseline"):
    rows = result[key]
    print(f"{key}: gates {[r['gate'] for r in rows]}, members' mean val "
          f"{np.mean([r['val'] for r in rows]):.4f} test {np.mean([r['test'] for r in rows]):.4f}")
  print(f"{FLAGS.baseline} alone: val {result['baseline_acc']['val']:.4f} "
        f"test {result['baseline_acc']['test']:.4f}")


if __name__ == "__main__":
  define_flags()
  app.run(main)

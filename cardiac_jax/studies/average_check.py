"""What the parameter average bought: the best checkpoint scored with and without it.

  python experiments/average_check.py --config=configs/scale1.py \
      --config.train.num_members=3 --config.train.average_epochs=2 \
      --workdir=runs/bench/scale1/f1/seed0     # + the run's other overrides

``train.average_epochs`` leaves training untouched (the average only rides along
in the optimizer state), so the checkpoint chosen with the average holds the
trained weights of the same step too. Each version gets its own branch gate
chosen on validation; prints, per member, validation and test accuracy of the
average and of the weights it averages. Same epoch for both, so this measures
the average at the checkpoint it chose (the trained weights' own best epoch
may differ: compare a run without the average for that).
"""
from __future__ import annotations

import json
from typing import Sequence

from absl import app
from absl import flags
from ml_collections import config_flags
import numpy as np

from cardiac_jax import evaluation
from cardiac_jax import inference
from cardiac_jax import optim
from cardiac_jax.data import dataset as dataset_lib

FLAGS = flags.FLAGS


def _scores(run, state) -> dict[str, list[float]]:
  state, gate = evaluation.select_branch_gate(run, state)
  out = {"gate": None if gate is None else gate["chosen"]}
  for split in ("val", "test"):
    evs = evaluation.evaluate(run.fns.eval_chunk, state, run.data, run.chunks[split])
    out[f"{split}_acc"] = [e["acc"] for e in evs]
  return out


def define_flags() -> None:
  """The script's flags (defined here, not at import: cardiac_jax.main defines --config too)."""
  config_flags.DEFINE_config_file("config", "configs/scale1.py", "The run's config.")
  flags.DEFINE_string("workdir", None, "The run's workdir.", required=True)


def main(argv: Sequence[str]) -> None:
  del argv
  config = FLAGS.config
  ds = dataset_lib.build_dataset(config.data)
  run, state, meta = inference.restore_best(config, FLAGS.workdir, dataset=ds)
  if optim.eval_params(state.params, state.opt_state) is state.params:
    raise app.UsageError("this run keeps no parameter average (train.average_epochs=0).")
  raw = state.replace(opt_state=optim.without_average(state.opt_state))
  result = {"workdir": FLAGS.workdir, "best_epoch": meta["epoch"],
            "average": _scores(run, state), "trained_weights": _scores(run, raw)}
  for split in ("val", "test"):
    avg, raw = (float(np.mean(result[v][f"{split}_acc"])) for v in ("average", "trained_weights"))
    result[f"{split}_gain"] = avg - raw
  print(json.dumps(result))
  print(f"members' mean: val {np.mean(result['average']['val_acc']):.4f} (average) vs "
        f"{np.mean(result['trained_weights']['val_acc']):.4f} (trained weights), "
        f"gain {result['val_gain']:+.4f}; test {np.mean(result['average']['test_acc']):.4f} vs "
        f"{np.mean(result['trained_weights']['test_acc']):.4f}, gain {result['test_gain']:+.4f}")


if __name__ == "__main__":
  define_flags()
  app.run(main)

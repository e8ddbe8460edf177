"""``python -m cardiac_jax.main``: train (or re-report) one config into one workdir.

  python -m cardiac_jax.main --config=configs/debug.py --config.train.num_epochs=2
  python -m cardiac_jax.main --config=configs/scale1.py --workdir=runs/s1 --mode=report
  python -m cardiac_jax.main --config=configs/scale1.py:quick   # the run shrunk to seconds

Rerunning with the same --workdir resumes from its newest checkpoint. The same
command as ``cardiac-jax train`` (``cli.train``).
"""
import sys

from cardiac_jax import cli

if __name__ == "__main__":
  cli.main([cli.PROG, "train", *sys.argv[1:]])

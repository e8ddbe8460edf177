"""Benchmarks the dataset build, stage by stage (wall seconds and peak RSS).

  python experiments/bench_data.py --config=configs/scale3.py --out=/tmp/bench_data.json

Builds from the configured source with the cache disabled (so every stage runs),
then times writing the result as the cache would. Peak RSS is the process's
ru_maxrss after each stage (a running maximum, not the stage's own use).
"""
from __future__ import annotations

import json
import os
import pathlib
import platform
import tempfile
import time
from typing import Sequence

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from cardiac_jax.data import dataset as dataset_lib
from cardiac_jax.studies import common

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The script's flags (defined here, not at import: cardiac_jax.main defines --config too)."""
  config_flags.DEFINE_config_file("config", "configs/scale3.py", "Config file.")
  flags.DEFINE_string("out", "", "Write the stage table as JSON here.")


def main(argv: Sequence[str]) -> None:
  del argv
  config = FLAGS.config
  timings: dict = {}
  start = time.perf_counter()
  ds = dataset_lib.build_dataset(config.data, cache=False, timings=timings)
  with tempfile.TemporaryDirectory() as tmp:
    t0 = time.perf_counter()
    path = ds.save(pathlib.Path(tmp) / "bench.npz")
    size_mb = path.stat().st_size / 2**20
    timings["save"] = {"seconds": time.perf_counter() - t0, "peak_rss_mb": common.peak_rss_mb()}
  total = time.perf_counter() - start

  rows = [(name, v["seconds"], v["peak_rss_mb"]) for name, v in timings.items()]
  print(f"\n{config.name}: {len(ds)} sequences x {ds.length} steps x {ds.num_features} "
        f"features from {ds.meta['n_cells']} cells and {ds.meta['n_spots']} spots")
  print(f"{'stage':<18}{'seconds':>10}{'peak RSS MB':>14}")
  for name, sec, rss in rows:
    print(f"{name:<18}{sec:>10.2f}{rss:>14.0f}")
  print(f"{'total':<18}{total:>10.2f}{common.peak_rss_mb():>14.0f}")
  print(f"dataset file {size_mb:.0f} MB; {os.cpu_count()} CPUs")
  result = {
      "config": config.name,
      "n_sequences": len(ds),
      "shape": list(ds.x.shape),
      "n_cells": ds.meta["n_cells"],
      "n_spots": ds.meta["n_spots"],
      "stages": timings,
      "total_seconds": total,
      "peak_rss_mb": common.peak_rss_mb(),
      "file_mb": size_mb,
      "cpus": os.cpu_count(),
      "machine": platform.platform(),
  }
  if FLAGS.out:
    pathlib.Path(FLAGS.out).write_text(json.dumps(result, indent=2))
    logging.info("wrote %s", FLAGS.out)


if __name__ == "__main__":
  define_flags()
  app.run(main)

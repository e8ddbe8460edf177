"""resources.run_measured: a command's own wall time and peak RSS."""
import sys

import numpy as np

from cardiac_jax import resources


def test_run_measured_reports_the_commands_own_peak_not_the_parents():
  ballast = np.ones(2**25)           # 256 MB in this process: a forked child would inherit it
  assert resources.peak_rss_mb() > 250
  small = resources.run_measured([sys.executable, "-I", "-S", "-c", "pass"])
  big = resources.run_measured([sys.executable, "-I", "-S", "-c", "b = bytearray(150 << 20)"])
  del ballast
  assert small["returncode"] == 0 and small["peak_rss_mb"] < 100
  assert 150 < big["peak_rss_mb"] < 250
  failed = resources.run_measured([sys.executable, "-I", "-S", "-c", "raise SystemExit(3)"])
  assert failed["returncode"] == 3 and failed["wall_s"] > 0

"""What a process has used: peak resident memory, read the same way everywhere."""
from __future__ import annotations

import resource
import sys


def peak_rss_mb(children: bool = False) -> float:
  """Peak resident set size in MB of this process (or of its finished children).

  ``ru_maxrss`` is in KB on Linux and in bytes on macOS.
  """
  who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
  peak = resource.getrusage(who).ru_maxrss
  return peak / 2**20 if sys.platform == "darwin" else peak / 2**10

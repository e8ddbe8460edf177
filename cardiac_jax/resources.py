"""Peak resident memory (``ru_maxrss`` in MB) of this process, its children, or one child.

The one place for the unit of ``ru_maxrss`` (bytes on macOS, KiB elsewhere).
``run_measured`` runs a command and reads that child's own rusage through
``os.wait4``; ``RUSAGE_CHILDREN`` would be the maximum over every child so far.
"""
from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from typing import Any, Sequence


def maxrss_mb(usage: Any) -> float:
  """``usage.ru_maxrss`` (a ``resource.struct_rusage``) in MB."""
  return usage.ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)


def peak_rss_mb(children: bool = False) -> float:
  """This process's peak RSS in MB so far (a running maximum); or its waited-for children's."""
  return maxrss_mb(resource.getrusage(resource.RUSAGE_CHILDREN if children
                                      else resource.RUSAGE_SELF))


def run_measured(argv: Sequence[str]) -> dict[str, float]:
  """Runs ``argv`` to the end; its exit code, wall seconds and its own peak RSS (MB)."""
  start = time.perf_counter()
  proc = subprocess.Popen(list(argv))
  _, status, usage = os.wait4(proc.pid, 0)
  proc.returncode = os.waitstatus_to_exitcode(status)
  return {"returncode": proc.returncode, "wall_s": time.perf_counter() - start,
          "peak_rss_mb": maxrss_mb(usage)}

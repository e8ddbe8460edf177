"""Peak resident memory (``ru_maxrss`` in MB) of this process, its children, or one child.

The one place for the unit of ``ru_maxrss`` (bytes on macOS, KiB elsewhere).
``run_measured`` runs a command and reads that child's own rusage through
``os.wait4``; ``RUSAGE_CHILDREN`` would be the maximum over every child so far.

Linux carries a process's high-water RSS across ``exec``: a child forked (or
vforked) from a large parent reports at least the parent's peak RSS, whatever
it used itself (a 1 GB parent made ``python3 -c pass`` read 1,050 MB). So
``run_measured`` starts the command from a bare launcher (``python -I -S``, a
few MB): the launcher inherits the parent's mark, the command it forks does not.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from typing import Any, Sequence

# Run by ``python -I -S -c``: forks, execs argv (JSON in argv[1]), waits, writes
# {returncode, wall_s, maxrss (ru_maxrss units)} as JSON to the path in argv[2].
_LAUNCHER = """
import json, os, sys, time
argv = json.loads(sys.argv[1])
start = time.perf_counter()
pid = os.fork()
if pid == 0:
  try:
    os.execvp(argv[0], argv)
  finally:
    os._exit(127)
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[2], "w") as f:
  json.dump({"returncode": os.waitstatus_to_exitcode(status),
             "wall_s": time.perf_counter() - start, "maxrss": usage.ru_maxrss}, f)
"""


def maxrss_units_to_mb(value: float) -> float:
  """An ``ru_maxrss`` value in MB."""
  return value / (2**20 if sys.platform == "darwin" else 2**10)


def maxrss_mb(usage: Any) -> float:
  """``usage.ru_maxrss`` (a ``resource.struct_rusage``) in MB."""
  return maxrss_units_to_mb(usage.ru_maxrss)


def peak_rss_mb(children: bool = False) -> float:
  """This process's peak RSS in MB so far (a running maximum); or its waited-for children's."""
  return maxrss_mb(resource.getrusage(resource.RUSAGE_CHILDREN if children
                                      else resource.RUSAGE_SELF))


def run_measured(argv: Sequence[str]) -> dict[str, float]:
  """Runs ``argv`` to the end; its exit code, wall seconds and its own peak RSS (MB).

  Through the bare launcher (module docstring), so the peak is the command's own,
  not this process's.
  """
  fd, result_path = tempfile.mkstemp(suffix=".json", prefix="run_measured_")
  os.close(fd)
  try:
    launcher = subprocess.run([sys.executable, "-I", "-S", "-c", _LAUNCHER,
                               json.dumps([str(a) for a in argv]), result_path], check=False)
    if launcher.returncode != 0:
      raise RuntimeError(f"run_measured's launcher failed (exit {launcher.returncode}) "
                         f"for {list(argv)[:3]}")
    with open(result_path) as f:
      result = json.load(f)
  finally:
    os.unlink(result_path)
  return {"returncode": result["returncode"], "wall_s": result["wall_s"],
          "peak_rss_mb": maxrss_units_to_mb(result["maxrss"])}

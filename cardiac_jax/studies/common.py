"""What every study shares: markdown tables, number formatting, standard errors, JSON, memory.

One place for each, so the tables of different studies read alike and their
noise bands are the same arithmetic.
"""
from __future__ import annotations

import math
import pathlib
import platform
from typing import Any, Iterable, Sequence

import numpy as np

from cardiac_jax import fileio
from cardiac_jax import resources

# This process's peak RSS in MB (``children=True``: its waited-for children's).
peak_rss_mb = resources.peak_rss_mb


def fmt(value: Any, digits: int = 4) -> str:
  """A table cell: "–" for None, floats to ``digits`` decimals, a (mean, std) pair as
  "mean ± std" ("–" when the mean is None), anything else as ``str``."""
  if isinstance(value, (tuple, list)) and len(value) == 2:   # a list after a JSON round trip
    mean, std = value
    return "–" if mean is None else f"{mean:.{digits}f} ± {std:.{digits}f}"
  if value is None:
    return "–"
  if isinstance(value, float):
    return f"{value:.{digits}f}"
  return str(value)


def table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
  """A markdown table's lines; every cell through ``fmt`` (4 decimals)."""
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
  return lines


def se_diff(p1: float, p2: float, n: int) -> float:
  """Binomial standard error of the difference of two accuracies on n examples."""
  n = max(int(n), 1)
  return math.sqrt((p1 * (1 - p1) + p2 * (1 - p2)) / n)


def mean_std(values: Sequence[float | None],
             ddof: int = 0) -> tuple[float | None, float | None]:
  """Mean and standard deviation of the values that are not None; (None, None) if none is.

  With ``ddof=1`` a single value has standard deviation 0.
  """
  vals = [v for v in values if v is not None]
  if not vals:
    return None, None
  arr = np.asarray(vals, np.float64)
  return float(arr.mean()), float(arr.std(ddof=ddof)) if arr.size > ddof else 0.0


def json_default(o: Any) -> Any:
  """``json.dumps``'s ``default`` for numpy scalars and arrays."""
  if isinstance(o, (np.integer,)):
    return int(o)
  if isinstance(o, (np.floating,)):
    return float(o)
  if isinstance(o, np.ndarray):
    return o.tolist()
  raise TypeError(f"not JSON-able: {type(o)}")


def write_json(path: str | pathlib.Path, obj: Any) -> str:
  """Writes ``obj`` (numpy values included) as indented, key-sorted JSON, atomically."""
  return str(fileio.atomic_write_json(path, obj, default=json_default))


def cpu_model() -> str:
  """The CPU's model name (/proc/cpuinfo), else ``platform.processor()``."""
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip() or platform.processor()
  except OSError:
    pass
  return platform.processor()

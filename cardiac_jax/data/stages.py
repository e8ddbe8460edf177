"""Timing, memory and progress of the named stages of a dataset build."""
from __future__ import annotations

import contextlib
import time
from typing import Any, Iterator

from absl import logging

from cardiac_jax import resources


class Stages:
  """Wall seconds and peak RSS per pipeline stage, into an optional dict.

  Every builder runs its work as ``with stage("walks"): ...``; the same object
  advances ``bar`` (a progress bar, one step per stage, named in its postfix),
  so timings, the log and the bar never disagree on what a stage is.
  """

  def __init__(self, out: dict | None = None, bar: Any = None):
    self.out = out
    self.bar = bar

  @contextlib.contextmanager
  def __call__(self, name: str) -> Iterator[None]:
    if self.bar is not None:
      self.bar.set_postfix_str(name)
    start = time.perf_counter()
    yield
    seconds = time.perf_counter() - start
    peak_mb = resources.peak_rss_mb()
    logging.info("build_dataset: %s done in %.2f s (peak RSS %.0f MB)", name, seconds, peak_mb)
    if self.out is not None:
      prev = self.out.get(name, {"seconds": 0.0})
      self.out[name] = {"seconds": prev["seconds"] + seconds, "peak_rss_mb": peak_mb}
    if self.bar is not None:
      self.bar.update(1)

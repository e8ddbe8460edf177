"""What a finished run writes beyond the sequence-level report: its task's outputs.

Every task exports the portable model; tasks whose question is about a unit
rather than a sequence (a clone's fate, a spot's region) also score every held-out
unit from several of its sequences, against their baselines on the same units,
and add that to the report (``clones.report``, ``regions.report``).
"""
from __future__ import annotations

from typing import Any, Callable

from cardiac_jax import clones
from cardiac_jax import export as export_lib
from cardiac_jax import regions
from cardiac_jax import run as run_lib
from cardiac_jax import steps

# config.data.task -> its unit-level report (results are updated in place).
UNIT_REPORTS: dict[str, Callable[..., None]] = {"clonal": clones.report,
                                                 "regions": regions.report}


def finish_run(run: run_lib.Run, state: steps.TrainState, workdir: str,
               results: dict[str, Any]) -> None:
  """``evaluation.report_best``'s hook: export, then the task's unit-level scores."""
  export_lib.export_if_possible(run, state, workdir)
  report = UNIT_REPORTS.get(str(run.config.data.get("task", "snapshot")))
  if report is not None:
    report(run, state, workdir, results)

"""One progress-bar policy (tqdm.auto) for the places where people wait.

``tqdm.auto`` draws a widget in Jupyter and a text bar in a terminal. Plain
``disable=None`` would switch the widget off too (a kernel's stdout is no tty),
so "auto" here means: on in a terminal or a notebook, off in logs and pipes.
"""
from __future__ import annotations

import sys
from typing import Any


def in_notebook() -> bool:
  """True when tqdm.auto resolved to the notebook widget (an IPython kernel)."""
  # tqdm.auto first: it imports autonotebook with its "notebook mode" warning silenced.
  from tqdm import auto  # pylint: disable=g-import-not-at-top,unused-import
  from tqdm import autonotebook  # pylint: disable=g-import-not-at-top
  from tqdm import std  # pylint: disable=g-import-not-at-top
  return autonotebook.tqdm is not std.tqdm


def enabled(progress: bool | None) -> bool:
  """``progress`` itself, or for None: a terminal (stderr is a tty) or a notebook."""
  if progress is not None:
    return bool(progress)
  isatty = getattr(sys.stderr, "isatty", None)
  return bool(isatty and isatty()) or in_notebook()


def bar(total: int, *, desc: str, unit: str, progress: bool | None, initial: int = 0) -> Any:
  """A ``tqdm.auto.tqdm`` over ``total`` items (``initial`` already done), disabled per
  ``enabled(progress)``."""
  from tqdm import auto as tqdm_auto  # pylint: disable=g-import-not-at-top
  return tqdm_auto.tqdm(total=total, initial=initial, desc=desc, unit=unit,
                        disable=not enabled(progress), dynamic_ncols=True)

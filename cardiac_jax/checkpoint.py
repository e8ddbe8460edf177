"""Checkpoints: one small wrapper around ``orbax.checkpoint.CheckpointManager``.

Layout under ``<workdir>/checkpoints``: ``latest/<epoch>`` (the newest
``keep`` epochs, for resuming) and ``best/<epoch>`` (the single best epoch by
the early-stopping metric, for evaluation). Two managers rather than one with
a combined preservation policy: the best checkpoint is chosen by our own
``EarlyStopping`` (ties keep the earlier epoch), never by orbax's sort, so the
two can never disagree. Every step is a ``Composite`` of the array state
(``StandardSave``/``StandardRestore`` against an abstract target) and JSON
metadata (epoch, early-stopping state, config fingerprint, data cache key,
seed). Orbax writes into a temporary directory and renames it, so a crash
mid-write never leaves a half checkpoint that looks complete. That does not
cover files lost after the rename (deleted, truncated, a partial copy of the
workdir), so ``restore_latest`` still sets an unreadable newest checkpoint
aside and resumes from the previous one.

The config fingerprint that every checkpoint's metadata carries lives in
``fingerprint.py``; this module knows nothing about configs.
"""
from __future__ import annotations

import os
import shutil
from typing import Any, Iterable

from absl import logging
import jax
from jax.experimental import multihost_utils
import orbax.checkpoint as ocp

from cardiac_jax import fileio
from cardiac_jax.errors import CheckpointError
from cardiac_jax.errors import ConfigError

STATE, META = "state", "meta"


class Checkpointer:
  """Latest-N and best-1 checkpoints of one run directory.

  Use as a context manager (or call ``close``) so async writes finish before
  the process exits.
  """

  def __init__(self, workdir: str, keep: int = 3, *, async_save: bool = True):
    self.root = os.path.abspath(os.path.join(workdir, "checkpoints"))
    self._keep = int(keep)
    if self._keep < 1:
      raise ConfigError(f"train.keep_checkpoints must be >= 1, got {keep}.")
    self._async = async_save
    self.latest = self._manager("latest", self._keep)
    self.best = self._manager("best", 1)

  def _manager(self, name: str, keep: int) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=self._async,
        cleanup_tmp_directories=True)
    return ocp.CheckpointManager(os.path.join(self.root, name), options=options,
                                 item_names=(STATE, META))

  def save(self, epoch: int, state: Any, meta: dict[str, Any], *, best: bool,
           best_state: Any = None) -> None:
    """Saves ``state`` as epoch ``epoch`` in latest (and in best when ``best``).

    ``best_state`` (default ``state``) is what goes into best: a run of several
    members saves there each member's own best weights.

    Orbax copies device arrays to host before returning, so the caller may
    donate ``state``'s buffers to the next jitted step right away. Best is
    finished before latest starts: a crash in between then leaves a best epoch
    newer than latest, which ``restore_latest`` sets aside, never a latest
    whose early-stopping state points at a best epoch that was not written.
    """
    managers = ([self.best] if best else []) + [self.latest]
    for manager in managers:
      if manager is self.latest and best:
        self.best.wait_until_finished()
      saved = best_state if manager is self.best and best_state is not None else state
      args = ocp.args.Composite(**{STATE: ocp.args.StandardSave(saved),
                                   META: ocp.args.JsonSave(dict(meta))})
      if not manager.save(int(epoch), args=args):
        raise CheckpointError(
            f"orbax skipped saving epoch {epoch} in {manager.directory} (latest there "
            f"is {manager.latest_step()}); the checkpoint directory was changed by "
            "another process.")

  def _restore(self, manager: ocp.CheckpointManager, step: int,
               abstract_state: Any) -> tuple[Any, dict[str, Any]]:
    restored = manager.restore(step, args=ocp.args.Composite(**{
        STATE: ocp.args.StandardRestore(abstract_state), META: ocp.args.JsonRestore()}))
    return restored[STATE], dict(restored[META])

  def restore_latest(self, abstract_state: Any) -> tuple[Any, dict[str, Any]] | None:
    """Restores the newest readable epoch, or returns None when there is none.

    An unreadable checkpoint (a truncated or deleted file) is moved aside to
    ``checkpoints/corrupt/`` with a warning and the previous one is tried, so
    the epochs after the fallback can be saved again. Raises
    ``CheckpointError`` if checkpoints exist but none is readable.
    """
    steps = sorted(self.latest.all_steps(), reverse=True)
    for step in steps:
      try:
        state, meta = self._restore(self.latest, step, abstract_state)
      except Exception as e:  # pylint: disable=broad-except
        logging.warning("Checkpoint %s/%d is unreadable (%s: %s); falling back to the "
                        "previous one.", self.latest.directory, step, type(e).__name__, e)
        continue
      self._set_aside(self.latest, [s for s in steps if s > step])
      # Best epochs after the resume point will be recomputed and saved again.
      self._set_aside(self.best, [s for s in self.best.all_steps() if s > step])
      return state, meta
    if steps:
      raise CheckpointError(
          f"none of the checkpoints {steps} in {self.latest.directory} could be read. "
          "Delete the workdir (or use a new --workdir) to start over.")
    return None

  def restore_best(self, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
    """Restores the best epoch (falls back to the newest readable one with a warning)."""
    for step in sorted(self.best.all_steps(), reverse=True):
      try:
        return self._restore(self.best, step, abstract_state)
      except Exception as e:  # pylint: disable=broad-except
        logging.warning("Best checkpoint %s/%d is unreadable (%s: %s).",
                        self.best.directory, step, type(e).__name__, e)
    logging.warning("No readable best checkpoint in %s; using the latest one instead.",
                    self.best.directory)
    restored = self.restore_latest(abstract_state)
    if restored is None:
      raise CheckpointError(
          f"no checkpoint in {self.root}; train first (--mode=train) with this --workdir.")
    return restored

  def _set_aside(self, manager: ocp.CheckpointManager, steps: Iterable[int]) -> None:
    steps = list(steps)
    if not steps:
      return
    if fileio.is_primary():   # one process moves; every process then re-reads the folder
      aside = os.path.join(self.root, "corrupt", os.path.basename(str(manager.directory)))
      os.makedirs(aside, exist_ok=True)
      for step in steps:
        src = os.path.join(str(manager.directory), str(step))
        dst = os.path.join(aside, str(step))
        if os.path.exists(dst):
          shutil.rmtree(dst)
        logging.warning("Moving checkpoint %s aside to %s (it is newer than the resume "
                        "point and will be written again).", src, dst)
        shutil.move(src, dst)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("cardiac_jax_set_aside")
    manager.reload()

  def latest_epoch(self) -> int | None:
    return self.latest.latest_step()

  def best_epoch(self) -> int | None:
    return self.best.latest_step()

  def wait(self) -> None:
    """Blocks until pending async writes are on disk."""
    self.latest.wait_until_finished()
    self.best.wait_until_finished()

  def close(self) -> None:
    self.latest.close()
    self.best.close()

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

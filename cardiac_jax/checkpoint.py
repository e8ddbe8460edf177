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
mid-write never leaves a half checkpoint that looks complete.

The config fingerprint is every resolved config field except the harmless
ones in ``RESUMABLE_FIELDS``; a resumed run with a different fingerprint is an
error naming the fields, never a silent mix of two runs.
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Any, Iterable

from absl import logging
import ml_collections
import orbax.checkpoint as ocp

from cardiac_jax import fileio
from cardiac_jax.errors import ConfigError

STATE, META = "state", "meta"
CONFIG_FILE = "config.json"

# Fields that may change between a run and its resumption. Extending
# num_epochs lengthens training (linear label-smoothing/weight-decay ramps are
# stretched to the new total from the resumed step on); the rest change only
# how the run is displayed, evaluated in chunks, stored or judged.
RESUMABLE_FIELDS = (
    "name",
    "train.num_epochs",
    "train.early_stopping_patience",
    "train.progress_bar",
    "train.eval_batch_size",
    "train.keep_checkpoints",
    "data.cache_dir",
    "data.fate_classes",   # scoring only
    "monitor.",  # every monitor.* threshold
)

# Fields added after runs were already stored, with the value that reproduces
# the older behaviour: a stored fingerprint without the field means this value,
# so adding a switch does not orphan existing workdirs.
ADDED_FIELDS = {
    "model.input_dropout": 0.0,
    "model.feature_noise": 0.0,
    "model.step_dropout": 0.0,
    "model.cell_head": False,
    "model.branch_dropout": 0.0,
    "train.ramp_epochs": 0.0,
    "data.fate_classes": ["CM", "CF"],
}


class CheckpointError(RuntimeError):
  """No usable checkpoint where one was expected."""


def flatten_dict(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
  """Nested dicts as one ``{"a.b.c": leaf}`` dict (config field paths)."""
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, dict):
      out.update(flatten_dict(v, key + "."))
    else:
      out[key] = v
  return out


def _resumable(key: str) -> bool:
  return any(key == f or (f.endswith(".") and key.startswith(f)) for f in RESUMABLE_FIELDS)


def fingerprint(config: ml_collections.ConfigDict, data_key: str) -> dict[str, Any]:
  """The fields of a resolved config that a resumed run must share, plus the data key.

  Normalised through JSON (tuples become lists) so a fingerprint read back
  from disk compares equal to a freshly computed one.
  """
  flat = {k: v for k, v in flatten_dict(config.to_dict()).items() if not _resumable(k)}
  flat["data.cache_key"] = data_key
  return json.loads(json.dumps(flat, sort_keys=True, default=str))


def fingerprint_diff(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
  """Human-readable ``field: stored -> current`` lines for every differing field."""
  missing = object()
  lines = []
  for key in sorted(set(stored) | set(current)):
    a = stored.get(key, ADDED_FIELDS.get(key, missing))
    b = current.get(key, missing)
    if a != b:
      fmt = lambda v: "<absent>" if v is missing else repr(v)  # noqa: E731
      lines.append(f"{key}: {fmt(a)} -> {fmt(b)}")
  return lines


def check_compatible(stored: dict[str, Any], current: dict[str, Any], workdir: str,
                     source: str) -> None:
  """Raises ``ConfigError`` when ``current`` cannot continue the run in ``workdir``."""
  diff = fingerprint_diff(stored, current)
  if diff:
    raise ConfigError(
        f"the config differs from the run already in {workdir} (from {source}) in "
        f"{len(diff)} field(s) that change shapes or semantics:\n  " + "\n  ".join(diff) +
        "\nResuming would mix two different runs. Use a new --workdir for the new "
        "config, delete the old workdir to start over, or run with the old values. "
        "Fields allowed to change on resume: "
        f"{', '.join(f[:-1] + '.*' if f.endswith('.') else f for f in RESUMABLE_FIELDS)}.")




def read_config_file(workdir: str) -> dict[str, Any] | None:
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def write_config_file(workdir: str, config: ml_collections.ConfigDict,
                      fp: dict[str, Any]) -> bool:
  """Writes ``config.json`` on a fresh start only; returns whether it wrote."""
  path = os.path.join(workdir, CONFIG_FILE)
  if os.path.exists(path):
    return False
  payload = {"config": json.loads(config.to_json_best_effort()), "fingerprint": fp}
  fileio.atomic_write_json(path, payload)
  return True


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

  def save(self, epoch: int, state: Any, meta: dict[str, Any], *, best: bool) -> None:
    """Saves ``state`` as epoch ``epoch`` in latest (and in best when ``best``).

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
      args = ocp.args.Composite(**{STATE: ocp.args.StandardSave(state),
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

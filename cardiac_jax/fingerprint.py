"""What a resumed run must share with the run stored in its workdir.

The config fingerprint is every resolved config field except the harmless
ones in ``RESUMABLE_FIELDS``, plus the dataset's key. It is written to
``<workdir>/config.json`` on a fresh start and into every checkpoint's
metadata; a resumed (or reused) run with a different fingerprint is an error
naming the fields, never a silent mix of two runs. A field added to
``config_lib.base_config`` later needs an entry in ``ADDED_FIELDS`` (its value
in older runs) and nothing else.
"""
from __future__ import annotations

import json
import os
from typing import Any

import ml_collections

from cardiac_jax import fileio
from cardiac_jax.errors import ConfigError

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
    "train.branch_gate_grid",   # chosen after training, from the best checkpoint
    "data.spatial.predict_walks",   # scoring only (regions: walks per held-out spot)
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
    "train.average_epochs": 0.0,
    "train.num_members": 1,
    "train.member_axis": "auto",
    "data.fate_classes": ["CM", "CF"],
    "data.task": "snapshot",
    "model.positions": "learned",
    "data.spatial.section_key": "section",
    "data.spatial.region_key": "region",
    "data.spatial.classes": [],
    "data.spatial.split": "tile",
    "data.spatial.val_sections": [],
    "data.spatial.test_sections": [],
    "data.spatial.walks_per_spot": 4,
    "data.spatial.predict_walks": 8,
    "data.spatial.n_sections": 5,
    "data.spatial.spots_per_section": 3_000,
    "data.spatial.restart": 0.0,
    "data.spatial.distance_feature": False,
}


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


def check_workdir(workdir: str, current: dict[str, Any],
                  meta: dict[str, Any] | None = None) -> None:
  """Refuses to continue the run in ``workdir`` (its config.json, and the
  checkpoint metadata ``meta`` when given) with an incompatible fingerprint."""
  stored = read_config_file(workdir)
  if stored is not None:
    check_compatible(stored["fingerprint"], current, workdir, CONFIG_FILE)
  if meta is not None:
    check_compatible(meta["fingerprint"], current, workdir,
                     f"checkpoint of epoch {meta['epoch']}")

"""Command line: train (or re-report) one config into one workdir.

  python -m cardiac_jax.main --config=configs/debug.py --config.train.num_epochs=2
  python -m cardiac_jax.main --config=configs/scale1.py --workdir=runs/s1 --mode=report
  python -m cardiac_jax.main --config=configs/scale1.py:quick   # the run shrunk to seconds

Rerunning with the same --workdir resumes from its newest checkpoint.
"""
from __future__ import annotations

import difflib
import logging as logging_std
import os
import re
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from cardiac_jax import fingerprint as fingerprint_lib
from cardiac_jax import inference
from cardiac_jax import config_lib
from cardiac_jax import parallel
from cardiac_jax import train

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/debug.py; override fields with "
    "--config.train.num_epochs=3.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (default runs/<config.name>).")
_MODE = flags.DEFINE_enum(
    "mode", "train", ["train", "report"],
    "train: train (resuming if the workdir has a checkpoint), test and report; "
    "report: restore the best checkpoint and rewrite the report without training.")
flags.mark_flags_as_required(["config"])


class _QuietLibraries(logging_std.Filter):
  """Drops orbax's INFO chatter (a dozen lines per checkpoint); warnings pass."""

  def filter(self, record: logging_std.LogRecord) -> bool:
    return record.levelno >= logging_std.WARNING or "/orbax/" not in record.pathname


def parse_flags(argv: list[str]) -> list[str]:
  """Parses flags; an unknown ``--config.*`` field exits with a one-line explanation.

  config_flags reports a misspelt override as a raw KeyError/AttributeError
  traceback from deep inside ml_collections; this names the flag instead.
  """
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    unknown = re.search(r"Unknown command line flag '(config\.[^']+)'", str(e))
    if unknown:
      _unknown_config_field([unknown.group(1)])
    sys.stderr.write(f"FATAL Flags parsing error: {e}\n"
                     "Pass --helpshort or --helpfull to see help on flags.\n")
    sys.exit(1)
  except (KeyError, AttributeError):
    _unknown_config_field([a[2:].split("=")[0] for a in argv[1:] if a.startswith("--config.")])


def _unknown_config_field(flag_names: list[str]) -> None:
  """Exits naming the unknown ``config.*`` flags with the closest real field."""
  known = list(fingerprint_lib.flatten_dict(config_lib.base_config().to_dict()))
  lines = []
  for name in flag_names:
    path = name[len("config."):]
    if path in known:
      continue
    close = difflib.get_close_matches(path, known, n=1, cutoff=0.8)
    lines.append(f"--{name}: no config field {path!r}" +
                 (f"; did you mean --config.{close[0]}?" if close else "."))
  sys.stderr.write(
      "FATAL unknown config field(s):\n  " + "\n  ".join(lines or flag_names) +
      "\nThe fields are defined in cardiac_jax/config_lib.py; fix the spelling (or add "
      "the field there first).\n")
  sys.exit(2)


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  parallel.maybe_initialize_distributed()   # multi-host only when JAX_COORDINATOR_* is set
  logging.get_absl_handler().addFilter(_QuietLibraries())
  config = _CONFIG.value
  workdir = _WORKDIR.value or os.path.join("runs", config.name)
  logging.info("config %s, workdir %s, mode %s", config.name, workdir, _MODE.value)
  if _MODE.value == "report":
    inference.evaluate_and_report(config, workdir)
  else:
    train.train_and_evaluate(config, workdir)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)

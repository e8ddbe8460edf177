"""The command lines: ``cardiac-jax train|report|predict|export|convert-geo [flags]``.

  cardiac-jax train --config=configs/scale1.py      # = python -m cardiac_jax.main
  cardiac-jax report --config=configs/scale1.py --workdir=runs/scale1
  cardiac-jax predict --model=runs/scale1/model --input=new.h5ad --output=new_annotated.h5ad
  cardiac-jax export --workdir=runs/old_run
  cardiac-jax convert-geo --geo_dir=geo/ --out=gse175634.h5ad

Every command defines its flags one way (a function here, called just before
parsing, so importing this module defines nothing) and runs one library
call. A user's mistake (bad data, a config that cannot work, no checkpoint)
prints ``cardiac-jax: error: <message>`` and exits with status 2; the Python
traceback only with ``--traceback``. ``--helpshort`` after a command lists its
flags.
"""
from __future__ import annotations

import difflib
import logging as logging_std
import os
import re
import sys
from typing import Callable, NamedTuple

from absl import app
from absl import flags
from absl import logging

from cardiac_jax import compile_cache
from cardiac_jax.data.errors import DataError
from cardiac_jax.errors import CheckpointError
from cardiac_jax.errors import ConfigError

FLAGS = flags.FLAGS
# The errors a user can fix from the message alone: one line, exit status 2.
USER_ERRORS = (DataError, ConfigError, CheckpointError)
PROG = "cardiac-jax"


def _define(name: str, define: Callable[[], None]) -> None:
  """Runs ``define`` unless its first flag exists (a test may define a command twice)."""
  if name not in FLAGS:
    define()


def _common_flags() -> None:
  _define("traceback", lambda: flags.DEFINE_boolean(
      "traceback", False, "On an error, show the Python traceback instead of one line."))


# ---------------------------------------------------------------- train / report


def _train_flags() -> None:
  def define():
    from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
    config_flags.DEFINE_config_file(
        "config", None, "Config file, e.g. configs/debug.py; override fields with "
        "--config.train.num_epochs=3.", lock_config=True)
    flags.DEFINE_string("workdir", None, "Run directory (default runs/<config.name>).")
    flags.DEFINE_enum(
        "mode", "train", ["train", "report"],
        "train: train (resuming if the workdir has a checkpoint), test and report; "
        "report: restore the best checkpoint and rewrite the report without training.")
    flags.mark_flags_as_required(["config"])
  _define("config", define)


class _QuietLibraries(logging_std.Filter):
  """Drops orbax's INFO chatter (a dozen lines per checkpoint); warnings pass."""

  def filter(self, record: logging_std.LogRecord) -> bool:
    return record.levelno >= logging_std.WARNING or "/orbax/" not in record.pathname


def parse_train_flags(argv: list[str]) -> list[str]:
  """Parses flags; an unknown ``--config.*`` field exits with a one-line explanation.

  config_flags reports a misspelt override as a raw KeyError/AttributeError
  traceback from deep inside ml_collections; this names the flag instead.
  """
  try:
    return FLAGS(argv)
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
  from cardiac_jax import config_lib  # pylint: disable=g-import-not-at-top
  from cardiac_jax import fingerprint as fingerprint_lib  # pylint: disable=g-import-not-at-top
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


def train(argv: list[str]) -> None:
  """Trains (or, ``--mode=report``, re-reports) ``--config`` into ``--workdir``."""
  from cardiac_jax import inference  # pylint: disable=g-import-not-at-top
  from cardiac_jax import parallel  # pylint: disable=g-import-not-at-top
  from cardiac_jax import train as train_lib  # pylint: disable=g-import-not-at-top
  _no_arguments(argv)
  parallel.maybe_initialize_distributed()   # multi-host only when JAX_COORDINATOR_* is set
  logging.get_absl_handler().addFilter(_QuietLibraries())
  config = FLAGS.config
  workdir = FLAGS.workdir or os.path.join("runs", config.name)
  logging.info("config %s, workdir %s, mode %s", config.name, workdir, FLAGS.mode)
  if FLAGS.mode == "report":
    inference.evaluate_and_report(config, workdir)
  else:
    train_lib.train_and_evaluate(config, workdir)


# ---------------------------------------------------------------- predict


def _predict_flags() -> None:
  def define():
    flags.DEFINE_string("model", None, "Exported model folder (<workdir>/model) or workdir.")
    flags.DEFINE_string("input", None, "The .h5ad of cells to annotate (raw counts).")
    flags.DEFINE_string("output", None, "The annotated .h5ad to write.")
    flags.DEFINE_string("csv", "", "predictions table (default predictions.csv next to "
                        "--output)")
    flags.DEFINE_string("plots_dir", "", "write the prediction plots (PNG) here; '' = none")
    flags.DEFINE_string("true_key", "", "obs column with known labels, plotted when present")
    flags.DEFINE_string("time_key", "diffday", "obs column of the time points")
    flags.DEFINE_string("counts_layer", "", "layer holding raw counts ('' = X)")
    flags.DEFINE_integer("n_walks", 8, "at most this many walks end at each cell "
                         "(probabilities averaged)")
    flags.DEFINE_float("walk_margin", None, "cells whose first walk's top-two probability "
                       "margin reaches this keep one walk, the rest get --n_walks; unset = "
                       "0.1 for labels, 1 (all walks) for fate models; 1 = every cell "
                       "--n_walks")
    flags.DEFINE_integer("graph_cells_per_day", None, "the walks' steps after their anchor go "
                         "to at most this many random cells per day (every cell is still "
                         "predicted); unset = as many as the model's training walks had, 0 = all cells")
    flags.DEFINE_integer("seed", 0, "seed of the walks")
    flags.DEFINE_string("population_key", "", "fate models: obs column of the populations "
                        "('' = the training data's)")
    flags.DEFINE_string("clone_key", "", "clonal models: obs column of the clone barcodes "
                        "('' = the training data's)")
    flags.DEFINE_string("clone_obsm", "", "clonal models: obsm cells x clones matrix, e.g. "
                        "X_clone (instead of --clone_key)")
    flags.DEFINE_string("section_key", "", "region models: obs column of the sections "
                        "('' = the training data's, e.g. library_id)")
    flags.mark_flags_as_required(["model", "input", "output"])
  _define("model", define)


def predict(argv: list[str]) -> None:
  """Annotates ``--input`` with the exported ``--model`` into ``--output`` (+ csv, plots)."""
  from cardiac_jax import prediction  # pylint: disable=g-import-not-at-top
  _no_arguments(argv)
  f = FLAGS
  written = prediction.predict_file(
      f.model, f.input, f.output, csv_path=f.csv or None, plots_dir=f.plots_dir or None,
      true_key=f.true_key, time_key=f.time_key, counts_layer=f.counts_layer or None,
      n_walks=f.n_walks, walk_margin=f.walk_margin, seed=f.seed,
      graph_cells_per_day=f.graph_cells_per_day, population_key=f.population_key,
      clone_key=f.clone_key, clone_obsm=f.clone_obsm, section_key=f.section_key)
  for what, path in written.items():
    print(f"wrote {what}: {path}")


# ---------------------------------------------------------------- export


def _export_flags() -> None:
  def define():
    flags.DEFINE_string("workdir", None, "Run directory to export (its config.json is read).")
    flags.mark_flag_as_required("workdir")
  _define("workdir", define)


def export(argv: list[str]) -> None:
  """Writes ``<workdir>/model`` for a run trained before runs exported themselves."""
  from cardiac_jax import inference  # pylint: disable=g-import-not-at-top
  _no_arguments(argv)
  print(f"exported {inference.export_workdir(FLAGS.workdir)}")


# ---------------------------------------------------------------- convert-geo


def _geo_flags() -> None:
  def define():
    from cardiac_jax.data import geo  # pylint: disable=g-import-not-at-top
    flags.DEFINE_string("geo_dir", None, "Folder with the GSE175634 supplementary files.")
    flags.DEFINE_string("out", None, "Output .h5ad path.")
    flags.DEFINE_string("prefix", "GSE175634", "File name prefix.")
    flags.DEFINE_enum("orientation", "auto", geo.ORIENTATIONS, "Orientation of the .mtx file.")
    flags.mark_flags_as_required(["geo_dir", "out"])
  _define("geo_dir", define)


def convert_geo(argv: list[str]) -> None:
  """Streams GEO's MatrixMarket counts and TSV tables into one .h5ad."""
  import pathlib  # pylint: disable=g-import-not-at-top
  from cardiac_jax.data import geo  # pylint: disable=g-import-not-at-top
  _no_arguments(argv)
  geo_dir = pathlib.Path(FLAGS.geo_dir)
  paths = {key: geo_dir / f"{FLAGS.prefix}{suffix}" for key, suffix in geo.FILE_SUFFIXES.items()}
  print(f"wrote {geo.convert_geo(**paths, out_h5ad=FLAGS.out, orientation=FLAGS.orientation)}")


# ---------------------------------------------------------------- dispatch


class Command(NamedTuple):
  define_flags: Callable[[], None]
  run: Callable[[list[str]], None]
  parse: Callable[[list[str]], list[str]] | None = None


COMMANDS = {
    "train": Command(_train_flags, train, parse_train_flags),
    "report": Command(_train_flags, train, parse_train_flags),
    "predict": Command(_predict_flags, predict),
    "export": Command(_export_flags, export),
    "convert-geo": Command(_geo_flags, convert_geo),
}


def _no_arguments(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")


def define_flags(command: str) -> None:
  """Defines ``command``'s flags (and ``--traceback``) on ``absl.flags.FLAGS``."""
  _common_flags()
  COMMANDS[command].define_flags()


def guarded(fn: Callable[[list[str]], None]) -> Callable[[list[str]], None]:
  """``fn`` with a user's error as one line on stderr and exit status 2."""
  def run(argv: list[str]) -> None:
    try:
      compile_cache.enable()
      fn(argv)
    except USER_ERRORS as e:
      if FLAGS.traceback:
        raise
      sys.stderr.write(f"{PROG}: error: {e}\n"
                       f"({type(e).__name__}; rerun with --traceback for the details)\n")
      sys.exit(2)
  return run


def main(argv: list[str] | None = None) -> None:
  """``cardiac-jax <command> [flags]`` (the installed console script)."""
  argv = list(sys.argv if argv is None else argv)
  if len(argv) < 2 or argv[1] not in COMMANDS:
    sys.stderr.write(f"usage: {PROG} {{{'|'.join(COMMANDS)}}} [--flags]; --helpshort after "
                     "the command lists its flags\n")
    sys.exit(2)
  command = argv[1]
  rest = [f"{PROG} {command}"] + argv[2:]
  if command == "report":
    rest.append("--mode=report")
  define_flags(command)
  spec = COMMANDS[command]
  app.run(guarded(spec.run), argv=rest, flags_parser=spec.parse or (lambda a: FLAGS(a)))


if __name__ == "__main__":
  main()

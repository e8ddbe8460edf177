"""The installed console command: ``cardiac-jax train|report|predict|export [flags]``.

  cardiac-jax train --config=configs/scale1.py
  cardiac-jax report --config=configs/scale1.py --workdir=runs/scale1
  cardiac-jax predict --model=runs/scale1/model --input=new.h5ad --output=new_annotated.h5ad
  cardiac-jax export --workdir=runs/old_run

Each subcommand is the module's own absl program (``python -m cardiac_jax.main``,
``cardiac_jax.predict``, ``cardiac_jax.export``), so the flags are the same.
"""
from __future__ import annotations

import sys

COMMANDS = ("train", "report", "predict", "export")


def main(argv: list[str] | None = None) -> None:
  argv = list(sys.argv if argv is None else argv)
  if len(argv) < 2 or argv[1] not in COMMANDS:
    sys.stderr.write(f"usage: cardiac-jax {{{'|'.join(COMMANDS)}}} [--flags]; "
                     "--helpshort after the command lists its flags\n")
    sys.exit(2)
  command, rest = argv[1], [f"cardiac-jax {argv[1]}"] + argv[2:]
  from absl import app  # pylint: disable=g-import-not-at-top
  if command in ("train", "report"):
    from cardiac_jax import main as main_lib  # pylint: disable=g-import-not-at-top
    rest.append(f"--mode={command}")
    app.run(main_lib.main, argv=rest, flags_parser=main_lib.parse_flags)
  elif command == "predict":
    import importlib  # pylint: disable=g-import-not-at-top
    # Not "from cardiac_jax import predict": that is the function of the same name.
    importlib.import_module("cardiac_jax.predict").run(rest)
  else:
    from cardiac_jax import export as export_lib  # pylint: disable=g-import-not-at-top
    export_lib._define_flags()  # pylint: disable=protected-access
    app.run(export_lib.main, argv=rest)


if __name__ == "__main__":
  main()

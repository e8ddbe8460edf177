"""The command line: flag errors, train mode with the default workdir, report mode."""
import json
import os
import subprocess
import sys

from absl import flags
import pytest

from cardiac_jax import cli
from cardiac_jax import input_pipeline
from test_train import synthetic_dataset  # pylint: disable=g-bad-import-order

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEBUG = os.path.join(REPO, "configs", "debug.py")
# The same config as test_train.tiny_config(num_epochs=3), so compilations are shared.
TINY = ["--config.model.width=16", "--config.model.num_heads=2", "--config.model.mlp_ratio=2",
        "--config.train.num_epochs=3", "--config.train.eval_batch_size=32",
        "--config.train.learning_rate=0.003"]


@pytest.fixture(autouse=True)
def _reset_flags():
  yield
  flags.FLAGS.unparse_flags()


def parse(monkeypatch, *args):
  """Parses like the command line: config_flags reads overrides from sys.argv."""
  argv = ["prog", f"--config={DEBUG}", *args]
  monkeypatch.setattr(sys, "argv", argv)
  cli.define_flags("train")
  return cli.parse_train_flags(argv)


@pytest.mark.parametrize("override, expected", [
    ("--config.train.nope=1", "--config.train.nope: no config field 'train.nope'."),
    ("--config.trian.num_epochs=1", "did you mean --config.train.num_epochs?"),
])
def test_unknown_config_field_is_a_clear_error(override, expected, capsys, monkeypatch):
  with pytest.raises(SystemExit) as exit_info:
    parse(monkeypatch, override)
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert expected in err and "config_lib.py" in err


def test_unknown_config_field_from_the_command_line():
  """The real entry point (config_flags takes another code path there)."""
  proc = subprocess.run(
      [sys.executable, "-m", "cardiac_jax.main", f"--config={DEBUG}",
       "--config.train.learning_rat=0.1"], cwd=REPO, capture_output=True, text=True,
      timeout=120, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 2, proc.stderr
  assert "did you mean --config.train.learning_rate?" in proc.stderr
  assert "Traceback" not in proc.stderr


def test_train_then_report_mode_rewrites_report_from_best(tmp_path, monkeypatch):
  # Flags are parsed once per process (config_flags registers the overrides as
  # flags), so the later modes are selected by setting the parsed flag values.
  dataset = synthetic_dataset()
  monkeypatch.setattr(input_pipeline, "load_dataset", lambda config: dataset)
  monkeypatch.chdir(tmp_path)
  parse(monkeypatch, *TINY)
  cli.train(["prog"])
  workdir = tmp_path / "runs" / "debug"                       # runs/<config.name>
  with open(workdir / "report.json") as f:
    trained = json.load(f)
  metrics_before = (workdir / "metrics.jsonl").read_text()
  for name in ("report.json", "report.md", "plots/confusion_matrix.png"):
    os.remove(workdir / name)

  flags.FLAGS.mode = "report"
  flags.FLAGS.workdir = str(tmp_path / "empty")
  with pytest.raises(Exception, match="train first"):
    cli.train(["prog"])

  flags.FLAGS.workdir = str(workdir)
  cli.train(["prog"])
  with open(workdir / "report.json") as f:
    reported = json.load(f)
  for key in ("test_acc", "macro_f1", "best_epoch", "epochs_run", "val_acc", "confusion"):
    assert reported[key] == trained[key], key
  assert (workdir / "report.md").stat().st_size > 0
  assert (workdir / "plots" / "confusion_matrix.png").stat().st_size > 0
  assert (workdir / "metrics.jsonl").read_text() == metrics_before    # nothing trained
  assert sorted(os.listdir(workdir / "checkpoints" / "latest")) == ["1", "2", "3"]


def _cli(*args, cwd=REPO):
  return subprocess.run([sys.executable, "-m", "cardiac_jax.cli", *args], cwd=cwd,
                        capture_output=True, text=True, timeout=180,
                        env={**os.environ, "JAX_PLATFORMS": "cpu"})


@pytest.mark.parametrize("args, message", [
    (["train", f"--config={DEBUG}", "--config.data.source=h5ad"], "config.data.path is empty"),
    (["predict", "--model=/nonexistent/model", "--input=x.h5ad", "--output=y.h5ad"],
     "no exported model at /nonexistent/model"),
    (["export", "--workdir=/nonexistent/run"], "no config.json in /nonexistent/run"),
    (["convert-geo", "--geo_dir=/nonexistent/geo", "--out=/tmp/never_written.h5ad"],
     "/nonexistent/geo"),
])
def test_a_users_mistake_is_one_line_and_status_2(args, message, tmp_path):
  proc = _cli(*args, cwd=tmp_path)
  assert proc.returncode == 2, proc.stderr[-2000:]
  errors = [line for line in proc.stderr.splitlines() if line.startswith("cardiac-jax: error:")]
  assert len(errors) == 1 and message in errors[0], proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  assert list(tmp_path.iterdir()) == []          # nothing written where it ran


def test_traceback_flag_shows_the_trace(tmp_path):
  proc = _cli("export", "--workdir=/nonexistent/run", "--traceback", cwd=tmp_path)
  assert proc.returncode != 0 and "Traceback" in proc.stderr and "ConfigError" in proc.stderr

"""The notebooks run top to bottom on the debug preset and write their figures.

Each notebook is executed with nbclient in a python3 kernel of this interpreter;
the test's values (a temp WORKDIR, the session's private dataset cache) are
injected as a cell right after the one tagged "parameters", as papermill does.
Notebooks 02 and 03 share one debug run (03 loads its exported model) trained here with
``train.train_and_evaluate``. The stored notebooks must carry no outputs so they
stay clean in git.
"""
import os
import pathlib
import sys
import time

import nbclient
import nbformat
import pytest

from cardiac_jax import config_lib
from cardiac_jax import report
from cardiac_jax import train

NOTEBOOKS = pathlib.Path(__file__).resolve().parent.parent / "notebooks"
NAMES = ("01_data_exploration.ipynb", "02_training_dashboard.ipynb",
         "03_resume_and_inspect.ipynb")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CELL_TIMEOUT_S = 120
KERNEL_PROBE = "KERNEL_PYTHON="


def _read(name: str) -> nbformat.NotebookNode:
  return nbformat.read(NOTEBOOKS / name, as_version=4)


def _parameters_index(nb: nbformat.NotebookNode) -> int:
  tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
  assert len(tagged) == 1, f"expected one cell tagged 'parameters', found {len(tagged)}"
  return tagged[0]


def _execute(name: str, run_dir: pathlib.Path, **params) -> tuple[nbformat.NotebookNode, float]:
  """Runs a notebook with ``params`` injected after its parameters cell."""
  nb = _read(name)
  lines = [f"{k} = {v!r}" for k, v in params.items()]
  lines.append(f"import sys as _sys; print({KERNEL_PROBE!r} + _sys.executable)")
  injected = nbformat.v4.new_code_cell("\n".join(lines))
  injected.metadata["tags"] = ["injected-parameters"]
  nb.cells.insert(_parameters_index(nb) + 1, injected)
  run_dir.mkdir(parents=True, exist_ok=True)
  client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                                   resources={"metadata": {"path": str(run_dir)}})
  start = time.perf_counter()
  client.execute()     # raises CellExecutionError (with the traceback) on any failing cell
  seconds = time.perf_counter() - start
  print(f"{name}: {seconds:.1f} s")
  return nb, seconds


def _outputs(nb: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
  return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]


def _stdout(nb: nbformat.NotebookNode) -> str:
  return "".join(o.get("text", "") for o in _outputs(nb)
                 if o.output_type == "stream" and o.name == "stdout")


def _n_images(nb: nbformat.NotebookNode) -> int:
  return sum("image/png" in o.get("data", {}) for o in _outputs(nb))


def _check_ran_cleanly(nb: nbformat.NotebookNode) -> None:
  errors = [o for o in _outputs(nb) if o.output_type == "error"]
  assert not errors, errors
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert all(c.execution_count is not None for c in code), "a code cell did not run"
  kernel_python = [ln[len(KERNEL_PROBE):] for ln in _stdout(nb).splitlines()
                   if ln.startswith(KERNEL_PROBE)]
  assert kernel_python, "the injected parameters cell did not run"
  # The kernel must be this venv's interpreter, or it would test another install.
  assert os.path.realpath(kernel_python[0]) == os.path.realpath(sys.executable)


def _assert_pngs(folder: pathlib.Path, names) -> None:
  for name in names:
    path = folder / name
    assert path.is_file(), f"{path} was not written (found {sorted(os.listdir(folder))})"
    assert path.read_bytes()[:8] == PNG_MAGIC, f"{path} is not a PNG"


@pytest.fixture(scope="module", name="trained_workdir")
def _trained_workdir(tmp_path_factory) -> pathlib.Path:
  """One debug run for notebooks 02 and 03 (both only read it)."""
  workdir = tmp_path_factory.mktemp("run")
  config = config_lib.preset("debug")
  results = train.train_and_evaluate(config, str(workdir))
  assert results["epochs_run"] >= 1
  return workdir


@pytest.mark.parametrize("name", NAMES)
def test_stored_notebook_is_clean(name):
  nb = _read(name)
  nbformat.validate(nb)
  assert nb.nbformat == 4
  assert nb.metadata["kernelspec"]["name"] == "python3"
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert code and code[0] is nb.cells[_parameters_index(nb)], "parameters must come first"
  for cell in code:
    assert cell.outputs == [] and cell.execution_count is None, (
        f"{name} is stored with outputs; clear them before committing")
  source = code[0].source
  assert "WORKDIR" in source and "CACHE_DIR" in source


def test_01_data_exploration(tmp_path):
  workdir = tmp_path / "explore"
  nb, _ = _execute(NAMES[0], tmp_path, WORKDIR=str(workdir),
                   CACHE_DIR=os.environ["CARDIAC_JAX_CACHE"])
  _check_ran_cleanly(nb)
  figures = ("embedding_population.png", "embedding_day.png", "composition.png",
             "trajectories.png", "spatial.png")
  _assert_pngs(workdir / "figures", figures)
  assert _n_images(nb) == len(figures)
  out = _stdout(nb)
  for split in ("train", "val", "test"):
    assert f"{split:5s}:" in out


def test_02_training_dashboard(trained_workdir, tmp_path):
  metrics = (trained_workdir / report.METRICS_FILE).read_text()
  nb, _ = _execute(NAMES[1], tmp_path, WORKDIR=str(trained_workdir),
                   CACHE_DIR=os.environ["CARDIAC_JAX_CACHE"])
  _check_ran_cleanly(nb)
  out = _stdout(nb)
  assert "no run in" not in out, "the dashboard retrained instead of reading the run"
  assert (trained_workdir / report.METRICS_FILE).read_text() == metrics
  assert "test accuracy" in out
  _assert_pngs(trained_workdir / "dashboard",
               ("learning_curves.png", "accuracy_gap.png", "confusion_matrix.png"))
  assert _n_images(nb) == 3


def test_03_resume_and_inspect(trained_workdir, tmp_path):
  nb, _ = _execute(NAMES[2], tmp_path, WORKDIR=str(trained_workdir),
                   CACHE_DIR=os.environ["CARDIAC_JAX_CACHE"], NEW_SIMULATOR_SEED=7)
  _check_ran_cleanly(nb)
  out = _stdout(nb)
  assert "no run in" not in out
  assert "model loaded" in out and "new-data accuracy" in out
  _assert_pngs(trained_workdir / "inspect",
               ("confusion_new_data.png", "embedding_predicted_label.png",
                "embedding_confidence.png", "embedding_true_label.png",
                "composition_predicted.png"))
  assert _n_images(nb) == 5

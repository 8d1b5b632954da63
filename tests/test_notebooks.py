"""Runs every notebook in notebooks/ top to bottom (small settings); committed ones are stripped.

Each notebook runs in a kernel of this interpreter (the project's venv when run by `make
test`), with the Agg matplotlib backend and the environment variables the notebooks read for
a tiny budget: TRAPMID_NOTEBOOK_EPOCHS, TRAPMID_NOTEBOOK_FAST and TRAPMID_NOTEBOOK_OUT (an
output folder under the test's tmp_path).
"""

import json
import pathlib
import sys

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK_DIR = pathlib.Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
KERNEL_NAME = "trapmid-tests"


def test_there_are_notebooks():
    assert "01_quickstart.ipynb" in [path.name for path in NOTEBOOKS]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name)
def test_committed_notebook_has_no_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code_cells, f"{path.name} has no code"
    for index, cell in enumerate(code_cells):
        assert cell.outputs == [], f"{path.name}: code cell {index} has outputs"
        assert cell.execution_count is None, f"{path.name}: code cell {index} has a count"


@pytest.fixture
def this_interpreters_kernel(tmp_path, monkeypatch):
    """A kernel spec, found first on JUPYTER_PATH, that runs `sys.executable`."""
    spec_dir = tmp_path / "jupyter" / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "trapmid_tf tests",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    return KERNEL_NAME


@pytest.mark.large  # each notebook trains and attacks (a minute or more)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name)
def test_notebook_runs(path, tmp_path, monkeypatch, this_interpreters_kernel):
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("TRAPMID_NOTEBOOK_EPOCHS", "2")
    monkeypatch.setenv("TRAPMID_NOTEBOOK_FAST", "1")
    monkeypatch.setenv("TRAPMID_NOTEBOOK_OUT", str(tmp_path / "out"))
    notebook = nbformat.read(path, as_version=4)
    notebook.cells.append(nbformat.v4.new_code_cell("import sys\nprint(sys.executable)"))
    client = NotebookClient(
        notebook, timeout=600, kernel_name=this_interpreters_kernel,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()  # raises CellExecutionError, naming the cell, when a cell fails
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert not [o for o in cell.outputs if o.output_type == "error"], cell.source
    printed = "".join(o.get("text", "") for o in notebook.cells[-1].outputs).strip()
    assert printed == sys.executable

"""Runs every notebook top to bottom (small settings) and checks committed outputs are stripped."""

import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((pathlib.Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert [path.name for path in NOTEBOOKS][:2] == [
        "01_quickstart.ipynb", "02_attack_and_evaluate.ipynb"
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name)
def test_committed_notebook_has_no_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, path.name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name)
def test_notebook_runs(path, tmp_path, monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("TRAPMID_NOTEBOOK_EPOCHS", "2")
    monkeypatch.setenv("TRAPMID_NOTEBOOK_FAST", "1")
    monkeypatch.setenv("TRAPMID_NOTEBOOK_OUT", str(tmp_path / "out"))
    notebook = nbformat.read(path, as_version=4)
    # ipykernel's built-in "python3" kernel runs this interpreter (the project's venv); a
    # failing cell raises CellExecutionError.
    client = NotebookClient(
        notebook, timeout=900, kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()
    outputs = [o for cell in notebook.cells for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]

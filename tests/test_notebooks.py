"""The tutorials in notebooks/ are executed (small settings), so they never rot."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NB_DIR = Path(__file__).resolve().parents[1] / "notebooks"


@pytest.mark.parametrize("path", sorted(NB_DIR.glob("*.ipynb")), ids=lambda p: p.stem)
def test_notebook_runs(path):
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NB_DIR)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors


def test_all_four_tutorials_exist():
    names = {p.stem for p in NB_DIR.glob("*.ipynb")}
    assert {"certify_a_model", "lipsdp_maxmin", "safe_step_training", "game_certificate"} <= names

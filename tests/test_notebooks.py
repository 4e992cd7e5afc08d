"""Every notebook in notebooks/ is stored executed, runs top to bottom without errors, and ends
with a cell that checks its own result (an ``assert``)."""

from __future__ import annotations

import ast
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
CELL_TIMEOUT_S = 120
# A guard against a notebook grown to full size (they take 10–40 s on an idle 2-core CPU), not a
# speed test: loose enough that a loaded machine does not fail it.
NOTEBOOK_BUDGET_S = 300


def _code_cells(nb) -> list:
    return [c for c in nb.cells if c.cell_type == "code" and c.source.strip()]


def _asserts(source: str) -> bool:
    """Whether the cell's code checks something: an ``assert`` or a ``*.assert_*`` call."""
    lines = [ln for ln in source.splitlines() if not ln.lstrip().startswith(("%", "!"))]
    tree = ast.parse("\n".join(lines))
    for node in ast.walk(tree):
        if isinstance(node, ast.Assert):
            return True
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name.startswith("assert_"):
                return True
    return False


def test_there_are_notebooks():
    assert NOTEBOOKS, f"no notebooks in {NOTEBOOK_DIR}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_is_stored_executed(path):
    nb = nbformat.read(path, as_version=4)
    cells = _code_cells(nb)
    assert cells, f"{path.name} has no code cells"
    counts = [c.execution_count for c in cells]
    assert all(n is not None for n in counts), f"{path.name}: not stored executed ({counts})"
    assert counts == sorted(counts), f"{path.name}: cells not executed in order ({counts})"
    errors = [o for c in cells for o in c.outputs if o.output_type == "error"]
    assert not errors, f"{path.name}: stored with an error output: {errors[0].get('ename')}"
    assert any(c.outputs for c in cells), f"{path.name}: stored without outputs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs_and_checks_itself(path):
    nb = nbformat.read(path, as_version=4)
    last = _code_cells(nb)[-1]
    assert _asserts(last.source), f"{path.name}: the last code cell should assert its result"

    start = time.perf_counter()
    client = nbclient.NotebookClient(
        nb, timeout=CELL_TIMEOUT_S, kernel_name="python3", allow_errors=False,
        resources={"metadata": {"path": str(NOTEBOOK_DIR)}})
    client.execute()  # raises CellExecutionError (with the traceback) on a failing cell
    elapsed = time.perf_counter() - start

    cells = _code_cells(nb)
    assert all(c.execution_count is not None for c in cells)
    assert not [o for c in cells for o in c.outputs if o.output_type == "error"]
    assert elapsed < NOTEBOOK_BUDGET_S, f"{path.name} took {elapsed:.0f} s"

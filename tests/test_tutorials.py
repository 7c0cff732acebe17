"""Every tutorial notebook runs top to bottom offline, at its default (small) sizes.

The notebooks are executed by nbclient in a fresh ``python3`` kernel whose working directory is
a temporary folder (so nothing they write lands in the repository) and whose ``PYTHONPATH``
starts with the repository root (so they import this checkout of probe_sae). New notebooks in
``tutorials/`` are picked up automatically.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "tutorials").glob("*.ipynb"))
#: seconds per cell; a whole notebook must also finish within NOTEBOOK_BUDGET
CELL_TIMEOUT = 300
NOTEBOOK_BUDGET = 180


def test_there_are_tutorials():
    assert len(NOTEBOOKS) >= 4, NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_committed_without_outputs_and_has_a_full_switch(path: Path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and code[0].source.startswith("FULL = False"), (
        f"{path.name}: the first code cell must be the parameter cell `FULL = False`"
    )
    with_outputs = [i for i, c in enumerate(code) if c.outputs or c.execution_count]
    assert not with_outputs, f"{path.name}: clear the outputs of code cells {with_outputs}"
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3", path.name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # the kernel inherits this environment: one OpenMP thread (the test machine has 2 shared
    # cores) and this checkout first on the path
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    )
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        timeout=CELL_TIMEOUT,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError with the failing cell's traceback
    elapsed = time.perf_counter() - start
    assert elapsed < NOTEBOOK_BUDGET, f"{path.name} took {elapsed:.0f} s at FULL = False"

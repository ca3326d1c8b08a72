"""The kernel runner of tests/test_notebooks.py (docs/nbrun.py) runs what nbdev's test runner runs, no more.

docs/nbrun.py does the running: nbclient (what `jupyter execute` uses), this environment's `python3`
kernel (the pinned stack), the notebook's folder as working directory, offline, the cells nbdev's
test runner runs (those flagged `notest` or `slow` are left out), one fresh kernel per notebook.
A failing cell fails the test with that cell's traceback (nbclient's `CellExecutionError`).
"""
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT/'docs'))
from nbrun import kernel_notebook, run_in_kernel   # noqa: E402


def test_flagged_cells_stay_out(tmp_path):
    "Only the cells the test runner runs reach the kernel: `#| slow` and `#| notest` do not"
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(s) for s in ('x = 1', '#| slow\nraise SystemExit("slow ran")',
                                                       '#| notest\nraise SystemExit("notest ran")', 'assert x == 1')]
    nbformat.write(nb, tmp_path/'t.ipynb')
    assert [c.source for c in kernel_notebook(tmp_path/'t.ipynb', ['notest', 'slow']).cells] == ['x = 1', 'assert x == 1']
    out, _ = run_in_kernel(tmp_path/'t.ipynb', ['notest', 'slow'])
    assert [c.execution_count for c in out.cells] == [1, 2]

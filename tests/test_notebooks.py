"""Every notebook in nbs/ runs top to bottom through nbdev's own test runner, one test each.

Cells flagged with one of `[tool.nbdev] tst_flags` (`notest`, `slow`) are skipped, as `nbdev-test`
does; the traceback of a failing cell is printed to stderr by nbdev.
"""
from pathlib import Path
import pytest
from nbdev.config import get_config
from nbdev.test import test_nb as run_notebook

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT/'nbs').glob('*.ipynb'))

def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 2, 'nbs/ should hold index.ipynb and the stage notebooks'

@pytest.mark.parametrize('nb', NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook(nb):
    flags = get_config(ROOT).tst_flags.split()
    ok, secs = run_notebook(nb, skip_flags=flags, showerr=True)
    assert ok, f'{nb.name} failed: see the traceback printed above'

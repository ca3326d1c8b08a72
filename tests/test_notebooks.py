"""Every notebook in nbs/ runs top to bottom through nbdev's own test runner, one test each.

Cells flagged with one of `[tool.nbdev] tst_flags` (`notest`, `slow`) are skipped, as `nbdev-test`
does; the traceback of a failing cell is printed to stderr by nbdev.
"""
import json
from pathlib import Path
import pytest
from nbdev.config import get_config
from nbdev.test import test_nb as run_notebook

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT/'nbs').glob('*.ipynb'))

def _default_exp(nb:Path):
    for c in json.loads(nb.read_text())['cells']:
        src = ''.join(c['source'])
        if c['cell_type'] == 'code' and src.startswith('#| default_exp '): return src.split()[2]

def test_every_module_comes_from_a_notebook():
    "Each module of the package is exported by exactly one NN_name notebook, and nbs/ holds the page and the index too"
    exported = [m for nb in NOTEBOOKS if (m := _default_exp(nb))]
    modules = sorted(p.stem for p in (ROOT/'bear_classifier').glob('*.py') if not p.stem.startswith('_'))
    assert sorted(exported) == modules, f"notebooks export {sorted(exported)}, the package holds {modules}"
    assert {'app.ipynb', 'index.ipynb'} <= {nb.name for nb in NOTEBOOKS}
    assert len(NOTEBOOKS) == len(exported) + 2, 'every notebook but the page and the index exports a module'

@pytest.mark.parametrize('nb', NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook(nb):
    flags = get_config(ROOT).tst_flags.split()
    ok, secs = run_notebook(nb, skip_flags=flags, showerr=True)
    assert ok, f'{nb.name} failed: see the traceback printed above'

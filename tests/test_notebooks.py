"""Every notebook in nbs/ runs top to bottom in a real Jupyter kernel, as an author runs it (Run All), one test each.

docs/nbrun.py does the running: nbclient (what `jupyter execute` uses), this environment's `python3` kernel
(the pinned stack), the notebook's folder as working directory, offline, one fresh kernel per notebook, and
the cells nbdev's test runner runs: those flagged with one of `[tool.nbdev] tst_flags` (`notest`, `slow`) are
left out (`make test-slow` runs them too, through `nbdev-test`). A failing cell fails the test with that
cell's traceback (nbclient's `CellExecutionError`). This replaces nbdev's in-process runner in the suite:
running both cost as much again for the same cells.
"""
import json, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT/'docs'))
from nbrun import run_in_kernel   # noqa: E402

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
    run_in_kernel(nb)

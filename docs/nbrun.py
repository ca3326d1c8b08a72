"""Run a notebook of nbs/ top to bottom in a real Jupyter kernel, as an author does (Run All in JupyterLab).

`nbclient` (what `jupyter execute` uses) starts the `python3` kernel of this environment (jupyter_client
starts it with the running interpreter, so the pinned stack), in the notebook's folder, and runs the
cells that nbdev's test runner runs: cells flagged with one of `[tool.nbdev] tst_flags` (`notest`,
`slow`) or `#| eval: false` are left out (nbdev's own `nb_test_cells` picks them), everything else
executes in order. Offline: the kernel's proxy variables point at a closed loopback port, so code
that tries the network fails at once instead of waiting (loopback stays direct).

Used by tests/test_kernel_run.py (every notebook, in the suite) and docs/build.py (`make docs`: the
outputs and plots of the site's pages).
"""
from __future__ import annotations
import os, socket, sys, time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellTimeoutError
from nbdev.config import get_config
from nbdev.test import nb_test_cells

ROOT = Path(__file__).resolve().parents[1]
# A cell that needs longer belongs behind `#| slow`. ipykernel 7 and its clients now and then lose a
# message and wait forever (jupyter/nbclient#312, microsoft/vscode-jupyter#17228): a notebook whose
# cell times out runs once more, in a new kernel, before it counts as failed.
CELL_TIMEOUT_S = 300


def skip_flags() -> list[str]:
    "The flags whose cells the suite leaves out: `[tool.nbdev] tst_flags`"
    return get_config(ROOT).tst_flags.split()


def kernel_notebook(path, flags=None) -> nbformat.NotebookNode:
    "The notebook at `path` with only the cells nbdev's test runner runs (and all markdown cells)"
    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    keep = {c.id for c in nb_test_cells(path, skip_flags=skip_flags() if flags is None else flags)}
    nb.cells = [c for c in nb.cells if c.cell_type == 'markdown' or c.get('id') in keep]
    return nb


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def offline_env() -> dict:
    "This environment, with every proxy variable on a closed loopback port (loopback itself direct)"
    proxy, env = f'http://127.0.0.1:{_closed_port()}', dict(os.environ)
    for k in ('http_proxy', 'https_proxy', 'all_proxy'): env[k] = env[k.upper()] = proxy
    env['no_proxy'] = env['NO_PROXY'] = '127.0.0.1,localhost,::1'
    return env


def run_in_kernel(path, flags=None) -> tuple[nbformat.NotebookNode, float]:
    "Execute `path`'s test cells in a fresh `python3` kernel in its folder: (the executed notebook, seconds)"
    path, t0 = Path(path), time.time()
    for attempt in (1, 2):
        nb = kernel_notebook(path, flags)
        if not any(c.cell_type == 'code' for c in nb.cells): return nb, 0.0     # e.g. the page: its one cell is `notest`
        client = NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name='python3', allow_errors=False,
                                resources={'metadata': {'path': str(path.parent)}})
        try:
            client.execute(env=offline_env())
            return nb, time.time() - t0
        except CellTimeoutError:
            if attempt == 2: raise
            print(f'{path.name}: a cell got no answer within {CELL_TIMEOUT_S}s; running the notebook again in a new kernel',
                  file=sys.stderr, flush=True)

"""Authoring as a person does it: `make lab`'s JupyterLab server, Debian's chromium driven by playwright.

The server runs the very command of the Makefile's `lab` target (`make lab`, with a free port, no
browser of its own and a temporary root), so nothing in the checkout changes. In that root: a copy of
the page (`nbs/app.ipynb`, with `pyproject.toml` and `voila.json` so that it finds its settings) and a
small notebook that opens `PersistentCleaner` (nbs/09b_cleaner.ipynb) on a tiny dataset
(`testing.photo_dataset`), as nbs/08_clean.ipynb describes, with Train/Valid items given directly
rather than a trained learner (09b_cleaner runs the learner version in tests/test_kernel_run.py),
so the test spends its time in the browser. It runs that notebook from JupyterLab's menus, CLICKS
the widget (category, Train/Valid, one image to Delete, one to another label), checks
`decisions.json`, restarts the kernel from the menu ("Restart Kernel and Run All Cells"; the
kernel's process id changes), sees both choices back in the dropdowns, and asks
`bear-clean-apply --dry-run` what it would do. Then the same server's Voilà preview
(/voila/render/nbs/app.ipynb) classifies a photo. Neither page fetches anything from outside
127.0.0.1. Screenshots go to tests/artifacts/lab_*.png."""
import json, os, re, secrets, shutil, signal, socket, subprocess, sys, time
from pathlib import Path

import nbformat
import pytest
from PIL import Image

from bear_classifier import testing
from bear_classifier.clean import DELETE, default_decisions_path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ARTIFACTS = ROOT/'tests'/'artifacts'
CHROMIUM, CHROMIUM_ARGS = testing.CHROMIUM, testing.CHROMIUM_ARGS
STARTUP_S = 180          # the Lab server on a busy 2-core machine
STEP_MS = 180_000        # a kernel start + `import fastai` + one cell, on a busy 2-core machine

pytestmark = pytest.mark.browser

CELLS = [
    ('markdown', "# Cleaning a tiny dataset\n\nThe cleaner of `09b_cleaner` on a few crops of scikit-image photos."),
    ('code', "import os\n"
             "from pathlib import Path\n"
             "from bear_classifier.testing import photo_dataset\n"
             "from bear_classifier.cleaner import PersistentCleaner\n"
             "root = Path({root!r})\n"
             "if not root.exists(): photo_dataset(root, n=6)\n"
             "files = sorted(root.glob('*/*.jpg'))\n"
             "print(f'kernel process {{os.getpid()}}: {{len(files)}} photos')"),
    ('markdown', "Train and Valid as a learner would split them; the score orders the carousel (highest first)."),
    ('code', "split = lambda f: 'Valid' if int(f.stem) >= 4 else 'Train'\n"
             "items = {{s: [(f, f.parent.name, 10 - int(f.stem)) for f in files if split(f) == s] for s in ('Train', 'Valid')}}\n"
             "cleaner = PersistentCleaner(items=items, root=root)\n"
             "cleaner"),
]


def lab_notebook(path:Path, root:Path):
    "The notebook the test opens in JupyterLab: PersistentCleaner over `root` (made by photo_dataset when missing)"
    nb = nbformat.v4.new_notebook(metadata={'kernelspec': {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}})
    new = {'markdown': nbformat.v4.new_markdown_cell, 'code': nbformat.v4.new_code_cell}
    nb.cells = [new[kind](src.format(root=str(root))) for kind, src in CELLS]
    nbformat.write(nb, path)
    return path


def lab_root(tmp:Path) -> Path:
    "A root for the server: the page with what it reads (pyproject.toml, voila.json), and the test's notebook"
    d = tmp/'lab'
    (d/'nbs').mkdir(parents=True)
    for name in ('pyproject.toml', 'voila.json', 'nbs/app.ipynb'): shutil.copy(ROOT/name, d/name)
    lab_notebook(d/'nbs'/'lab_cleaner.ipynb', tmp/'data'/'photos')
    return d


@pytest.fixture(scope='module')
def lab(tmp_path_factory):
    "`make lab` on a free port, rooted in a temporary folder; yields (base URL, token, root, log)"
    if not Path(CHROMIUM).exists(): pytest.fail(f'{CHROMIUM} not found: apt-get install chromium (.ci/run does)')
    tmp = tmp_path_factory.mktemp('lab')
    root, port, token, log = lab_root(tmp), testing.free_port(), secrets.token_hex(16), tmp/'make-lab.log'
    env = {k: v for k, v in os.environ.items() if not k.startswith(('BEAR_', 'JUPYTER'))}
    env |= dict(JUPYTER_TOKEN=token, JUPYTER_RUNTIME_DIR=str(tmp/'runtime'), JUPYTERLAB_WORKSPACES_DIR=str(tmp/'workspaces'),
                JUPYTERLAB_SETTINGS_DIR=str(tmp/'settings'), BEAR_MODEL_DIR=str(testing.starter_bundle()),
                BEAR_LOG_DB=str(tmp/'predictions.sqlite'))
    venv = Path(sys.prefix)
    # -o: never reinstall from a test (the stamp counts as up to date); VENV: this interpreter's environment
    cmd = ['make', '--no-print-directory', '-C', str(ROOT), '-o', str(venv/'.stamp-install'), 'lab', f'VENV={venv}',
           f'LAB_PORT={port}', f'LAB_ROOT={root}', 'LAB_OPEN=False']
    proc = subprocess.Popen(cmd, env=env, stdout=open(log, 'w'), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        try: testing.wait_listening(proc, port, log, 'make lab', STARTUP_S)
        except RuntimeError as e: pytest.fail(str(e))
        yield f'http://127.0.0.1:{port}', token, root, log
    finally: testing.stop_group(proc)


@pytest.fixture(scope='module')
def browser(lab):
    from playwright.sync_api import sync_playwright
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def shot(page, name): page.screenshot(path=str(ARTIFACTS/f'lab_{name}.png'))


def new_page(browser, **kw):
    "A page that records every URL it asks for (nothing may come from outside 127.0.0.1)"
    page = browser.new_page(**kw)
    page.requests = []
    page.on('request', lambda r: page.requests.append(r.url))
    return page


def outside(page):
    return [u for u in page.requests if not re.match(r'^(https?|wss?)://127\.0\.0\.1[:/]', u) and not u.startswith(('data:', 'blob:'))]


def menu(page, top, item):
    "Click JupyterLab's menu `top` (e.g. 'Run'), then its entry `item`"
    page.locator('.lm-MenuBar-itemLabel', has_text=top).first.click()
    page.locator('.lm-Menu-itemLabel', has_text=item).first.click()


def kernel_idle(page):
    "Wait until the status bar says the notebook's kernel is idle (a Run before the kernel is connected does nothing)"
    page.wait_for_selector('.jp-StatusBar-Item >> text=/\\| Idle$/', timeout=STEP_MS)


def no_news(page):
    "Answer JupyterLab's one question about its news feed, as a person would (No), so that the toast leaves"
    no = page.locator('.jp-toast-button', has_text='No')
    if no.count(): no.first.click()


def selects(page):
    "The dropdowns of the cleaner's output: category, split, then one per image"
    return page.locator('.jp-OutputArea-output .widget-dropdown select')


def wait_cleaner(page, n_images):
    page.wait_for_function(f"document.querySelectorAll('.jp-OutputArea-output .widget-dropdown select').length == {2 + n_images}",
                           timeout=STEP_MS)


def show(page, cat, split):
    "Choose the category and the split in the cleaner, as a person would"
    selects(page).nth(0).select_option(label=cat)
    selects(page).nth(1).select_option(label=split)
    wait_cleaner(page, 2)


def kernel_line(page) -> str:
    "What the first cell printed: the kernel's process id (a restart changes it)"
    return page.locator('.jp-OutputArea-output', has_text='kernel process').first.inner_text().strip()


def decisions_file(lab): return default_decisions_path(lab[2].parent/'data'/'photos')


def wait_decisions(path, n, timeout=60):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if path.exists() and len(json.loads(path.read_text())['decisions']) >= n: return json.loads(path.read_text())
        time.sleep(0.5)
    pytest.fail(f'{path} did not get {n} decisions within {timeout}s')


def test_cleaner_in_jupyterlab(lab, browser):
    base, token, root, log = lab
    assert f'{base}/lab/tree/nbs?token=' in log.read_text()        # where it opens, with the token (`...` when given in JUPYTER_TOKEN)
    page = new_page(browser, viewport={'width': 1280, 'height': 900})
    page.goto(f'{base}/lab/tree/nbs/lab_cleaner.ipynb?token={token}', timeout=STARTUP_S*1000)
    page.wait_for_selector('.jp-Notebook', timeout=STEP_MS)
    kernel_idle(page)
    no_news(page)
    shot(page, '0_opened')
    menu(page, 'Run', 'Run All Cells')
    wait_cleaner(page, 4)                                   # Train, cat: 000..003
    shot(page, '1_cleaner')
    show(page, 'coffee', 'Valid')                           # coffee/004.jpg, coffee/005.jpg
    imgs = selects(page)
    imgs.nth(2).select_option(label=DELETE)
    imgs.nth(3).select_option(label='cat')
    dec = wait_decisions(decisions_file(lab), 2)['decisions']
    shot(page, '2_chosen')
    assert {k: (d['action'], d['to']) for k, d in dec.items()} == {'coffee/004.jpg': ('trash', None), 'coffee/005.jpg': ('relabel', 'cat')}
    # the kernel restarts from the menu; the notebook runs again and the cleaner shows both choices back
    before = kernel_line(page)
    assert before.endswith(': 12 photos'), before
    menu(page, 'Kernel', 'Restart Kernel and Run All Cells')
    page.locator('.jp-Dialog-button.jp-mod-accept').click()
    page.wait_for_function(f"![...document.querySelectorAll('.jp-OutputArea-output')].some(e => e.textContent.includes({before!r}))"
                           f" && [...document.querySelectorAll('.jp-OutputArea-output')].some(e => e.textContent.includes('kernel process'))",
                           timeout=STEP_MS)                 # a new process printed its line
    wait_cleaner(page, 4)
    show(page, 'coffee', 'Valid')
    try: page.wait_for_function("JSON.stringify(Array.from(document.querySelectorAll('.jp-OutputArea-output .widget-dropdown select'))"
                                ".slice(2).map(s => s.options[s.selectedIndex].text)) == JSON.stringify(['<Delete>', 'cat'])", timeout=30_000)
    except Exception: pass                                   # the assert below says what the dropdowns show
    values = [imgs.nth(i).evaluate('s => s.options[s.selectedIndex].text') for i in (2, 3)]
    shot(page, '3_after_restart')
    assert values == [DELETE, 'cat'], values
    assert kernel_line(page) != before                       # another kernel process
    assert page.locator('.jp-OutputArea-output', has_text='1 to trash, 1 to relabel').count() == 1
    out = subprocess.run([str(BIN/'bear-clean-apply'), str(decisions_file(lab)), '--dry-run'], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = [l.split() for l in out.stdout.splitlines()]
    assert ['trash', 'coffee/004.jpg', '../.trash/<stamp>/coffee/004.jpg'] in lines, out.stdout
    assert ['relabel', 'coffee/005.jpg', 'cat/005-1.jpg'] in lines, out.stdout
    assert 'dry run: 2 move(s) planned, nothing changed' in out.stdout
    assert page.requests and not outside(page), outside(page)
    page.close()


def test_voila_preview(lab, browser, tmp_path):
    "The page, from the same server: /voila/render/nbs/app.ipynb classifies one photo (a grizzly from ../shared/data when there is one)"
    base, token, root, log = lab
    page = new_page(browser, viewport={'width': 900, 'height': 1000})
    page.goto(f'{base}/voila/render/nbs/app.ipynb?token={token}', timeout=STEP_MS)
    page.wait_for_selector('.bear-model-text', timeout=STEP_MS)
    assert not page.title().startswith('Voil')                      # the page names itself (from the model card)
    folder = testing.shared_data('bears_shift', 'grizzly')
    photos = sorted(folder.glob('*.jpg')) if folder else []
    if photos: im, grizzly = Image.open(photos[0]).convert('RGB'), True
    else: im, grizzly = testing.sample_photos()['chelsea'], False
    p = tmp_path/'photo.jpg'; im.save(p, quality=92)
    with page.expect_file_chooser() as fc: page.click('.bear-upload')
    fc.value.set_files(str(p))
    page.wait_for_function("document.querySelector('.bear-upload').textContent.includes('(1)')", timeout=STEP_MS)
    page.click('.bear-classify')
    page.wait_for_function("document.querySelector('.bear-upload').textContent.includes('(0)')", timeout=STEP_MS)
    text = page.inner_text('.bear-prediction').strip()
    shot(page, '4_preview')
    if grizzly: assert text.startswith('Prediction: grizzly; Probability: '), text
    else: assert text == 'This does not look like a bear', text
    assert page.locator('.bear-probs-table tr').count() == 3
    assert not outside(page), outside(page)            # the page's own template (share/jupyter/voila/templates/bear): no CDN
    page.close()

"Shared fixtures: the reference images beside the checkout, real photos, and the slow flag (all from bear_classifier.testing)."
from pathlib import Path
import pytest
from bear_classifier import testing

ROOT = Path(__file__).resolve().parents[1]

def pytest_addoption(parser):
    parser.addoption('--runslow', action='store_true', default=False, help='also run tests marked slow')

def pytest_collection_modifyitems(config, items):
    if config.getoption('--runslow'): return
    skip = pytest.mark.skip(reason='slow: run with --runslow (make test-slow)')
    for item in items:
        if 'slow' in item.keywords: item.add_marker(skip)

@pytest.fixture(scope='session')
def root(): return ROOT

@pytest.fixture(scope='session')
def shared_data():
    "../shared/data (reference photos): skipped with a clear reason where a checkout has none"
    return testing.require_shared_data('bears').parent

@pytest.fixture(scope='session')
def sample_photos():
    "Real photos that ship inside scikit-image and scikit-learn, as PIL images by name"
    return testing.sample_photos()

# ---- browser tests: never skipped silently (issue 14) -----------------------------------------------
# Debian's chromium drives the tests marked `browser`. Missing: installed with apt when we are root (as
# .ci/run does), else the run stops at once with one line saying how to get it. The summary says how
# many browser tests ran; a browser test skipped for want of a browser makes the run fail.
import os, shutil, subprocess
_browser = {}          # nodeid -> ('passed' | 'failed' | 'skipped', skip reason): the worst of its phases

def chromium_problem():
    "None when chromium is there (after installing it with apt where we can); else one line saying how to get it"
    if Path(testing.CHROMIUM).exists(): return None
    if os.geteuid() == 0 and shutil.which('apt-get'):
        print(f'\n{testing.CHROMIUM} not found: installing Debian\'s chromium with apt-get for the browser tests', flush=True)
        subprocess.run('apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core',
                       shell=True, env=dict(os.environ, DEBIAN_FRONTEND='noninteractive'))
        if Path(testing.CHROMIUM).exists(): return None
    return (f'{testing.CHROMIUM} not found, and the browser tests drive it: install it with `sudo apt-get install chromium` '
            '(Debian/Ubuntu; .ci/run does), or leave the browser tests out with `make test-fast`')

def pytest_collection_finish(session):
    if any('browser' in i.keywords for i in session.items) and (problem := chromium_problem()):
        pytest.exit(problem, returncode=1)

def pytest_runtest_logreport(report):
    if 'browser' not in report.keywords: return
    rank = {'passed': 0, 'skipped': 1, 'failed': 2}
    reason = str(report.longrepr[-1]) if report.skipped and isinstance(report.longrepr, tuple) else ''
    if rank[report.outcome] >= rank[_browser.get(report.nodeid, ('passed', ''))[0]]: _browser[report.nodeid] = (report.outcome, reason)

def _no_browser(reason): return 'chromium' in reason.lower() or 'browser' in reason.lower()

def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not _browser: return
    n = {k: sum(v[0] == k for v in _browser.values()) for k in ('passed', 'failed', 'skipped')}
    blind = sum(v[0] == 'skipped' and _no_browser(v[1]) for v in _browser.values())
    bad = n['failed'] or blind
    terminalreporter.write_line(f"browser tests: {n['passed'] + n['failed']} ran in {testing.CHROMIUM} ({n['passed']} passed, "
                                f"{n['failed']} failed), {n['skipped']} skipped" + (' (reasons above)' if n['skipped'] else '')
                                + (f'; {blind} skipped for want of a browser: the run fails' if blind else ''),
                                red=bool(bad), green=not bad, bold=True)

def pytest_sessionfinish(session, exitstatus):
    if exitstatus == 0 and any(v[0] == 'skipped' and _no_browser(v[1]) for v in _browser.values()): session.exitstatus = 1

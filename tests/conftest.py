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

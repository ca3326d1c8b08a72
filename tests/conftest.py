"Shared fixtures: the reference images beside the checkout, real photos, and the slow flag."
import os
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get('BEAR_SHARED_DATA', ROOT.parent/'shared'/'data'))

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
    if not (SHARED_DATA/'bears').is_dir():
        pytest.skip(f'reference images not found at {SHARED_DATA} (a fresh clone has no ../shared/data)')
    return SHARED_DATA

@pytest.fixture(scope='session')
def sample_photos():
    "Real photos that ship inside scikit-image and scikit-learn, as PIL images by name"
    from PIL import Image
    from skimage import data as sk
    from sklearn.datasets import load_sample_images
    photos = {n: Image.fromarray(getattr(sk, n)()) for n in ('chelsea', 'coffee', 'astronaut', 'rocket')}
    china, flower = load_sample_images().images
    photos.update(china=Image.fromarray(china), flower=Image.fromarray(flower))
    return photos

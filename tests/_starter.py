"""The offline starter model bundle, built once per test session (in a temporary folder) for the
app's test files; building it takes tens of seconds on a busy machine."""
import atexit, shutil, tempfile
from functools import cache
from pathlib import Path


@cache
def starter_bundle() -> Path:
    from bear_classifier.export import build_starter
    root = Path(tempfile.mkdtemp(prefix='bear-starter-'))
    atexit.register(shutil.rmtree, root, True)
    return build_starter(root/'models')

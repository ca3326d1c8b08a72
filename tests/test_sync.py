"""The committed modules are exactly what `nbdev-export` makes of the committed notebooks,
and the notebooks are clean (what `nbdev-clean` would leave)."""
import filecmp, shutil, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

def _copy_project(dest):
    for name in ('nbs', 'bear_classifier'):
        shutil.copytree(ROOT/name, dest/name, ignore=shutil.ignore_patterns('__pycache__', '.ipynb_checkpoints'))
    shutil.copy(ROOT/'pyproject.toml', dest/'pyproject.toml')
    return dest

def _diff(a, b, pattern):
    fa = sorted(p.relative_to(a) for p in a.rglob(pattern) if '__pycache__' not in p.parts)
    fb = sorted(p.relative_to(b) for p in b.rglob(pattern) if '__pycache__' not in p.parts)
    missing = sorted(set(fa) ^ set(fb))
    changed = [str(p) for p in set(fa) & set(fb) if not filecmp.cmp(a/p, b/p, shallow=False)]
    return [str(p) for p in missing], sorted(changed)

def test_modules_match_notebooks(tmp_path):
    work = _copy_project(tmp_path)
    shutil.rmtree(work/'bear_classifier')
    (work/'bear_classifier').mkdir()
    shutil.copy(ROOT/'bear_classifier'/'__init__.py', work/'bear_classifier'/'__init__.py')
    subprocess.run([BIN/'nbdev-export'], cwd=work, check=True, capture_output=True)
    missing, changed = _diff(ROOT/'bear_classifier', work/'bear_classifier', '*.py')
    assert not missing and not changed, (
        f'run nbdev-export and commit: modules differ from notebooks (missing/extra {missing}, changed {changed})')

def test_notebooks_are_clean(tmp_path):
    work = _copy_project(tmp_path)
    subprocess.run([BIN/'nbdev-clean'], cwd=work, check=True, capture_output=True)
    missing, changed = _diff(ROOT/'nbs', work/'nbs', '*.ipynb')
    assert not changed, f'run nbdev-clean and commit: these notebooks are not clean: {changed}'

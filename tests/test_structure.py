"""The shape of the package (DESIGN.md "Layers"): imports point down the layer list only, front ends never
import each other, nothing imports the test fixtures, sizes stay readable, and each mechanism has one home."""
import ast, re, subprocess, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT/'bear_classifier'
# DESIGN.md's layers, top (imported by everything) to bottom; a module may import only modules listed before it
LAYERS = ['files', 'core', 'images', 'manifest', 'journal', 'predlog', 'download', 'collect', 'data', 'distrib', 'train', 'clean', 'suspects', 'cleaner',
          'bundle', 'ood', 'inference', 'bulk', 'export', 'monitor', 'launch', 'app', 'service', 'api', 'testing', 'cluster']
FRONT_ENDS = {'app': set(), 'service': {'app'}, 'api': {'app'}}   # front end -> modules it must never import
MAX_MODULE, MAX_FUNCTION = 450, 60

def modules() -> dict:
    return {p.stem: p for p in sorted(PKG.glob('*.py')) if not p.stem.startswith('_')}

def imports_of(path:Path) -> set:
    "Package modules imported anywhere in `path` (top level or inside functions)"
    out, names = set(), set(modules())
    for n in ast.walk(ast.parse(path.read_text())):
        if isinstance(n, ast.ImportFrom):
            if n.level: mod = (n.module or '').split('.')[0] or None
            elif (n.module or '').startswith('bear_classifier.'): mod = n.module.split('.')[1]
            else: continue
            out.update({mod} if mod else {a.name for a in n.names})
        elif isinstance(n, ast.Import):
            out.update(a.name.split('.')[1] for a in n.names if a.name.startswith('bear_classifier.'))
    return (out & names) - {path.stem}

def test_every_module_has_a_layer():
    unknown = sorted(set(modules()) - set(LAYERS))
    assert not unknown, f"modules not in the layer list of tests/test_structure.py (add them where they belong): {unknown}"

def test_imports_point_down():
    rank = {m: i for i, m in enumerate(LAYERS)}
    up = [f"{m} -> {t}" for m, p in modules().items() for t in sorted(imports_of(p)) if rank.get(t, -1) >= rank.get(m, 0)]
    assert not up, f"imports that point up (or sideways) the layer list: {up}"

def test_front_ends_do_not_import_each_other_and_nothing_imports_testing():
    "Test harnesses listed after `testing` (the local cluster) may use it; no product module may"
    rank = {m: i for i, m in enumerate(LAYERS)}
    bad = [f"{m} -> {t}" for m, p in modules().items() for t in imports_of(p)
           if t in FRONT_ENDS.get(m, set()) or (t == 'testing' and rank[m] < rank['testing']) or (m not in FRONT_ENDS and m != 'testing' and t in FRONT_ENDS)]
    assert not bad, f"forbidden imports: {bad}"

def test_service_does_not_load_widgets():
    code = "import bear_classifier.api, sys; assert 'ipywidgets' not in sys.modules, 'api imports ipywidgets'"
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]

def test_sizes():
    big = {m: n for m, p in modules().items() if (n := len(p.read_text().splitlines())) > MAX_MODULE}
    long = [f"{m}.{f.name}: {f.end_lineno - f.lineno + 1}" for m, p in modules().items()
            for f in ast.walk(ast.parse(p.read_text())) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
            and f.end_lineno - f.lineno + 1 > MAX_FUNCTION]
    assert not big and not long, f"modules over {MAX_MODULE} lines: {big}; functions over {MAX_FUNCTION} lines: {long}"

# One mechanism, one home: the calls below may appear only in the module that owns the mechanism.
OWNERS = {
    r'\bos\.replace\(|\bos\.rename\(|tempfile\.mkstemp|NamedTemporaryFile': ({'files'}, 'atomic writes: files.atomic_write/atomic_path/temp_dir'),
    r'datetime\.now\(|datetime\.utcnow\(|time\.strftime\(': ({'files'}, 'the clock: files.utc_now/utc_stamp'),
    r'hashlib\.sha256': ({'files'}, 'hashing: files.sha256_file/sha256_bytes'),
    r"environ(\.get)?\(?\[?\s*['\"]BEAR_|getenv\(['\"]BEAR_": ({'files', 'app'}, 'settings: files.settings()/Settings.from_env'),
    r'\bsqlite3\.|\.execute\(|\bsqlalchemy\b': ({'predlog'}, 'SQL: bear_classifier.predlog'),
    r'ImageOps\.exif_transpose|UnidentifiedImageError|DecompressionBomb': ({'images'}, 'decoding: images.decode_bytes/decode_file'),
}

@pytest.mark.parametrize('pattern', list(OWNERS), ids=[v[1].split(':')[0] for v in OWNERS.values()])
def test_one_home_per_mechanism(pattern):
    owners, what = OWNERS[pattern]
    found = [f"{m}:{i}" for m, p in modules().items() if m not in owners | {'testing'}
             for i, line in enumerate(p.read_text().splitlines(), 1) if re.search(pattern, line)]
    assert not found, f"{what} — written again in {found}"

def test_no_class_extended_by_assignment():
    "fastcore's @patch splits a class across cells; `Cls.name = fn` hides methods from readers and tools"
    hits = [f"{m}:{n.lineno}" for m, p in modules().items() for n in ast.walk(ast.parse(p.read_text()))
            if isinstance(n, ast.Assign) and any(isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name)
               and t.value.id[:1].isupper() and isinstance(n.value, ast.Name) and n.value.id.startswith('_') for t in n.targets)]
    assert not hits, f"methods attached by assignment (use @patch): {hits}"

def test_readme_lists_every_setting():
    from bear_classifier.files import settings_table
    assert settings_table() in (ROOT/'README.md').read_text(), "README's settings table is stale: paste settings_table()"

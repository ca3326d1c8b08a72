"""Fault injection (issue 16): `kill -9` at random instants of the real commands, then recovery with the real commands.

* `bear-clean-apply` on 180 tiny JPEGs with 120 trash and relabel decisions, killed after a random delay; then
  `bear-clean-undo` (itself killed at a random instant in some points, and run again), or `bear-clean-apply` again (it
  resumes) and `bear-clean-undo`: no image is ever lost, every image is where the journal and the manifest say, and
  every command still works.
* `bear-starter --dest DIR` killed at a random stage of replacing a bundle (its temporary folder made, each file written,
  the swap): the folder holds the old bundle or the new one, complete (every file matches its card), never none; the
  next start removes the `.tmp-*` folders that killed builds left.
* `bear-serve` under concurrent load, killed and restarted: the prediction log opens, and every answered id has its row.

The default suite runs a few kill points of each; `--runslow` runs 40 clean-apply and 10 export points (the 50 of
issue 16). Each point's delay comes from a fixed seed, and the points are printed (`-s`), so a run can be compared
with another; the real timing of a kill still varies with the machine's load, which is the point.
"""
import io, json, os, random, shutil, signal, subprocess, sys, time
from pathlib import Path

import pytest
from PIL import Image

from bear_classifier.files import sha256_file
from bear_classifier.clean import Decisions, find_journals, latest_journal, read_journal, trash_root
from bear_classifier.manifest import append_manifest, last_rows, usable_files

BIN = Path(sys.executable).parent
LABELS = ('black', 'grizzly', 'teddy')


def run(*args, timeout=300, **kw):
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout, **kw)


def kill_after(args, delay:float, **kw) -> subprocess.CompletedProcess|None:
    "Start `args`, SIGKILL it after `delay` seconds; the CompletedProcess when it finished first, else None"
    p = subprocess.Popen([str(a) for a in args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)
    try:
        out, err = p.communicate(timeout=delay)
        return subprocess.CompletedProcess(p.args, p.returncode, out, err)
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGKILL)
        p.communicate()
        return None


# ---------------------------------------------------------------------------------------------------------------
# bear-clean-apply

def tiny_jpeg(i:int) -> bytes:
    "A distinct 8x8 JPEG for number `i`"
    rnd = random.Random(i)
    im = Image.new('RGB', (8, 8), tuple(rnd.randrange(256) for _ in range(3)))
    im.putpixel((i % 8, (i // 8) % 8), (i % 256, (i // 256) % 256, 7))
    buf = io.BytesIO(); im.save(buf, 'JPEG', quality=95)
    return buf.getvalue()


@pytest.fixture(scope='module')
def template(tmp_path_factory):
    "A dataset of 180 tiny photos with a manifest, and decisions: 1/3 trash, 1/3 relabel (onto taken names: `-1` names)"
    base = tmp_path_factory.mktemp('faults')
    root = base/'data'/'bears'
    rows = []
    for i in range(180):
        f = root/LABELS[i % 3]/f'{i % 60:03d}.jpg'
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(tiny_jpeg(i))
        rows.append(dict(file=f.relative_to(root).as_posix(), label=f.parent.name, source='folder', url=f'u{i}', status='ok'))
    append_manifest(root, rows)
    dec = Decisions(base/'data'/'bears-clean'/'decisions.json', root)
    for i, r in enumerate(rows):
        if i % 3 == 0: dec.items[r['file']] = dict(action='trash', label=r['label'], to=None, reason='kill test',
                                                    sha256=sha256_file(root/r['file']), time='')
        elif i % 3 == 1:                  # relabel into the next label: the same name is taken there, so -1 names
            to = LABELS[(LABELS.index(r['label']) + 1) % 3]
            dec.items[r['file']] = dict(action='relabel', label=r['label'], to=to, reason='', sha256=None, time='')
    dec.save()
    return base


def snapshot(root:Path) -> dict:
    "sha256 -> every path (relative to root's parent) holding it: the dataset and its trash"
    out = {}
    for top in (root, trash_root(root)):
        for p in sorted(top.rglob('*.jpg')) if top.exists() else []:
            out.setdefault(sha256_file(p), []).append(p.relative_to(root.parent).as_posix())
    return out


def check_nothing_lost(root:Path, before:dict, decisions:dict):
    "Every original image is somewhere it should be: its own name, its trash copy, or its new label folder"
    now = snapshot(root)
    for sha, (orig,) in before.items():
        assert sha in now, f"{orig} is lost (sha256 {sha[:12]} nowhere under {root.parent})"
        key = orig.split('/', 1)[1]
        d = decisions.get(key)
        for where in now[sha]:
            ok = where == orig
            if d and d['action'] == 'trash': ok |= where.startswith('.trash/') and where.endswith('/' + key)
            if d and d['action'] == 'relabel': ok |= where.startswith(f"bears/{d['to']}/{Path(key).stem}")
            assert ok, f"{orig} turned up at {where}, where no decision sends it"
    assert len(sum(now.values(), [])) <= len(before) + 1, "more copies than images (only a half-done move links two names)"


def check_manifest_agrees(root:Path):
    "Every image in a label folder is usable (its last row is ok, with its folder as label); nothing usable is missing"
    on_disk = {p.relative_to(root).as_posix() for p in root.glob('*/*.jpg')}
    assert {p.relative_to(root).as_posix() for p in usable_files(root)} == on_disk
    last = last_rows(root)
    for f in on_disk:
        assert last[f]['label'] == f.split('/')[0] and last[f]['status'] == 'ok', last[f]
    gone = {f for f, r in last.items() if r['status'] in ('trashed', 'relabelled')}
    assert not gone & on_disk


def check_applied(root:Path, decisions:dict, before:dict):
    "After a finished (resumed) apply: every decision carried out, once; the manifest says so"
    now, last = snapshot(root), last_rows(root)
    for sha, (orig,) in before.items():
        key = orig.split('/', 1)[1]
        d = decisions.get(key)
        (where,) = now[sha]
        if d is None: assert where == orig
        elif d['action'] == 'trash': assert where.startswith('.trash/') and last[key]['status'] == 'trashed', (where, last[key])
        else: assert where.startswith(f"bears/{d['to']}/") and last[key]['status'] == 'relabelled', (where, last[key])
    check_manifest_agrees(root)


def check_undone(root:Path, before:dict):
    "After the undo: byte-identical images at their old names, an empty trash, the manifest agrees, no apply left to undo"
    now = snapshot(root)
    assert {s: p for s, p in now.items()} == before, "the undo did not restore every image to its own name"
    check_manifest_agrees(root)
    assert latest_journal(root) is None
    assert all(read_journal(j)['undone'] for j in find_journals(root))


def clean_kill_point(template:Path, work:Path, seed:int, full_s:float, start_s:float=0.3) -> str:
    "One kill point: copy the template, kill bear-clean-apply after a random delay, recover, check; what happened"
    rnd = random.Random(seed)
    shutil.copytree(template, work)
    root, dpath = work/'data'/'bears', work/'data'/'bears-clean'/'decisions.json'
    before = {s: p for s, p in snapshot(root).items()}
    decisions = json.loads(dpath.read_text())['decisions']
    delay = rnd.uniform(start_s, full_s)       # before `start_s` Python is still starting up
    done = kill_after([BIN/'bear-clean-apply', dpath, '--root', root], delay)
    check_nothing_lost(root, before, decisions)
    how = 'finished' if done else f'killed at {delay:.2f}s'
    if done: assert done.returncode == 0, done.stderr
    if rnd.random() < 0.5:                                        # resume: apply again, then undo everything
        r = run(BIN/'bear-clean-apply', dpath, '--root', root)
        assert r.returncode == 0, f"{how}: re-apply failed: {r.stderr}"
        check_applied(root, decisions, before)
        how += ', resumed'
    if not find_journals(root):                                   # killed before the first journal record: nothing moved
        assert snapshot(root) == before
        return how + ', nothing had moved'
    undo = [BIN/'bear-clean-undo', '--root', root]
    if rnd.random() < 0.4:                                        # kill the undo too, then undo again
        delay = rnd.uniform(start_s, full_s)
        done = kill_after(undo, delay)
        check_nothing_lost(root, before, decisions)
        how += ', undo finished' if done else f', undo killed at {delay:.2f}s'
        if done: assert done.returncode == 0, done.stderr
        if done or latest_journal(root) is None:                  # it finished (perhaps killed just after its last record)
            check_undone(root, before)
            return how + ', complete'
    r = run(*undo)
    assert r.returncode == 0, f"{how}: undo failed ({r.returncode}): {r.stderr}"
    assert 'NOT restored' not in r.stderr
    check_undone(root, before)
    return how + ', undone'


def full_apply_seconds(template:Path, work:Path) -> float:
    "How long one whole bear-clean-apply of the template takes here, now"
    shutil.copytree(template, work)
    t = time.monotonic()
    r = run(BIN/'bear-clean-apply', work/'data'/'bears-clean'/'decisions.json', '--root', work/'data'/'bears')
    assert r.returncode == 0, r.stderr
    return time.monotonic() - t


def startup_seconds() -> float:
    "How long the command takes to start (and refuse) here, now: kills before that move nothing"
    t = time.monotonic()
    run(BIN/'bear-clean-undo', '--root', '/nonexistent/dataset')
    return time.monotonic() - t


def kill_points(template, tmp_path, n:int, seed0:int):
    full_s, start_s = full_apply_seconds(template, tmp_path/'full'), startup_seconds()
    log = [clean_kill_point(template, tmp_path/f'k{i}', seed0 + i, full_s, min(0.8 * start_s, 0.5 * full_s)) for i in range(n)]
    inside = sum('killed' in h and 'nothing had moved' not in h for h in log)
    print(f"\n{n} kill points of bear-clean-apply (a full apply takes {full_s:.2f}s, starting {start_s:.2f}s; "
          f"{inside} kills fell inside the apply, {sum('undo killed' in h for h in log)} inside an undo):\n  " + '\n  '.join(log))
    assert inside >= max(1, n // 4), f"too few points fell inside the apply: {log}"
    return log


def test_kill_clean_apply(template, tmp_path):
    kill_points(template, tmp_path, 6, seed0=1600)


@pytest.mark.slow
def test_kill_clean_apply_many(template, tmp_path):
    kill_points(template, tmp_path, 40, seed0=16000)


def test_undo_says_what_it_could_not_restore(template, tmp_path):
    "A file removed from the trash by hand: undo restores the rest, names it on stderr, exits 1, and can be re-run"
    shutil.copytree(template, tmp_path/'w')
    root, dpath = tmp_path/'w'/'data'/'bears', tmp_path/'w'/'data'/'bears-clean'/'decisions.json'
    before = snapshot(root)
    assert run(BIN/'bear-clean-apply', dpath, '--root', root).returncode == 0
    victim = sorted(trash_root(root).rglob('*.jpg'))[0]
    kept = victim.read_bytes(); victim.unlink()
    r = run(BIN/'bear-clean-undo', '--root', root)
    assert r.returncode == 1
    lines = [l for l in r.stderr.splitlines() if 'not restored:' in l]
    assert len(lines) == 1 and victim.name in lines[0] and 'gone' in lines[0], r.stderr
    assert latest_journal(root) is not None                    # not marked undone: it did not succeed
    victim.write_bytes(kept)                                    # the user puts it back; the second run finishes
    r = run(BIN/'bear-clean-undo', '--root', root)
    assert r.returncode == 0, r.stderr
    check_undone(root, before)


# ---------------------------------------------------------------------------------------------------------------
# bear-starter / bear-export: bundle replacement


def bundle_state(models:Path, name:str='starter') -> str:
    "'version@created' of the complete bundle `models/name` (every file checked against its card); AssertionError otherwise"
    from bear_classifier.bundle import verify_bundle
    d = models/name
    assert d.is_dir(), f"no bundle at {d}: a crash left the models folder without one"
    card = verify_bundle(d)
    return f"{card['version']}@{card['created']}"


@pytest.fixture(scope='module')
def starter() -> Path:
    "The starter bundle (`testing.starter_bundle`, built once per process)"
    from bear_classifier.testing import starter_bundle
    return starter_bundle()


STAGES = ('tmp', 'export.pkl', 'model.safetensors', 'model.onnx', 'model.json', 'swapped')

def kill_at(models:Path, stage:str, extra:float, timeout:float=900) -> tuple[str, list]:
    """Run `bear-starter --dest models` and SIGKILL it `extra` seconds after it reaches `stage`: its temporary folder
    exists / holds that file / the new bundle was swapped in. (what happened, the temp folders that the run found)"""
    card, old = models/'starter'/'model.json', (models/'starter'/'model.json').read_bytes()
    earlier = {d.name for d in models.glob('.tmp-*')}
    p = subprocess.Popen([str(BIN/'bear-starter'), '--dest', str(models)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0, seen = time.monotonic(), None
    while time.monotonic() - t0 < timeout:
        if p.poll() is not None: return f'finished ({p.returncode}) before {stage}', seen or []
        mine = [d for d in models.glob('.tmp-starter-*') if d.name not in earlier]
        if mine and seen is None: seen = sorted(d.name for d in models.glob('.tmp-*') if d.name in earlier)   # left when it began
        hit = (stage == 'tmp' and mine) or (stage == 'swapped' and card.exists() and card.read_bytes() != old) \
              or (mine and (mine[0]/stage).exists())
        if hit: break
        time.sleep(0.02)
    time.sleep(extra)
    p.send_signal(signal.SIGKILL); p.communicate()
    return f'killed {extra:.2f}s after {stage} ({time.monotonic() - t0:.0f}s in)', seen or []


def starter_kill_points(bundle:Path, tmp_path, n:int, seed0:int):
    "`n` kills of `bear-starter --dest` over an existing bundle at random stages: old or new bundle, complete, never none"
    from bear_classifier.inference import Predictor
    models = tmp_path/'models'
    shutil.copytree(bundle, models/'starter')
    log, stale = [], []
    for i in range(n):
        rnd = random.Random(seed0 + i)
        stage = 'tmp' if i == n - 1 else STAGES[(seed0 + i) % len(STAGES)]   # every stage in turn; the last: did this start
                                                                               # clean up what the killed ones left?
        before = bundle_state(models)
        what, left_at_start = kill_at(models, stage, rnd.uniform(0, 0.05 if stage == 'swapped' else 1.0))
        after = bundle_state(models)                                # old or new, complete; never none
        log.append(f"{what}: {'new' if after != before else 'old'} bundle")
        if i: stale.append(left_at_start)
    Predictor.load(models/'starter')
    print(f"\n{n} kill points of bear-starter:\n  " + '\n  '.join(log))
    assert not any(stale), (f"temporary folders of killed builds were still there after the next bear-starter began: "
                            f"{stale} (issue 16.4: remove stale .tmp-* at the start; export/bundle side, not done yet)")


def test_kill_starter(starter, tmp_path):
    starter_kill_points(starter, tmp_path, 2, seed0=1703)     # 1703 % 6 == 5: killed right after the swap, then 'tmp'


@pytest.mark.slow
def test_kill_starter_many(starter, tmp_path):
    starter_kill_points(starter, tmp_path, 10, seed0=17000)


# ---------------------------------------------------------------------------------------------------------------
# bear-serve under load


def start_serve(bundle:Path, log:Path, env:dict) -> tuple[subprocess.Popen, str]:
    "bear-serve on a free port with the prediction log `log`; (process, url) once /health says ready"
    import httpx, re
    proc = subprocess.Popen([str(BIN/'bear-serve'), '--model-dir', str(bundle), '--port', '0', '--log', str(log), '--workers', '2',
                             '--no-access-log', '--log-level', 'warning'], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    line = proc.stdout.readline()
    m = re.search(r'listening on (http://127\.0\.0\.1:\d+)', line)
    assert m, line
    for _ in range(2400):
        try:
            if httpx.get(f"{m.group(1)}/health", timeout=5).status_code == 200: return proc, m.group(1)
        except httpx.HTTPError: pass
        time.sleep(0.05)
    raise AssertionError('bear-serve did not become ready')


def load(url:str, photos:list, stop, answered:list):
    "POST photos to /predict until `stop` is set (or the server dies); the ids of the answers go into `answered`"
    import httpx
    with httpx.Client(timeout=30) as c:
        i = 0
        while not stop.is_set():
            try: r = c.post(f"{url}/predict", content=photos[i % len(photos)], headers={'content-type': 'image/jpeg'})
            except httpx.HTTPError: return                      # killed
            if r.status_code == 200: answered.append(r.json()['id'])
            i += 1


def test_kill_serve_under_load(starter, tmp_path):
    "bear-serve killed with -9 (twice) while 6 clients post photos; restarted: the log opens and every answered id has its row"
    import threading
    from bear_classifier.predlog import PredictionLog
    from bear_classifier.testing import image_bytes, sample_photos
    photos = [image_bytes(im, size=160) for im in sample_photos().values()]
    log, env = tmp_path/'predictions.sqlite', {k: v for k, v in os.environ.items() if not k.startswith('BEAR_')}
    answered, report = [], []
    for point in range(2):
        proc, url = start_serve(starter, log, env)
        stop, mine = threading.Event(), []
        clients = [threading.Thread(target=load, args=(url, photos, stop, mine)) for _ in range(6)]
        for c in clients: c.start()
        time.sleep(random.Random(1800 + point).uniform(1.0, 4.0))
        proc.send_signal(signal.SIGKILL); proc.wait()
        stop.set()
        for c in clients: c.join(30)
        db = PredictionLog(log)                                   # readable after the kill, every row of it
        assert len(db.rows()) == db.count()
        missing = [i for i in mine if i is not None and db.get(i) is None]
        assert not missing, f"answered ids without a row after kill -9: {missing[:10]}"
        report.append(f"{len(mine)} answered ({sum(i is None for i in mine)} without an id), {db.count()} rows")
        answered += mine; db.close()
    proc, url = start_serve(starter, log, env)                  # and it still works
    try:
        import httpx
        r = httpx.post(f"{url}/predict", content=photos[0], headers={'content-type': 'image/jpeg'}, timeout=60)
        assert r.status_code == 200 and PredictionLog(log).get(r.json()['id']) is not None
    finally:
        proc.send_signal(signal.SIGTERM); proc.communicate(timeout=30)
    print("\nbear-serve killed under load twice:\n  " + "\n  ".join(report))
    assert sum(i is not None for i in answered) > 10

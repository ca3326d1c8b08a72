"Cleaning: persistent decisions, apply/undo round trips that lose nothing, the cleaner widget, and the label-issue ranking."
import json, shutil, subprocess, sys
from pathlib import Path

import pytest

from bear_classifier.files import sha256_file
from bear_classifier.manifest import append_manifest, read_manifest
from bear_classifier.testing import photo_dataset, require_shared_data
from bear_classifier.clean import DELETE, KEEP, Decisions, apply_decisions, latest_journal, read_journal, trash_root, undo_apply
from bear_classifier.cleaner import PersistentCleaner
from bear_classifier.suspects import LABEL_ISSUE, rank_label_issues

BIN = Path(sys.executable).parent


def snapshot(root):
    "Every file under `root` (manifest excluded) -> sha256"
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(root.rglob('*'))
            if p.is_file() and p.name != 'manifest.csv'}


@pytest.fixture
def dataset(tmp_path):
    root = photo_dataset(tmp_path/'data'/'photos', n=4)
    append_manifest(root, [dict(file=p.relative_to(root).as_posix(), label=p.parent.name, source='folder', url=f'u{i}',
                                status='ok') for i, p in enumerate(sorted(root.glob('*/*.jpg')))])
    return root


def run(*args):
    return subprocess.run([str(a) for a in args], capture_output=True, text=True)


def test_apply_undo_round_trip(dataset, tmp_path):
    root, before = dataset, snapshot(dataset)
    dec = Decisions(tmp_path/'decisions.json', root)
    dec.set('cat/000.jpg', DELETE, reason='blurry')
    dec.set('coffee/001.jpg', 'cat')                     # cat/001.jpg exists: must not be overwritten
    dec.set('coffee/002.jpg', 'tea')                     # a new label folder
    dec.set('coffee/003.jpg', KEEP)
    n_rows = len(read_manifest(root))

    dry = run(BIN/'bear-clean-apply', tmp_path/'decisions.json', '--dry-run')
    assert dry.returncode == 0, dry.stderr
    assert 'cat/001-1.jpg' in dry.stdout and 'tea/002.jpg' in dry.stdout and 'nothing changed' in dry.stdout
    assert snapshot(root) == before and len(read_manifest(root)) == n_rows

    res = run(BIN/'bear-clean-apply', tmp_path/'decisions.json')
    assert res.returncode == 0, res.stderr
    after = snapshot(root)
    assert after['cat/001.jpg'] == before['cat/001.jpg']           # the clash overwrote nothing
    assert after['cat/001-1.jpg'] == before['coffee/001.jpg']
    assert after['tea/002.jpg'] == before['coffee/002.jpg']
    assert after['coffee/003.jpg'] == before['coffee/003.jpg']
    assert not {'cat/000.jpg', 'coffee/001.jpg', 'coffee/002.jpg'} & set(after)
    journal = latest_journal(root)
    assert journal.parent.parent == trash_root(root) == root.parent/'.trash'
    assert sha256_file(journal.parent/'cat'/'000.jpg') == before['cat/000.jpg']   # trash mirrors the relative path
    assert f'bear-clean-undo {journal}' in res.stdout

    rows = read_manifest(root)[n_rows:]
    got = [(r['file'], r['label'], r['status']) for r in rows]
    assert got == [('cat/000.jpg', 'cat', 'trashed'),
                   ('coffee/001.jpg', 'cat', 'relabelled'), ('cat/001-1.jpg', 'cat', 'ok'),
                   ('coffee/002.jpg', 'tea', 'relabelled'), ('tea/002.jpg', 'tea', 'ok')]
    assert rows[0]['reason'].startswith('trash: blurry')
    assert rows[1]['reason'].startswith('relabel:coffee->cat by cleaner')
    assert all(r['timestamp'] and r['sha256'] for r in rows)
    assert rows[2]['url'] == next(r['url'] for r in read_manifest(root) if r['file'] == 'coffee/001.jpg')   # provenance kept
    j = read_journal(journal)
    assert [(m['op'], m['src'], m['dest']) for m in j['moves']] == [
        ('trash', 'cat/000.jpg', f'../.trash/{journal.parent.name}/cat/000.jpg'),
        ('relabel', 'coffee/001.jpg', 'cat/001-1.jpg'), ('relabel', 'coffee/002.jpg', 'tea/002.jpg')]

    # applying the same decisions again changes nothing
    again = apply_decisions(tmp_path/'decisions.json')
    assert again['moves'] == [] and snapshot(root) == after

    undo = run(BIN/'bear-clean-undo', '--root', root)
    assert undo.returncode == 0, undo.stderr
    assert '3 file(s) restored' in undo.stdout
    restored = snapshot(root)
    assert {k: v for k, v in restored.items() if not k.startswith('tea/')} == before   # byte-identical, same places
    assert not list((root/'tea').glob('*'))
    assert not [p for p in journal.parent.rglob('*.jpg')]                               # trash emptied
    rows = read_manifest(root)
    last = {r['file']: r for r in rows}
    assert last['cat/000.jpg']['status'] == 'ok' and last['coffee/001.jpg']['status'] == 'ok'
    assert last['cat/001-1.jpg']['status'] == 'relabelled' and last['coffee/001.jpg']['label'] == 'coffee'
    assert all(r['reason'].startswith('undo ') for r in rows[-5:])
    assert read_journal(journal)['undone']
    assert latest_journal(root) is None
    nothing = run(BIN/'bear-clean-undo', '--root', root)
    assert nothing.returncode != 0 and len(nothing.stderr.strip().splitlines()) == 1
    assert nothing.stderr.startswith('bear-clean-undo: no apply to undo')


def test_undo_never_overwrites_a_new_file(dataset, tmp_path):
    root = dataset
    old = (root/'cat'/'000.jpg').read_bytes()
    dec = Decisions(tmp_path/'d.json', root)
    dec.set('cat/000.jpg', DELETE)
    j = apply_decisions(dec)
    (root/'cat'/'000.jpg').write_bytes(b'a new photo with the old name')
    res = undo_apply(Path(j['journal']).parent.name, root=root)       # the apply's stamp is enough
    assert (root/'cat'/'000.jpg').read_bytes() == b'a new photo with the old name'
    assert (root/'cat'/'000-1.jpg').read_bytes() == old
    assert res['problems'] == [] and res['notes'] == ['cat/000.jpg was taken: restored as cat/000-1.jpg']
    with pytest.raises(ValueError, match='already undone'): undo_apply(j['journal'])


def test_stale_or_bad_decisions_touch_nothing(dataset, tmp_path):
    root = dataset
    dec = Decisions(tmp_path/'d.json', root)
    dec.set('cat/000.jpg', DELETE)
    dec.set('cat/001.jpg', '../escape')
    (root/'cat'/'000.jpg').write_bytes(b'replaced after the decision')
    outside = root.parent/'outside.jpg'; outside.write_bytes(b'not part of the dataset')
    data = json.loads((tmp_path/'d.json').read_text())          # a hand-edited decisions file
    data['decisions']['../outside.jpg'] = dict(action='trash', label='cat', to=None, reason='', sha256=None, time='')
    (tmp_path/'d.json').write_text(json.dumps(data))
    before = snapshot(root)
    res = apply_decisions(tmp_path/'d.json')
    assert res['moves'] == [] and snapshot(root) == before and outside.exists()
    assert sorted(o['skip'] for o in res['plan']) == ["file changed since the decision", "invalid label '../escape'", 'outside the dataset']
    bad = tmp_path/'bad.json'; bad.write_text('not json')
    r = run(BIN/'bear-clean-apply', bad)
    assert r.returncode != 0 and r.stderr.strip().splitlines() == [r.stderr.strip()]
    assert 'is not a decisions file' in r.stderr and bad.read_text() == 'not json'


def test_decisions_survive_a_new_cleaner(dataset, tmp_path):
    root = dataset
    files = sorted(root.glob('*/*.jpg'))
    items = {'Train': [(f, f.parent.name, i) for i, f in enumerate(files) if i % 4],
             'Valid': [(f, f.parent.name, i) for i, f in enumerate(files) if not i % 4]}
    path = tmp_path/'cleaner.json'
    c = PersistentCleaner(items=items, decisions=path)
    assert c.dd_cats.options == ('cat', 'coffee') and c.dd_ds.options == ('Train', 'Valid')
    c.dd_ds.value, c.dd_cats.value = 'Train', 'cat'
    a = c.fns[0]
    c.choose(a, 'coffee')
    c.dd_cats.value = 'coffee'                                 # fastai's cleaner forgets here
    b = c.fns[-1]
    c.choose(b, DELETE)
    c.dd_ds.value = 'Valid'
    c.dd_ds.value = 'Train'; c.dd_cats.value = 'cat'
    assert c.iw.widget.children[list(c.fns).index(a)].children[-1].value == 'coffee'
    assert '1 to trash, 1 to relabel' in c.status.value

    c2 = PersistentCleaner(items=items, decisions=path)        # as after a kernel restart
    c2.dd_ds.value, c2.dd_cats.value = 'Train', 'cat'
    assert c2.iw.widget.children[list(c2.fns).index(a)].children[-1].value == 'coffee'
    c2.dd_cats.value = 'coffee'
    assert c2.iw.widget.children[list(c2.fns).index(b)].children[-1].value == DELETE
    assert Decisions(path).pending().keys() == {a.relative_to(root).as_posix(), b.relative_to(root).as_posix()}

    # fastai's own ImagesCleaner, with the store attached, restores the same choices (outside IPython too)
    from fastai.vision.widgets import ImagesCleaner
    iw = Decisions(path).watch(ImagesCleaner(('cat', 'coffee')))
    iw.set_fns([a, b])
    assert [box.children[-1].value for box in iw.widget.children] == ['coffee', DELETE]
    iw.widget.children[1].children[-1].value = KEEP
    assert Decisions(path).value(b) == KEEP


def test_cleaner_tolerates_an_unreadable_image(dataset, tmp_path):
    bad = dataset/'cat'/'broken.jpg'; bad.write_bytes(b'\xff\xd8 not really a jpeg')
    c = PersistentCleaner(items={'All': [(bad, 'cat', 1.0)]}, decisions=tmp_path/'d.json')
    assert c.iw.widget.children[0].children[0].value[:4] == b'\x89PNG'


def test_ranking_puts_a_flipped_label_in_the_top_3(tmp_path):
    bears = require_shared_data('bears')
    root = tmp_path/'bears'
    for label in ('grizzly', 'black', 'teddy'):
        (root/label).mkdir(parents=True)
        for f in sorted((bears/label).glob('*.jpg'))[20:32]:
            shutil.copy(f, root/label/f.name)
    src = sorted((root/'teddy').glob('*.jpg'))[3]
    shutil.move(src, root/'grizzly'/f'flipped-{src.name}')     # a teddy filed under grizzly
    ranking = rank_label_issues(root, cache=tmp_path/'features')
    top = list(ranking.file[:3])
    assert f'grizzly/flipped-{src.name}' in top, ranking.head(5)
    row = ranking.set_index('file').loc[f'grizzly/flipped-{src.name}']
    assert row.kind == LABEL_ISSUE and row.suggested_label == 'teddy'
    assert len(ranking) == 36 and ranking.score.is_monotonic_decreasing


def test_report_command(dataset, tmp_path):
    (dataset/'cat'/'broken.jpg').write_bytes(b'garbage')
    out = tmp_path/'report'
    r = run(BIN/'bear-clean-report', dataset, '--out', out, '--top', '5')
    assert r.returncode == 0, r.stderr
    assert {p.name for p in out.iterdir()} == {'suspects.csv', 'ranking.csv', 'suspects.png', 'report.json'}
    assert 'cat/broken.jpg' in r.stdout and 'unreadable' in r.stdout
    head = (out/'suspects.csv').read_text().splitlines()[0]
    assert head == 'file,given_label,suggested_label,score,kind,detail'
    c = PersistentCleaner.from_ranking(out/'ranking.csv', decisions=tmp_path/'d.json')
    assert Path(c.fns[0]).name == 'broken.jpg'
    r = run(BIN/'bear-clean-report', tmp_path/'nope')
    assert r.returncode != 0 and r.stderr.strip().startswith('bear-clean-report: ') and len(r.stderr.strip().splitlines()) == 1


def test_importing_the_cleaning_modules_leaves_fastai_alone():
    "Importing clean, suspects or cleaner patches nothing in fastai; only `fastai_display()` does, for its block"
    code = ("import fastai.vision.widgets as w, bear_classifier.clean, bear_classifier.suspects, bear_classifier.cleaner\n"
            "from bear_classifier.clean import fastai_display\n"
            "assert 'display' not in vars(w)\n"
            "with fastai_display(): assert callable(w.display)\n"
            "assert 'display' not in vars(w)\n"
            "import sys; print('ipywidgets' in sys.modules)")
    r = run(sys.executable, '-c', code)
    assert r.returncode == 0, r.stderr
    r = run(sys.executable, '-c', "import sys, bear_classifier.clean; print(sorted(m for m in ('fastai', 'ipywidgets', 'torch') if m in sys.modules))")
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr     # bear-clean-apply/undo load no widgets, no torch

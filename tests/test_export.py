"""Model bundles: the card, pickle-free weights, the kNN "none of these", any labels, atomic writes, "latest", ensure_bundle,
the build lock, and the guarded unpickling of runs and bundles."""
import json, os, shutil, signal, subprocess, sys, threading, time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import bear_classifier.export as ex
from bear_classifier.core import create_model, efficientnet_lite0
from bear_classifier.files import sha256_file
from bear_classifier.bundle import (latest_bundle, list_bundles, read_card, verify_bundle, load_bundle_learner, preprocessing_from_learner,
                                    install_bundle, building, BundleError, UnsafeModelError, NAB_PREFIX, CARD_SCHEMA)
from bear_classifier.export import export_bundle, ensure_bundle, bear_export, check_run_pickle
from bear_classifier.files import temp_dir
from bear_classifier.inference import Predictor, none_text
from bear_classifier.ood import BANK_FILE, MASS_FLOOR, MASS_CEIL, calibrate, knn_scores, l2_normalize
from bear_classifier.testing import tiny_run, starter_bundle, sample_photos

CARD_KEYS = {'schema', 'name', 'kind', 'version', 'created', 'vocab', 'task', 'architecture', 'input', 'normalization', 'metrics',
             'none_of_these', 'validation', 'data', 'files', 'packages', 'run', 'checks'}

def vouch(run):
    "Write the run's export_sha256 as bear-train does (a no-op once testing.tiny_run writes it)"
    p = run/'model_config.json'; cfg = json.loads(p.read_text())
    p.write_text(json.dumps(dict(cfg, export_sha256=sha256_file(run/'export.pkl'))))
    return run

@pytest.fixture(scope='module')
def run(tmp_path_factory):
    "A tiny training run (1 epoch, 64 px, centre-crop Resize) in the runs/<name>/ layout"
    return vouch(tiny_run(tmp_path_factory.mktemp('runs')/'tiny', size=64, method='crop', epochs=1))

@pytest.fixture(scope='module')
def bundle(run, tmp_path_factory):
    return export_bundle(run, dest=tmp_path_factory.mktemp('models'))

def test_card(bundle, run):
    card = read_card(bundle)
    assert CARD_KEYS <= set(card)
    assert card['kind'] == 'trained' and card['name'] == 'tiny' and card['vocab'] == ['black', 'grizzly', 'teddy']
    assert card['architecture'] == dict(backbone='lite0', n_out=3, head='fastai', ps=0.5)
    assert card['input'] == dict(size=[64, 64], resize_method='crop', pad_mode='reflection', resample='bilinear')
    assert card['normalization']['mean'] == [0.5] * 3 and card['normalization']['std'] == [0.5] * 3
    assert card['metrics'] == json.loads((run/'report'/'metrics.json').read_text())
    assert card['schema'] == CARD_SCHEMA == 2 and card['task'] is None
    nab = card['none_of_these']                       # the default detector, whatever the labels
    assert (nab['method'], nab['k'], nab['bank'], nab['bank_n']) == ('knn', 6, BANK_FILE, 6)   # k <= the 6 training photos
    cal = nab['calibration']
    assert (cal['method'], cal['n'], cal['quantile'], cal['k']) == ('validation quantile', 6, 0.02, 6)
    assert cal['threshold'] == nab['threshold'] and -1 <= nab['threshold'] <= 1 and 0 <= cal['rejected_on_validation'] <= 1
    v = card['validation']
    assert v['n'] == 6 and abs(sum(v['label_mix'].values()) - 1) < 1e-9 and 0 < v['mean_confidence'] <= 1
    assert 0 <= v['accuracy'] <= 1
    assert set(v['answer_counts']) == {'black', 'grizzly', 'teddy', 'none_of_these'} and sum(v['answer_counts'].values()) == 6
    assert v['answer_counts']['none_of_these'] == round(6 * (1 - v['in_domain_rate']))
    assert len(v['confidences']) == 6 and v['confidences'] == sorted(v['confidences'])
    assert card['data']['n_train'] == 6 and card['data']['n_valid'] == 6
    assert card['data']['split_sha256'] == sha256_file(run/'split.csv')
    assert card['checks']['parity_learn_predict']['max_abs_diff'] < 1e-3 and card['checks']['parity_onnx']['max_abs_diff'] < 1e-3
    assert card['packages']['fastai'] and card['packages']['torch']
    assert card['created'].endswith('Z') and card['version'] == card['files']['model.safetensors']['sha256'][:12]
    for f, meta in card['files'].items():
        assert sha256_file(bundle/f) == meta['sha256'] and (bundle/f).stat().st_size == meta['bytes']
    assert set(card['files']) == {'export.pkl', 'model.safetensors', 'model.onnx', BANK_FILE}
    assert verify_bundle(bundle) == card

def test_weights_rebuild_create_model(bundle):
    card = read_card(bundle)
    sd = load_file(bundle/'model.safetensors')
    assert not any(k.startswith(NAB_PREFIX) for k in sd)          # kNN needs no ImageNet classifier
    m = create_model(**card['architecture'], pretrained=False)
    m.load_state_dict(sd, strict=True)
    learn = load_bundle_learner(bundle)
    for k, v in learn.model.state_dict().items(): assert torch.equal(v, m.state_dict()[k]), k

def test_guarded_load_learner(bundle, tmp_path):
    b = tmp_path/'b'; shutil.copytree(bundle, b)
    assert list(load_bundle_learner(b).dls.vocab) == ['black', 'grizzly', 'teddy']
    with open(b/'export.pkl', 'ab') as f: f.write(b'\x00')
    with pytest.raises(UnsafeModelError, match='does not match'): load_bundle_learner(b)
    load_bundle_learner(b, trust=True)
    (b/'model.json').unlink()
    with pytest.raises(UnsafeModelError, match='model.json is missing'): load_bundle_learner(b)

def test_crash_leaves_previous_bundle(run, bundle, monkeypatch):
    dest = bundle.parent
    before = {p.name: sha256_file(p) for p in bundle.iterdir()}
    def disk_full(*a, **k): raise OSError('No space left on device')
    monkeypatch.setattr(ex, 'export_onnx', disk_full)
    with pytest.raises(OSError, match='No space'): export_bundle(run, dest=dest)
    assert {p.name: sha256_file(p) for p in bundle.iterdir()} == before
    assert [p.name for p in dest.iterdir() if p.name.startswith('.tmp-')] == []      # (the build lock file stays)

def test_reexport_replaces_and_latest_uses_card_time(run, bundle, tmp_path):
    dest = tmp_path/'models'
    a = export_bundle(run, dest=dest, name='a', onnx=False)
    b = export_bundle(run, dest=dest, name='b', onnx=False)
    assert 'model.onnx' not in read_card(b)['files']
    os.utime(a, (time.time() + 100, time.time() + 100))         # a newer mtime must not matter
    assert latest_bundle(dest) == b
    old = read_card(a)['created']
    a2 = export_bundle(run, dest=dest, name='a', onnx=False)      # same name: replaced in place
    assert a2 == a and read_card(a)['created'] > old and latest_bundle(dest) == a
    (dest/'broken').mkdir(); (dest/'broken'/'model.json').write_text('{not json')
    with pytest.warns(UserWarning, match='skipping'): assert [p.name for p, _ in list_bundles(dest)] == ['a', 'b']

def test_export_errors(run, tmp_path):
    with pytest.raises(BundleError, match='export.pkl is missing'): export_bundle(tmp_path/'nowhere', dest=tmp_path/'m')
    r = tmp_path/'r'; shutil.copytree(run, r)
    cfg = json.loads((r/'model_config.json').read_text())
    (r/'model_config.json').write_text(json.dumps(dict(cfg, size=128)))
    with pytest.raises(BundleError, match='model_config.json says size'): export_bundle(r, dest=tmp_path/'m')
    (r/'model_config.json').write_text(json.dumps(dict(cfg, vocab=['a', 'b', 'c'])))
    with pytest.raises(BundleError, match='vocab'): export_bundle(r, dest=tmp_path/'m')
    (r/'model_config.json').write_text(json.dumps(cfg))
    (r/'split.csv').write_text('file,label,is_valid\n')
    with pytest.raises(BundleError, match='no existing validation images'): export_bundle(r, dest=tmp_path/'m')
    assert not (tmp_path/'m'/'r').exists()
    with pytest.raises(SystemExit, match=r'^bear-export: .*export.pkl is missing'): bear_export(str(tmp_path/'nowhere'))

def test_preprocessing_refuses_what_it_cannot_reproduce():
    from fastai.vision.all import DataBlock, ImageBlock, CategoryBlock, Resize, vision_learner, ItemGetter, IndexSplitter, Zoom
    from fastai.vision.augment import Transform
    class Sharpen(Transform):
        def encodes(self, x): return x
    import numpy as np
    items = [(np.zeros((32, 32, 3), np.uint8), 'a'), (np.zeros((32, 32, 3), np.uint8), 'b')]
    dls = DataBlock(blocks=(ImageBlock, CategoryBlock), get_x=ItemGetter(0), get_y=ItemGetter(1), splitter=IndexSplitter([1]),
                    item_tfms=[Resize(32), Sharpen()]).dataloaders(items, bs=1, num_workers=0)
    learn = vision_learner(dls, efficientnet_lite0)
    with pytest.raises(BundleError, match='cannot reproduce item transforms'): preprocessing_from_learner(learn)

def test_ensure_bundle(tmp_path, bundle):
    "newest bundle, else the starter built there; the Predictor alone never builds one"
    empty = tmp_path/'models'
    with pytest.raises(BundleError, match='run bear-starter'): Predictor.load(models_root=empty)
    assert not empty.exists() or not any(empty.iterdir())
    p = ensure_bundle(empty)
    assert p == empty/'starter' and read_card(p)['kind'] == 'starter'
    assert ensure_bundle(empty) == p                                  # built once
    root = tmp_path/'both'; root.mkdir()
    shutil.copytree(bundle, root/'trained')
    shutil.copytree(starter_bundle(), root/'starter')
    card = read_card(root/'starter'); card['created'] = '2999-01-01T00:00:00Z'   # a newer starter...
    (root/'starter'/'model.json').write_text(json.dumps(card))
    assert ensure_bundle(root) == root/'trained'                      # ...does not hide a trained model
    assert Predictor.load(models_root=root).path == root/'trained'

def test_models_setting(tmp_path, monkeypatch):
    "BEAR_MODELS is where bundles are found when no folder is given"
    monkeypatch.setenv('BEAR_MODELS', str(tmp_path/'m'))
    shutil.copytree(starter_bundle(), tmp_path/'m'/'starter')
    assert ensure_bundle() == tmp_path/'m'/'starter' and latest_bundle() == tmp_path/'m'/'starter'
    assert Predictor.load().path == tmp_path/'m'/'starter'

def test_knn_score_and_threshold_known_values():
    "The k-th largest cosine similarity to an L2-normalised bank, and the threshold at a stated rejection rate"
    ang = np.radians([0, 30, 60, 90])
    bank = l2_normalize(np.stack([np.cos(ang), np.sin(ang)], 1) * 7)
    q = np.array([[3., 0.], [np.cos(np.radians(45)), np.sin(np.radians(45))]])
    assert np.allclose(knn_scores(q, bank, k=1), [1., np.cos(np.radians(15))])
    assert np.allclose(knn_scores(q, bank, k=2), [np.cos(np.radians(30)), np.cos(np.radians(15))])
    assert np.allclose(knn_scores(q, bank, k=4), [0., np.cos(np.radians(45))])
    assert np.allclose(knn_scores(q, bank, k=10), knn_scores(q, bank, k=4))      # k beyond the bank: its size
    t, info = calibrate(np.arange(101) / 100, q=0.02)
    # position q·(n+1) = 2.04 of the sorted scores (numpy's weibull quantile): 0.01 + 0.04 · 0.01
    assert abs(t - 0.0104) < 1e-12 and info['n'] == 101 and abs(info['rejected_on_validation'] - 2/101) < 1e-12
    assert calibrate([-30.] * 5 + [0.] * 95, floor=MASS_FLOOR, ceil=MASS_CEIL)[0] == MASS_FLOOR
    assert calibrate([0.] * 10, floor=MASS_FLOOR, ceil=MASS_CEIL)[0] == MASS_CEIL

def _crops(im):
    return [im.crop((j * 9, j * 6, im.width - j * 4, im.height - j * 5)) for j in range(4)]

def test_non_bear_bundle_exports_and_predicts(tmp_path, capsys):
    "Labels ImageNet's bear rows know nothing about: exported with the kNN detector, answered in the card's words"
    ph = sample_photos()
    run = vouch(tiny_run(tmp_path/'runs'/'cc', images={'cat': _crops(ph['chelsea']), 'coffee': _crops(ph['coffee'])}))
    bear_export(str(run), dest=str(tmp_path/'models'))
    out = capsys.readouterr().out
    assert """out of domain: "This doesn't look like a cat or coffee\"""" in out and 'none of these: knn' in out, out
    b = tmp_path/'models'/'cc'
    card = verify_bundle(b)
    assert card['vocab'] == ['cat', 'coffee'] and card['none_of_these']['method'] == 'knn' and BANK_FILE in card['files']
    assert none_text(card) == "This doesn't look like a cat or coffee"
    k2 = export_bundle(run, dest=tmp_path/'models', name='k2', k=2)   # 2 training crops per label: k=2 keeps to one label
    assert read_card(k2)['none_of_these']['k'] == 2
    for backend in ('torch', 'onnx'):
        pred = Predictor.load(k2, backend=backend)
        cat, rocket = pred.predict(ph['chelsea']), pred.predict(ph['rocket'])
        # a one-epoch model on 8 crops need not name the cat right; what is under test is the detector and the words
        assert cat.in_domain and cat.label in ('cat', 'coffee') and cat.sentence.startswith(f'Prediction: {cat.label}; Probability: '), cat
        assert not rocket.in_domain and rocket.sentence == "This doesn't look like a cat or coffee", rocket
        assert rocket.to_dict()['in_domain'] is False and rocket.score < pred.threshold <= cat.score
    tasked = export_bundle(run, dest=tmp_path/'models', name='tasked', task='animal', k=2, onnx=False)
    assert read_card(tasked)['task'] == 'animal' and none_text(read_card(tasked)) == "This doesn't look like an animal"
    assert Predictor.load(tasked).predict(ph['rocket']).sentence == "This doesn't look like an animal"
    with pytest.raises(SystemExit, match="^bear-export: detector 'imagenet_mass' needs ImageNet classes"):
        bear_export(str(run), dest=str(tmp_path/'models'), name='mass', detector='imagenet_mass')

def test_run_pickle_is_checked_before_unpickling(run, tmp_path, monkeypatch):
    "A run vouches for its export.pkl with export_sha256 (bear-train); export refuses it otherwise, before load_learner"
    r = tmp_path/'r'; shutil.copytree(run, r)
    import fastai.learner
    def boom(*a, **k): raise AssertionError('unpickled before the check')
    cfg = json.loads((r/'model_config.json').read_text())
    with monkeypatch.context() as m:
        m.setattr(fastai.learner, 'load_learner', boom)
        (r/'model_config.json').write_text(json.dumps({k: v for k, v in cfg.items() if k != 'export_sha256'}))
        with pytest.raises(UnsafeModelError, match='no export_sha256'): export_bundle(r, dest=tmp_path/'m')
        with pytest.raises(SystemExit, match=r'^bear-export: refusing to unpickle .*--trust'): bear_export(str(r), dest=str(tmp_path/'m'))
        (r/'model_config.json').write_text(json.dumps(cfg))
        with open(r/'export.pkl', 'ab') as f: f.write(b'planted')
        with pytest.raises(UnsafeModelError, match='does not match export_sha256'): export_bundle(r, dest=tmp_path/'m')
    assert check_run_pickle(r, {}, trust=True) == r/'export.pkl'
    assert not (tmp_path/'m').exists() or not any((tmp_path/'m').iterdir())

def test_old_schema_card_still_serves(tmp_path):
    "A schema-1 card (`not_a_bear`) is read as `none_of_these` with method imagenet_mass"
    b = tmp_path/'old'; shutil.copytree(starter_bundle(), b)
    card = json.loads((b/'model.json').read_text())
    card['schema'] = 1; card.pop('task')
    card['not_a_bear'] = dict(card.pop('none_of_these'), method='imagenet_bear_mass')
    (b/'model.json').write_text(json.dumps(card))
    new = Predictor.load(starter_bundle()).predict(sample_photos()['coffee'])
    old = Predictor.load(b).predict(sample_photos()['coffee'])
    assert read_card(b)['none_of_these']['method'] == 'imagenet_mass'
    assert (old.label, old.in_domain, round(old.score, 5)) == (new.label, new.in_domain, round(new.score, 5))
    assert old.sentence == "This doesn't look like a black, grizzly or teddy"      # no task noun in an old card

def test_replacing_a_bundle_never_leaves_none(tmp_path):
    "install_bundle (files.replace_dir) swaps old and new: a reader finds a complete bundle at every instant"
    root = tmp_path/'models'; shutil.copytree(starter_bundle(), root/'m')
    stop, seen = threading.Event(), []
    def reader():
        while not stop.is_set():
            try: seen.append(read_card(root/'m')['version'])
            except BundleError as e: seen.append(e)
    t = threading.Thread(target=reader); t.start()
    try:
        for i in range(30):
            with temp_dir(root, prefix='m') as tmp:
                for f in (root/'m').iterdir(): shutil.copy2(f, tmp/f.name)
                install_bundle(tmp, root/'m')
    finally: stop.set(); t.join()
    assert seen and not [s for s in seen if isinstance(s, Exception)]
    assert sorted(p.name for p in root.iterdir()) == ['m']

def test_killed_build_leaves_temps_that_the_next_build_removes(tmp_path):
    "kill -9 mid-build leaves .tmp-starter-*; the next build (under the build lock) removes it at once, whatever its age"
    root = tmp_path/'models'
    code = ("import sys, time; from pathlib import Path; from bear_classifier.bundle import building; from bear_classifier.files import temp_dir\n"
            "with building(Path(sys.argv[1])) as r, temp_dir(r, prefix='starter') as t:\n"
            "    (t/'model.safetensors').write_bytes(bytes(1 << 20)); print('building', flush=True); time.sleep(600)\n")
    p = subprocess.Popen([sys.executable, '-c', code, str(root)], stdout=subprocess.PIPE, text=True)
    try: assert p.stdout.readline().strip() == 'building'
    finally: os.kill(p.pid, signal.SIGKILL); p.wait()
    assert [q.name.startswith('.tmp-starter-') for q in root.iterdir() if q.is_dir()] == [True]
    with building(root):                                # the dead process's lock is gone with it
        assert [q.name for q in root.iterdir()] == ['.build.lock']

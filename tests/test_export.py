"""Model bundles: the card, pickle-free weights, atomic writes, "latest", ensure_bundle, and the guarded load_learner."""
import json, os, shutil, time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import bear_classifier.export as ex
from bear_classifier.core import create_model, efficientnet_lite0
from bear_classifier.files import sha256_file
from bear_classifier.bundle import (latest_bundle, list_bundles, read_card, verify_bundle, load_bundle_learner, preprocessing_from_learner,
                                    BundleError, UnsafeModelError, NAB_PREFIX)
from bear_classifier.export import export_bundle, ensure_bundle, NAB_FLOOR, NAB_CEIL, bear_export
from bear_classifier.inference import Predictor
from bear_classifier.testing import tiny_run, starter_bundle

CARD_KEYS = {'schema', 'name', 'kind', 'version', 'created', 'vocab', 'architecture', 'input', 'normalization', 'metrics',
             'not_a_bear', 'validation', 'data', 'files', 'packages', 'run', 'checks'}

@pytest.fixture(scope='module')
def run(tmp_path_factory):
    "A tiny training run (1 epoch, 64 px, centre-crop Resize) in the runs/<name>/ layout"
    return tiny_run(tmp_path_factory.mktemp('runs')/'tiny', size=64, method='crop', epochs=1)

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
    nab = card['not_a_bear']
    assert nab['method'] == 'imagenet_bear_mass' and nab['imagenet_rows'] == [294, 295, 850]
    assert NAB_FLOOR <= nab['threshold'] <= NAB_CEIL and nab['calibration']['n'] == 6
    v = card['validation']
    assert v['n'] == 6 and abs(sum(v['label_mix'].values()) - 1) < 1e-9 and 0 < v['mean_confidence'] <= 1
    assert 0 <= v['accuracy'] <= 1
    assert set(v['answer_counts']) == {'black', 'grizzly', 'teddy', 'not_a_bear'} and sum(v['answer_counts'].values()) == 6
    assert v['answer_counts']['not_a_bear'] == round(6 * (1 - v['in_domain_rate']))
    assert len(v['confidences']) == 6 and v['confidences'] == sorted(v['confidences'])
    assert card['data']['n_train'] == 6 and card['data']['n_valid'] == 6
    assert card['data']['split_sha256'] == sha256_file(run/'split.csv')
    assert card['checks']['parity_learn_predict']['max_abs_diff'] < 1e-3 and card['checks']['parity_onnx']['max_abs_diff'] < 1e-3
    assert card['packages']['fastai'] and card['packages']['torch']
    assert card['created'].endswith('Z') and card['version'] == card['files']['model.safetensors']['sha256'][:12]
    for f, meta in card['files'].items():
        assert sha256_file(bundle/f) == meta['sha256'] and (bundle/f).stat().st_size == meta['bytes']
    assert set(card['files']) == {'export.pkl', 'model.safetensors', 'model.onnx'}
    assert verify_bundle(bundle) == card

def test_weights_rebuild_create_model(bundle):
    card = read_card(bundle)
    sd = load_file(bundle/'model.safetensors')
    nab = {k: sd.pop(k) for k in list(sd) if k.startswith(NAB_PREFIX)}
    assert nab[NAB_PREFIX+'weight'].shape == (1000, 1280)
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
    assert [p.name for p in dest.iterdir() if p.name.startswith('.')] == []

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

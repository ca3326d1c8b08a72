"""Predictor: parity with learn.predict (starter and a trained model, PyTorch and ONNX), bad inputs, safety, CLI; the ONNX path without torch."""
import io, json, os, pickle, shutil, subprocess, sys, threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bear_classifier.bundle import load_bundle_learner, read_card, write_card, BundleError
from bear_classifier.files import sha256_file
from bear_classifier.images import ImageError, decode_image, MAX_IMAGE_BYTES
from bear_classifier.inference import Predictor, Prediction, none_text
from bear_classifier.ood import BANK_FILE
from bear_classifier.export import export_bundle, bear_predict, PARITY_TOL
from bear_classifier.predlog import PredictionLog
from bear_classifier.testing import shared_data, starter_bundle, tiny_run

assert PARITY_TOL <= 1e-3
OUT_OF_DOMAIN_TEXT = "This doesn't look like a bear"          # the starter's card: task 'bear'

@pytest.fixture(scope='module')
def models(tmp_path_factory):
    return tmp_path_factory.mktemp('models')

@pytest.fixture(scope='module')
def starter():
    return starter_bundle()

@pytest.fixture(scope='module')
def photos(sample_photos):
    "At least 20 real photos: the held-out bear photos when ../shared/data exists, else package photos and variants"
    shift = shared_data('bears_shift')
    if shift is not None:
        fs = sorted(shift.rglob('*.jpg'))
        pick = [f for lbl in ('black', 'grizzly', 'teddy') for f in [g for g in fs if g.parent.name == lbl][:8]]
        return [Image.open(f).convert('RGB') for f in pick], 'bears_shift'
    ims = list(sample_photos.values())
    ims += [im.rotate(90, expand=True) for im in ims] + [im.resize((im.width // 2, im.height // 3)) for im in ims]
    ims += [im.crop((0, 0, im.width // 2, im.height)) for im in ims[:4]]
    return ims, 'package photos'

@pytest.fixture(scope='module')
def trained(tmp_path_factory, models, sample_photos):
    "A small trained run (1 epoch, 96 px, RandomResizedCrop like the lesson) exported as a bundle"
    run = tmp_path_factory.mktemp('runs')/'tiny'
    src = shared_data('bears')
    if src is not None:
        images = {lbl: [Image.open(f) for f in sorted((src/lbl).glob('*.jpg'))[:4]] for lbl in ('black', 'grizzly', 'teddy')}
    else: images = None
    tiny_run(run, size=96, method='rrc', epochs=1, images=images)
    cfg = json.loads((run/'model_config.json').read_text())
    (run/'model_config.json').write_text(json.dumps(dict(cfg, export_sha256=sha256_file(run/'export.pkl'))))
    return export_bundle(run, dest=models, detector='imagenet_mass')      # the bear labels' ImageNet rows, with a gate

@pytest.fixture(scope='module')
def knn(tmp_path_factory, trained):
    "The same run exported with the default kNN detector"
    return export_bundle(Path(read_card(trained)['run']['dir']), dest=tmp_path_factory.mktemp('knn'))

def _parity(bundle, ims):
    "Max |Predictor - learn.predict| over `ims` for both backends; labels and indices must be identical"
    learn = load_bundle_learner(bundle)
    preds = [Predictor.load(bundle, backend=be) for be in ('torch', 'onnx')]
    worst = {p.backend: 0. for p in preds}
    with learn.no_bar():
        for im in ims:
            lbl, idx, probs = learn.predict(np.asarray(im))
            for pred in preds:
                r = pred.predict(im)
                assert r.label == str(lbl) and r.index == int(idx), (pred.backend, r, lbl)
                d = float(np.abs(np.array([r.probs[v] for v in pred.vocab]) - probs.numpy()).max())
                worst[pred.backend] = max(worst[pred.backend], d)
    return worst

def test_parity_starter(starter, photos):
    ims, what = photos
    assert len(ims) >= 20
    worst = _parity(starter, ims)
    assert max(worst.values()) < PARITY_TOL, (what, worst)

def test_parity_trained(trained, photos):
    ims, what = photos
    card = read_card(trained)
    assert card['input']['resize_method'] == 'rrc' and card['none_of_these']['features'].startswith('gate')
    worst = _parity(trained, ims)
    assert max(worst.values()) < PARITY_TOL, (what, worst)

def test_parity_knn(knn, trained, photos):
    "The kNN bundle serves the same probabilities; its score is the same in both backends"
    ims = photos[0][:8]
    assert read_card(knn)['none_of_these']['method'] == 'knn'
    assert max(_parity(knn, ims).values()) < PARITY_TOL
    a, b = (Predictor.load(knn, backend=be).predict_batch(ims) for be in ('torch', 'onnx'))
    assert max(abs(x.score - y.score) for x, y in zip(a, b)) < 1e-4
    assert all(x.in_domain == y.in_domain for x, y in zip(a, b) if abs(x.score - x.threshold) > 1e-4)

def test_corrupt_files_give_one_line(knn, tmp_path, sample_photos):
    "A damaged ONNX / safetensors / bank file whose sha256 was updated in the card: one BundleError line, no traceback"
    f = tmp_path/'cat.jpg'; sample_photos['chelsea'].save(f)
    for name, backend, want in (('model.onnx', 'onnx', 'cannot be loaded by ONNX Runtime'),
                                ('model.safetensors', 'torch', 'cannot be read as safetensors'),
                                (BANK_FILE, 'onnx', 'cannot be read as a feature bank')):
        b = tmp_path/name; shutil.copytree(knn, b)
        (b/name).write_bytes(b'\x08\x00\x00\x00\x00\x00\x00\x00{not a model}' * 50)
        write_card(b, read_card(b))                                # the card now "vouches" for the damage
        with pytest.raises(BundleError, match=want): Predictor.load(b, backend=backend)
        with pytest.raises(SystemExit) as e: bear_predict(str(f), model=str(b), backend=backend, log='off')
        msg = str(e.value)
        assert msg.startswith('bear-predict: ') and want in msg and '\n' not in msg and 'Traceback' not in msg, msg

def test_predict_batch_matches_predict(trained, photos):
    ims = photos[0][:8]
    pred = Predictor.load(trained)
    one = [pred.predict(im) for im in ims]
    many = pred.predict_batch(ims, bs=3)
    for a, b in zip(one, many):
        assert a.label == b.label and abs(a.score - b.score) < 1e-4
        assert max(abs(a.probs[v] - b.probs[v]) for v in pred.vocab) < 1e-4

def test_threads_do_not_mix_crops(trained, photos):
    "fastai transforms keep per-call state; concurrent predictions on different shapes must equal sequential ones"
    ims = [im if i % 2 else im.rotate(90, expand=True) for i, im in enumerate(photos[0][:8])]
    pred = Predictor.load(trained, backend='onnx')
    want = [pred.predict(im).probs for im in ims]
    got = [None] * len(ims)
    def work(i):
        for _ in range(3): got[i] = pred.predict(ims[i]).probs
    ts = [threading.Thread(target=work, args=(i,)) for i in range(len(ims))]
    for t in ts: t.start()
    for t in ts: t.join()
    for a, b in zip(want, got): assert max(abs(a[k] - b[k]) for k in a) < 1e-5

def test_inputs_all_agree(starter, tmp_path, sample_photos):
    pred = Predictor.load(starter)
    im = sample_photos['chelsea']
    buf = io.BytesIO(); im.save(buf, format='JPEG', quality=92); b = buf.getvalue()
    f = tmp_path/'cat.jpg'; f.write_bytes(b)
    upload = ({'name': 'cat.jpg', 'type': 'image/jpeg', 'size': len(b), 'content': memoryview(b), 'last_modified': 0},)
    rs = [pred.predict(f), pred.predict(str(f)), pred.predict(b), pred.predict_bytes(b), pred.predict(upload),
          pred.predict(upload[0]), pred.predict(Image.open(f)), pred.predict(np.asarray(Image.open(f)))]
    for r in rs[1:]: assert r.probs == rs[0].probs
    assert isinstance(rs[0], Prediction) and rs[0].sentence == OUT_OF_DOMAIN_TEXT == none_text(pred.card) and not rs[0].in_domain
    d = rs[0].to_dict()
    assert set(d) >= {'label', 'index', 'probability', 'probs', 'in_domain', 'sentence'}
    json.dumps(d)

def _bytes(im, fmt, **kw):
    buf = io.BytesIO(); im.save(buf, format=fmt, **kw); return buf.getvalue()

def test_bad_inputs(starter, sample_photos, tmp_path):
    pred = Predictor.load(starter)
    cat = sample_photos['chelsea']
    jpg, png = _bytes(cat, 'JPEG'), _bytes(cat, 'PNG')
    heic = b'\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic' + bytes(200)
    zipf = b'PK\x03\x04' + bytes(100)
    bad = {'empty': [b'', (), {'name': 'x.jpg', 'content': memoryview(b'')}],
           'not_an_image': [b'hello', zipf, '<html></html>'.encode(), str(tmp_path/'missing.jpg')],
           'truncated': [jpg[:len(jpg) // 3], png[:len(png) // 2]],
           'unsupported_format': [heic, b'%PDF-1.4\n%...', b'<svg xmlns="http://www.w3.org/2000/svg"/>'],
           'decompression_bomb': [_bytes(Image.new('1', (12000, 12000)), 'PNG')],
           'too_large': [b'\xff\xd8\xff' + bytes(MAX_IMAGE_BYTES)]}
    for code, xs in bad.items():
        for x in xs:
            with pytest.raises(ImageError) as e: pred.predict(x)
            assert e.value.code == code, (code, str(e.value))
            msg = str(e.value)
            assert msg and '\n' not in msg and len(msg) < 300
    with pytest.raises(ImageError, match='HEIC'): pred.predict({'name': 'IMG_1.HEIC', 'content': memoryview(heic)})
    big = tmp_path/'big.jpg'; big.write_bytes(b'\xff\xd8' + bytes(MAX_IMAGE_BYTES + 10))
    with pytest.raises(ImageError) as e: pred.predict(big)
    assert e.value.code == 'too_large'
    # one bad item never sinks a batch
    res = pred.predict_batch([jpg, b'', heic, png, jpg[:500], 42])
    assert [type(r).__name__ for r in res] == ['Prediction', 'ImageError', 'ImageError', 'Prediction', 'ImageError', 'ImageError']

def test_decoding_modes(sample_photos):
    cat = sample_photos['chelsea']
    ex = Image.Exif(); ex[0x0112] = 8                          # rotate 90 counter-clockwise to display
    assert decode_image(_bytes(cat, 'JPEG', exif=ex.tobytes())).size == (cat.height, cat.width)
    for mode in ('P', 'L', 'LA', 'RGBA', 'CMYK', 'I', '1'):
        im = cat.convert(mode)
        fmt = 'JPEG' if mode == 'CMYK' else ('TIFF' if mode == 'I' else 'PNG')
        out = decode_image(_bytes(im, fmt))
        assert out.mode == 'RGB' and out.size == cat.size, mode
    frames = [Image.new('RGB', (40, 30), c) for c in ('green', 'red', 'blue')]
    webp = _bytes(frames[0], 'WEBP', save_all=True, append_images=frames[1:], lossless=True)
    assert np.asarray(decode_image(webp))[5, 5].tolist() == [0, 128, 0]

@pytest.mark.parametrize('which', ['starter', 'knn'])
def test_serving_never_unpickles(which, request, tmp_path, monkeypatch, sample_photos):
    b = tmp_path/'b'; shutil.copytree(request.getfixturevalue(which), b)
    (b/'export.pkl').unlink()                                   # serving does not need the pickle at all
    def boom(*a, **k): raise AssertionError('unpickling on the serving path')
    for mod, name in ((pickle, 'load'), (pickle, 'loads'), (torch, 'load')): monkeypatch.setattr(mod, name, boom)
    for backend in ('torch', 'onnx'):
        p = Predictor.load(b, backend=backend)
        assert p.predict(sample_photos['coffee']).label in ('black', 'grizzly', 'teddy') and (p.bank is not None) == (which == 'knn')

def test_tampered_weights_refused(starter, tmp_path):
    b = tmp_path/'b'; shutil.copytree(starter, b)
    with open(b/'model.safetensors', 'r+b') as f: f.seek(-4, 2); f.write(b'\x00\x01\x02\x03')
    with pytest.raises(BundleError, match='does not match'): Predictor.load(b, backend='torch')
    Predictor.load(b, backend='onnx')                           # the ONNX file is intact and checked separately
    with open(b/'model.onnx', 'ab') as f: f.write(b'x')
    with pytest.raises(BundleError, match='does not match'): Predictor.load(b, backend='onnx')

def test_load_defaults(tmp_path, starter, trained):
    empty = tmp_path/'models'
    with pytest.raises(BundleError, match='no model bundle'): Predictor.load(models_root=empty)   # it never builds one
    assert not empty.exists()
    root = tmp_path/'both'; root.mkdir()
    shutil.copytree(trained, root/'trained')
    shutil.copytree(starter, root/'starter')
    card = read_card(root/'starter'); card['created'] = '2999-01-01T00:00:00Z'   # a newer starter...
    (root/'starter'/'model.json').write_text(json.dumps(card))
    assert Predictor.load(models_root=root).path == root/'trained'            # ...does not hide a trained model

def test_cli(starter, tmp_path, sample_photos, capsys):
    f = tmp_path/'cat.jpg'; sample_photos['chelsea'].save(f)
    bad = tmp_path/'bad.jpg'; bad.write_bytes(b'nope')
    log = tmp_path/'log.sqlite'
    bear_predict(str(f), model=str(starter), log=str(log))
    out = capsys.readouterr()
    assert out.out.strip() == f"{f}: {OUT_OF_DOMAIN_TEXT}" and 'starter' in out.err
    with pytest.raises(SystemExit) as e: bear_predict(str(f), str(bad), model=str(starter), json=True, log=str(log))
    assert e.value.code == 1
    res = json.loads(capsys.readouterr().out)
    assert res[0]['file'] == str(f) and res[0]['in_domain'] is False and res[1]['error'] == 'not_an_image'
    rows = PredictionLog(log).rows()       # both good answers logged, the bad file not
    assert [(r['frontend'], r['in_domain'], r['model_kind']) for r in rows] == [('cli', 0, 'starter')] * 2
    bear_predict(str(f), model=str(starter), log=str(f/'under_a_file.sqlite'))   # a broken log costs no answer
    out = capsys.readouterr()
    assert out.out.strip() == f"{f}: {OUT_OF_DOMAIN_TEXT}" and 'bear-predict: answers not logged' in out.err
    with pytest.raises(SystemExit, match='bear-predict: .*not a model bundle'): bear_predict(str(f), model=str(tmp_path))
    root = tmp_path/'models'; shutil.copytree(starter, root/'starter')
    bear_predict(str(f), models=str(root), log='off')           # no --model: the newest bundle under --models
    out = capsys.readouterr()
    assert out.out.strip() == f"{f}: {OUT_OF_DOMAIN_TEXT}" and str(root/'starter') in out.err
    assert PredictionLog(log).count() == 2                      # --log off wrote nothing

def test_validation_resize_is_fastais(photos):
    "The serving path's Pillow/numpy resize equals fastai's validation item transform pixel for pixel"
    from bear_classifier.bundle import item_transform, validation_resize
    rng = np.random.default_rng(0)
    ims = [im for im in photos[0][:6]] + [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
                                          for w, h in [(1, 300), (300, 1), (7, 500), (640, 479), (33, 34)]]
    inps = [dict(size=[224, 224], resize_method='crop', pad_mode='reflection'), dict(size=[96, 160], resize_method='squish'),
            dict(size=[128, 96], resize_method='pad', pad_mode='reflection'), dict(size=[128, 96], resize_method='pad', pad_mode='zeros'),
            dict(size=[96, 128], resize_method='pad', pad_mode='border'), dict(size=[96, 96], resize_method='rrc', val_xtra=0.14),
            dict(size=[160, 120], resize_method='rrc', val_xtra=0.3)]
    for im in ims:
        for inp in inps:
            got, want = np.asarray(validation_resize(im, inp)), np.asarray(item_transform(inp)(im, split_idx=1))
            assert got.shape == want.shape and (got == want).all(), (im.size, inp)

HEAVY = ('torch', 'torchvision', 'fastai', 'timm', 'matplotlib', 'pandas')

def test_serving_onnx_loads_no_torch(knn, tmp_path, sample_photos):
    "The page's path on a trained kNN bundle in a fresh process: import the app, load, predict, log; torch, timm, fastai never load"
    f = tmp_path/'cat.jpg'; sample_photos['chelsea'].save(f)
    code = f"""import json, sys
import bear_classifier.app
from bear_classifier.inference import Predictor
from bear_classifier.predlog import PredictionLog
p = Predictor.load({str(knn)!r})
r = p.predict({str(f)!r})
PredictionLog({str(tmp_path/'log.sqlite')!r}).log(r, 'app', model=dict(name=p.name, version=p.version, kind=p.kind), image=None, size=(1, 1), latency_ms=1.)
print(json.dumps(dict(backend=p.backend, method=p.method, score=r.score, heavy=[m for m in {HEAVY!r} if m in sys.modules])))"""
    res = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert (out['backend'], out['method']) == ('onnx', 'knn'), out
    assert abs(out['score'] - Predictor.load(knn, backend='torch').predict(f).score) < 1e-4   # the same kNN score as PyTorch's
    assert out['heavy'] == [], f"serving model.onnx imports {out['heavy']} again"
    assert PredictionLog(tmp_path/'log.sqlite').count() == 1

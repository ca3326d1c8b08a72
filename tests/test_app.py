"""The Voilà app at widget level (no browser): the GUI built from the real starter `Predictor`, driven
the way the browser drives it (set the FileUpload's value as ipywidgets 8 sends it, click Classify);
the repository's Voilà configuration and template; the `bear-app` launcher's checks."""
import base64, io, json, socket, subprocess, sys
from datetime import datetime, timezone
from pathlib import Path

import ipywidgets as widgets
import pytest
from PIL import Image

from bear_classifier import app as bapp
from bear_classifier.app import BearApp, build_app, thumbnail, upload_limit, websocket_limit

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture(scope='session')
def predictor():
    "The real inference core on the offline starter model"
    from _starter import starter_bundle
    from bear_classifier.inference import Predictor
    return Predictor.load(starter_bundle())


def jpeg(im, **kw):
    b = io.BytesIO(); im.convert('RGB').save(b, format='JPEG', quality=90, **kw); return b.getvalue()


def upload(app, data, name='photo.jpg', type='image/jpeg'):
    "What ipywidgets 8's front end sends: a tuple with one dict whose content is a memoryview"
    app.upload.value = ({'name': name, 'type': type, 'size': len(data), 'content': memoryview(data),
                         'last_modified': datetime(2024, 5, 1, tzinfo=timezone.utc)},)


def click(app):
    app.button.click()            # runs the handlers registered with on_click, as a browser click does


def thumb_of(app):
    o = app.out.outputs
    assert len(o) == 1, o
    return Image.open(io.BytesIO(base64.b64decode(o[0]['data']['image/png'])))


@pytest.fixture(scope='session')
def grizzly_photo(shared_data):
    files = sorted((shared_data/'bears_shift'/'grizzly').glob('*.jpg'))
    assert files, 'bears_shift/grizzly is empty'
    return files[0].read_bytes()


def test_layout(predictor):
    box = build_app(predictor)
    assert isinstance(box, widgets.VBox)
    app = box.bear
    kinds = [type(w) for w in box.children]
    assert kinds.index(widgets.FileUpload) < kinds.index(widgets.Button) < kinds.index(widgets.Output) < kinds.index(widgets.Label, 2)
    assert app.upload.accept == 'image/*' and app.upload.multiple is False
    assert app.button.description == 'Classify'
    assert 'Grizzly, black or teddy?' in box.children[0].value
    assert box.children[1].value == 'Upload a photo of a bear, then click Classify.'
    assert predictor.name in app.info.value and 'starter' in app.info.value
    for label in predictor.vocab: assert label in app.info.value


def test_no_upload_says_what_to_do(predictor):
    app = BearApp(predictor)
    click(app)
    assert app.label.value.startswith('Upload a photo first') and app.out.outputs == ()
    assert not app.button.disabled


def test_grizzly(predictor, grizzly_photo):
    app = BearApp(predictor)
    upload(app, grizzly_photo)
    click(app)
    assert app.label.value.startswith('Prediction: grizzly; Probability: '), app.label.value
    p = float(app.label.value.rsplit(' ', 1)[1])
    assert 0.5 < p <= 1 and len(app.label.value.rsplit(' ', 1)[1]) == 6          # four decimals, as in the lesson
    assert max(thumb_of(app).size) == 128
    for label in predictor.vocab: assert f'>{label}<' in app.probs.value
    assert app.probs.value.index('>grizzly<') < min(app.probs.value.index(f'>{l}<') for l in predictor.vocab if l != 'grizzly')
    assert app.upload.value == () and not app.button.disabled


def test_matches_predictor(predictor, sample_photos):
    "The page shows exactly what the inference core says, for photos of all sorts"
    app = BearApp(predictor)
    for name, im in sample_photos.items():
        data = jpeg(im)
        upload(app, data, f'{name}.jpg'); click(app)
        pred = predictor.predict(data)
        assert app.label.value == pred.sentence, name
        for k, v in pred.probs.items(): assert f'{v:.4f}' in app.probs.value


def test_coffee_is_not_a_bear(predictor, sample_photos):
    app = BearApp(predictor)
    upload(app, jpeg(sample_photos['coffee']), 'coffee.jpg'); click(app)
    assert app.label.value == 'This does not look like a bear'
    assert len(app.out.outputs) == 1                  # the thumbnail still shows what was classified


def png_header(w, h):
    "A PNG that declares w×h 1-bit pixels: what a decompression bomb's header looks like"
    import struct, zlib
    chunk = lambda t, d: struct.pack('>I', len(d)) + t + d + struct.pack('>I', zlib.crc32(t + d))
    return (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', w, h, 1, 0, 0, 0, 0))
            + chunk(b'IDAT', zlib.compress(b'\0' * 64)) + chunk(b'IEND', b''))


def _bad_uploads():
    from bear_classifier.inference import MAX_IMAGE_BYTES
    good = jpeg(Image.new('RGB', (64, 48), (90, 60, 30)))
    bomb = png_header(30000, 30000)                                                # 900 M pixels in 100 bytes
    return {
        'empty': b'',
        'not_an_image': b'These are my notes about bears, not a picture.\n' * 20,
        'truncated': jpeg(Image.effect_noise((400, 300), 60))[:3000],
        'decompression_bomb': bomb,
        'too_large': good + b'\0' * (MAX_IMAGE_BYTES + 1 - len(good)),
        'unsupported_format': b'%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\ntrailer\n<< /Root 1 0 R >>\n%%EOF\n',
    }


@pytest.mark.parametrize('code', ['empty', 'not_an_image', 'truncated', 'decompression_bomb', 'too_large', 'unsupported_format'])
def test_every_bad_upload_shows_its_message_and_the_page_keeps_working(predictor, sample_photos, code):
    from bear_classifier.inference import ImageError
    data = _bad_uploads()[code]
    with pytest.raises(ImageError) as e: predictor.predict({'name': f'{code}.jpg', 'content': memoryview(data)})
    assert e.value.code == code
    message = str(e.value)
    assert '\n' not in message and message
    app = BearApp(predictor)
    upload(app, data, f'{code}.jpg'); click(app)
    assert app.label.value == message
    assert app.label.style.text_color and app.out.outputs == () and app.probs.value == ''
    assert app.upload.value == () and not app.button.disabled
    upload(app, jpeg(sample_photos['chelsea']), 'chelsea.jpg'); click(app)    # and the next photo works
    assert app.label.value == predictor.predict(jpeg(sample_photos['chelsea'])).sentence
    assert not app.label.style.text_color and len(app.out.outputs) == 1


def test_unexpected_errors_are_shown_not_raised(predictor, capsys):
    class Broken:
        name, kind, version, vocab = 'broken', 'trained', '1', ['grizzly', 'black', 'teddy']
        def predict(self, x): raise RuntimeError('the model file went away')
    app = BearApp(Broken())
    upload(app, jpeg(Image.new('RGB', (32, 32)))); click(app)
    assert app.label.value == 'Could not classify photo.jpg: RuntimeError: the model file went away'
    assert 'Traceback' in capsys.readouterr().err and not app.button.disabled


def test_exif_rotated_photo_is_upright(predictor, grizzly_photo):
    "A phone stores a portrait photo sideways with EXIF Orientation=6: the thumbnail must stand upright"
    upright = Image.open(io.BytesIO(grizzly_photo)).convert('RGB').resize((300, 400))     # portrait
    ex = Image.Exif(); ex[0x0112] = 6                                                     # rotate 90° CW to view
    sideways = jpeg(upright.transpose(Image.Transpose.ROTATE_90), exif=ex)                # stored as 400x300
    assert Image.open(io.BytesIO(sideways)).size == (400, 300)
    app = BearApp(predictor)
    upload(app, sideways, 'IMG_0001.JPG'); click(app)
    t = thumb_of(app)
    assert t.size == (96, 128)
    # the thumbnail is the upright photo, not a mirror or a rotation of it
    ref = upright.resize((96, 128))
    diff = sum(abs(a - b) for a, b in zip(t.convert('L').getdata(), ref.convert('L').getdata())) / (96*128)
    assert diff < 12, diff
    assert app.label.value == predictor.predict(sideways).sentence
    assert app.label.value.startswith('Prediction: grizzly')
    # the model saw the upright photo too: its answer is the upright photo's, up to JPEG noise
    assert abs(predictor.predict(sideways).probability - predictor.predict(upright).probability) < 0.02


def test_huge_photo(predictor, grizzly_photo, tmp_path):
    "5000x4000 pixels, over Tornado's 10 MiB default websocket message once noise is added"
    from test_browser import big_jpeg
    data = big_jpeg(Image.open(io.BytesIO(grizzly_photo)), tmp_path/'big.jpg').read_bytes()
    assert len(data) > 10 << 20
    app = BearApp(predictor)
    upload(app, data, 'big.jpg'); click(app)
    assert len(data) <= upload_limit()
    assert app.label.value.startswith('Prediction: grizzly'), app.label.value
    assert thumb_of(app).size == (128, 102)


def test_apps_share_nothing(predictor, sample_photos):
    a, b = BearApp(predictor), BearApp(predictor)
    upload(a, jpeg(sample_photos['coffee'])); click(a)
    assert a.label.value and b.label.value == '' and b.out.outputs == ()


# ---- the repository's Voilà configuration -------------------------------------------------------

def test_voila_config():
    cfg = json.loads((ROOT/'voila.json').read_text())
    v, vc = cfg['Voila'], cfg['VoilaConfiguration']
    assert v['ip'] == '127.0.0.1' and v['port'] == 8866 and v['port_retries'] == 0 and v['open_browser'] is False
    assert vc['preheat_kernel'] is True and vc['default_pool_size'] >= 1
    ws = v['tornado_settings']['websocket_max_message_size']
    assert ws == websocket_limit(ROOT) > 10 << 20                           # above Tornado's default
    assert upload_limit(ROOT) + bapp.WEBSOCKET_HEADROOM <= ws               # the browser refuses before Tornado does


def test_template_fetches_nothing_from_the_network():
    t = ROOT/'share'/'jupyter'/'voila'/'templates'/'bear'
    assert json.loads((t/'conf.json').read_text())['base_template'] == 'lab'
    assert 'http' not in (t/'index.html.j2').read_text().replace('cdn.jsdelivr.net', '')


def test_upload_guard_script():
    s = bapp.upload_guard(123456).data
    assert 'limit: 123456' in s and 'readAsArrayBuffer' in s and 'bear-upload-message-text' in s


# ---- bear-app --------------------------------------------------------------------------------------

def test_bear_app_refuses_a_busy_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); s.listen(); port = s.getsockname()[1]
        r = subprocess.run([BIN/'bear-app', '--port', str(port)], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode != 0
    assert r.stderr.strip() == f'bear-app: port {port} on 127.0.0.1 is in use (another bear-app?); stop it or pass --port N'


def test_bear_app_refuses_a_folder_that_is_not_a_bundle(tmp_path):
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); port = s.getsockname()[1]
    r = subprocess.run([BIN/'bear-app', '--model', str(tmp_path), '--port', str(port)], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1
    assert 'is not a model bundle' in r.stderr


def test_choose_model(tmp_path):
    "--model wins; else the newest bundle under --models (the starter is built only when there is none)"
    import shutil
    from _starter import starter_bundle
    models = tmp_path/'models'
    shutil.copytree(starter_bundle(), models/'mine')
    assert bapp.choose_model(None, models) == (models/'mine').resolve()
    assert bapp.choose_model(str(starter_bundle()), models) == starter_bundle().resolve()

"""The Voilà app at widget level (no browser): the GUI built from the real starter `Predictor`, driven
the way the browser drives it (set the FileUpload's value as ipywidgets 8 sends it, click Classify);
the prediction log, the "wrong?" row and review mode (with a log in a temporary folder); the
repository's Voilà configuration and template; the `bear-app` launcher's checks and the settings it
hands to the page's kernels."""
import ast, base64, hashlib, io, json, os, re, socket, sqlite3, subprocess, sys
from datetime import datetime, timezone
from pathlib import Path

import ipywidgets as widgets
import pytest
from PIL import Image

from bear_classifier import app as bapp, launch, testing
from bear_classifier.app import BearApp, answer_text, build_app, page_words, thumbnail, upload_limit, websocket_limit
from bear_classifier.files import Settings
from bear_classifier.images import MAX_IMAGE_BYTES, ImageError, decode_bytes
from bear_classifier.predlog import NONE_OF_THESE, PredictionLog

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture(scope='session')
def predictor():
    "The real inference core on the offline starter model"
    from bear_classifier.inference import Predictor
    return Predictor.load(testing.starter_bundle())


@pytest.fixture(scope='session')
def sample_photos(): return testing.sample_photos()


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
def grizzly_photo():
    files = sorted(testing.require_shared_data('bears_shift', 'grizzly').glob('*.jpg'))
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
    words = page_words(predictor.card)                                             # the card's words, not the code's
    assert words['title'] in box.children[0].value and box.children[1].value == words['instructions']
    assert predictor.name in app.info.value and 'starter' in app.info.value
    for label in predictor.vocab: assert label in app.info.value
    assert app.feedback.layout.display == 'none' and app.thanks.value == ''          # nothing to judge yet
    assert 'logged' not in app.info.value                                          # no log given: nothing logged


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
        pred = predictor.predict_bytes(data)
        assert app.label.value == answer_text(pred, words=app.words), name
        for k, v in pred.probs.items(): assert f'{v:.4f}' in app.probs.value


def test_coffee_is_not_a_bear(predictor, sample_photos):
    app = BearApp(predictor)
    upload(app, jpeg(sample_photos['coffee']), 'coffee.jpg'); click(app)
    assert app.label.value == page_words(predictor.card)['none'] == bapp.none_text(predictor.card)
    assert len(app.out.outputs) == 1                  # the thumbnail still shows what was classified


def _bad_uploads():
    good = jpeg(Image.new('RGB', (64, 48), (90, 60, 30)))
    bomb = testing.png_bomb(30000, 30000)                                          # 900 M pixels in 100 bytes
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
    data = _bad_uploads()[code]
    with pytest.raises(ImageError) as e: decode_bytes(data, name=f'{code}.jpg')            # the one decoder's message
    assert e.value.code == code
    message = str(e.value)
    with pytest.raises(ImageError) as e2: predictor.predict_bytes(data, f'{code}.jpg')     # the inference core agrees
    assert (e2.value.code, str(e2.value)) == (code, message)
    assert '\n' not in message and message
    app = BearApp(predictor)
    upload(app, data, f'{code}.jpg'); click(app)
    assert app.label.value == message
    assert app.label.style.text_color and app.out.outputs == () and app.probs.value == ''
    assert app.upload.value == () and not app.button.disabled
    upload(app, jpeg(sample_photos['chelsea']), 'chelsea.jpg'); click(app)    # and the next photo works
    assert app.label.value == answer_text(predictor.predict_bytes(jpeg(sample_photos['chelsea'])), words=app.words)
    assert not app.label.style.text_color and len(app.out.outputs) == 1


def test_unexpected_errors_are_shown_not_raised(predictor, capfd):
    class Broken:
        name, kind, version, vocab = 'broken', 'trained', '1', ['grizzly', 'black', 'teddy']
        def predict(self, x): raise RuntimeError('the model file went away')
    app = BearApp(Broken())
    upload(app, jpeg(Image.new('RGB', (32, 32)))); click(app)
    assert app.label.value == 'Could not classify photo.jpg: RuntimeError: the model file went away'
    assert 'Traceback' in capfd.readouterr().err and not app.button.disabled     # on the server's stderr, not the page


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
    assert app.label.value == answer_text(predictor.predict_bytes(sideways), words=app.words)
    assert app.label.value.startswith('Prediction: grizzly')
    # the model saw the upright photo too: its answer is the upright photo's, up to JPEG noise
    assert abs(predictor.predict_bytes(sideways).probability - predictor.predict(upright).probability) < 0.02


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


# ---- the prediction log, "wrong?" and review mode ---------------------------------------------------

@pytest.fixture
def logdb(tmp_path): return tmp_path/'data'/'predictions.sqlite'


def rows(path):
    log = PredictionLog(path)
    try: return log.rows()
    finally: log.close()


def shown_fixes(app): return {a for a, b in app.fixes.items() if b.layout.display != 'none'}


def verdict_buttons(app): return [app.right, *app.fixes.values()]


def test_every_answer_is_logged(predictor, grizzly_photo, logdb):
    app = BearApp(predictor, log=logdb)
    assert 'logged without the photo' in app.info.value
    upload(app, grizzly_photo); click(app)
    pred = predictor.predict_bytes(grizzly_photo)
    [r] = rows(logdb)
    assert (r['frontend'], r['model_name'], r['model_version'], r['model_kind']) == ('app', predictor.name, str(predictor.version), 'starter')
    assert (r['label'], r['in_domain']) == (pred.label, int(pred.in_domain)) == ('grizzly', 1)
    assert r['probability'] == pytest.approx(pred.probability, abs=1e-6)
    assert json.loads(r['probs']) == pytest.approx(pred.probs, abs=1e-6)
    from PIL import ImageOps
    assert (r['sha256'], r['nbytes']) == (hashlib.sha256(grizzly_photo).hexdigest(), len(grizzly_photo))
    assert (r['width'], r['height']) == ImageOps.exif_transpose(Image.open(io.BytesIO(grizzly_photo))).size
    assert r['latency_ms'] > 0 and r['feedback'] is None and r['reviewer'] is None
    assert r['image_path'] is None and not (logdb.parent/'review').exists()          # privacy by default: no photo kept
    upload(app, b'not a photo at all', 'notes.txt'); click(app)                    # a bad upload is no prediction
    assert len(rows(logdb)) == 1 and app.feedback.layout.display == 'none'


def test_right_and_wrong(predictor, grizzly_photo, logdb):
    "Right: logged, nothing kept. A correction: logged, and the photo lands in the review queue with a manifest row"
    from bear_classifier.manifest import read_manifest, usable_files
    app = BearApp(predictor, log=logdb)
    upload(app, grizzly_photo); click(app)
    assert app.feedback.layout.display is None and shown_fixes(app) == {'black', 'teddy', NONE_OF_THESE}
    assert app.fixes[NONE_OF_THESE].description == app.words['none_button'] and app.right.description == 'Right'
    app.right.click()
    assert 'Thanks — glad it was right' in app.thanks.value and all(b.disabled for b in verdict_buttons(app))
    app.fixes['teddy'].click()                                                     # one verdict per answer
    assert rows(logdb)[-1]['feedback'] == 'grizzly' and not (logdb.parent/'review').exists()
    upload(app, grizzly_photo); click(app)                                         # the next answer: the row is back
    assert not any(b.disabled for b in verdict_buttons(app)) and app.thanks.value == ''
    app.fixes['teddy'].click()
    assert 'Thanks — saved as teddy for review' in app.thanks.value
    first, second = rows(logdb)
    assert (first['feedback'], second['feedback']) == ('grizzly', 'teddy')
    review = logdb.parent/'review'
    saved = Path(second['image_path'])
    assert saved.parent == review/'teddy' and saved.read_bytes() == grizzly_photo
    [m] = read_manifest(review)
    assert (m['file'], m['label'], m['source'], m['status']) == (f'teddy/{saved.name}', 'teddy', 'feedback', 'ok')
    assert m['sha256'] == hashlib.sha256(grizzly_photo).hexdigest() and usable_files(review) == [saved]


def test_review_mode(predictor, grizzly_photo, sample_photos, logdb):
    "The answer is a suggestion; Classify waits for the reviewer; verdicts land in the log's reviewer column"
    from bear_classifier.manifest import read_manifest
    from bear_classifier.monitor import window_figures
    app = build_app(predictor, log=logdb, review=True).bear
    assert 'Review mode' in app.box.children[2].value and app.right.description == 'Accept'
    upload(app, grizzly_photo); click(app)
    p = predictor.predict_bytes(grizzly_photo).probability
    assert app.label.value == f'Suggested: grizzly ({p:.2f}) — accept or correct'
    assert app.button.disabled and app.feedback.layout.display is None
    coffee = jpeg(sample_photos['coffee'])
    upload(app, coffee, 'coffee.jpg'); click(app)                                  # not before the verdict
    assert app.label.value.startswith('Suggested: grizzly') and 'Accept or correct the suggestion' in app.thanks.value
    assert len(rows(logdb)) == 1
    app.right.click()
    assert 'Accepted: grizzly · 1 reviewed in this session, the model was right in 1' in app.thanks.value
    assert not app.button.disabled
    click(app)                                                                     # now the waiting upload
    assert app.label.value == f"Suggested: {app.words['none_button']} — accept or correct"
    assert shown_fixes(app) == {'black', 'grizzly', 'teddy'}
    app.fixes['teddy'].click()
    assert 'Corrected to teddy — saved for review · 2 reviewed' in app.thanks.value
    logged = rows(logdb)
    assert [(r['reviewer'], r['feedback']) for r in logged] == [('grizzly', None), ('teddy', None)]
    assert [m['label'] for m in read_manifest(logdb.parent/'review')] == ['teddy']
    assert window_figures(logged, ['black', 'grizzly', 'teddy', NONE_OF_THESE])['reviewer_agreement'] == 0.5


@pytest.mark.parametrize('where', ['under_a_file', 'a_folder'])
def test_a_log_that_cannot_be_opened_costs_nobody_the_answer(predictor, grizzly_photo, tmp_path, capfd, where):
    if where == 'under_a_file': (tmp_path/'f').write_text('a file, not a folder'); path = tmp_path/'f'/'log.sqlite'
    else: path = tmp_path/'log.sqlite'; path.mkdir()                              # SQLite cannot open a folder
    app = BearApp(predictor, log=path)
    for _ in range(2):
        upload(app, grizzly_photo); click(app)
        assert app.label.value.startswith('Prediction: grizzly; Probability: '), app.label.value
        assert len(app.out.outputs) == 1 and app.feedback.layout.display == 'none' and not app.button.disabled
    err = capfd.readouterr().err
    assert err.count(f'bear-app: cannot open the prediction log {path}') == 2, err


def test_a_log_that_fails_later(predictor, grizzly_photo, logdb, capfd):
    "Writes that fail (disk full, I/O error) after the log opened: the answer stands; a failed verdict can be retried"
    log = PredictionLog(logdb)
    app = BearApp(predictor, log=log)
    upload(app, grizzly_photo); click(app)
    real = log.feedback
    def broken(*a, **k): raise sqlite3.OperationalError('disk I/O error')
    log.feedback = broken
    app.fixes['black'].click()
    assert 'could not be saved' in app.thanks.value and not app.fixes['black'].disabled
    log.feedback = real
    app.fixes['black'].click()                                                     # tried again, recorded
    assert 'saved as black' in app.thanks.value and rows(logdb)[-1]['feedback'] == 'black'
    log.log = broken
    upload(app, grizzly_photo); click(app)
    assert app.label.value.startswith('Prediction: grizzly') and app.feedback.layout.display == 'none'
    rev = BearApp(predictor, log=log, review=True)                                 # a reviewer is told, and not blocked
    upload(rev, grizzly_photo); click(rev)
    assert rev.label.value.startswith('Suggested: grizzly') and 'cannot be recorded' in rev.thanks.value
    assert not rev.button.disabled
    err = capfd.readouterr().err
    assert 'not recorded' in err and err.count('prediction not logged') == 2 and 'disk I/O error' in err


# ---- the repository's Voilà configuration -------------------------------------------------------

def test_voila_config():
    cfg = json.loads((ROOT/'voila.json').read_text())
    v, vc = cfg['Voila'], cfg['VoilaConfiguration']
    assert v['ip'] == '127.0.0.1' and v['port'] == 8866 and v['port_retries'] == 0 and v['open_browser'] is False
    assert vc['preheat_kernel'] is True and vc['default_pool_size'] >= 1
    ws = v['tornado_settings']['websocket_max_message_size']
    assert ws == websocket_limit(ROOT) > 10 << 20                           # above Tornado's default
    assert upload_limit(ROOT) + bapp.WEBSOCKET_HEADROOM <= ws               # the browser refuses before Tornado does
    assert vc['multi_kernel_manager_class'] == 'bear_classifier.launch.CappedKernelManager' and cfg['CappedKernelManager']['max_kernels'] <= 6
    km = cfg['MappingKernelManager']
    assert km['cull_idle_timeout'] > 0 and km['cull_interval'] > 0 and km['cull_connected'] is True
    assert v['tornado_settings']['allow_remote_access'] is False            # jupyter_server's Host check (DNS rebinding) is on


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


def test_bear_app_review_mode_needs_a_writable_log(tmp_path):
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); port = s.getsockname()[1]
    (tmp_path/'f').write_text('a file, not a folder')
    r = subprocess.run([BIN/'bear-app', '--review', '--log', str(tmp_path/'f'/'log.sqlite'), '--port', str(port)],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1
    assert r.stderr.startswith('bear-app: --review records every verdict, but the prediction log') and 'cannot be written' in r.stderr


def test_choose_model(tmp_path):
    "--model wins; else the newest bundle under --models (the starter is built only when there is none)"
    import shutil
    from bear_classifier.testing import starter_bundle
    models = tmp_path/'models'
    shutil.copytree(starter_bundle(), models/'mine')
    assert launch.choose_model(None, models) == (models/'mine').resolve()
    assert launch.choose_model(str(starter_bundle()), models) == starter_bundle().resolve()


def test_a_named_bundle_must_have_a_valid_card(tmp_path):
    (tmp_path/'model.json').write_text('{"vocab": ["a"]')                          # cut short
    with pytest.raises(SystemExit) as e: launch.choose_model(str(tmp_path))
    assert str(e.value).startswith('bear-app: ') and 'not valid JSON' in str(e.value) and '\n' not in str(e.value)


# ---- the settings bear-app hands to the page's kernels ---------------------------------------------

def test_kernels_read_back_what_bear_app_decided(tmp_path, monkeypatch):
    "bear-app's choices, written as BEAR_* variables, are what `Settings.from_env` reads in the kernel"
    monkeypatch.chdir(tmp_path)                                                    # the kernels run elsewhere (nbs/)
    s = launch.served_settings(Settings(models='models', review_root='queue', review_mode=True), 'models/m', tmp_path/'log.sqlite')
    env = launch.kernel_env(s)
    assert env == {'BEAR_MODEL_DIR': str(tmp_path/'models'/'m'), 'BEAR_MODELS': str(tmp_path/'models'),
                   'BEAR_LOG_DB': str(tmp_path/'log.sqlite'), 'BEAR_REVIEW_MODE': '1', 'BEAR_REVIEW_ROOT': str(tmp_path/'queue')}
    back = Settings.from_env(env)
    assert back == s and all(Path(getattr(back, f)).is_absolute() for f in ('model_dir', 'models', 'log_db', 'review_root'))
    off = launch.served_settings(Settings(), tmp_path/'m', None)
    assert launch.kernel_env(off)['BEAR_LOG_DB'] == 'off' and launch.kernel_env(off)['BEAR_REVIEW_MODE'] == '0'
    assert 'BEAR_REVIEW_ROOT' not in launch.kernel_env(off)                          # unset: review/ beside the log


def test_the_page_loads_the_model_bear_app_chose(predictor):
    p = bapp.load_page_predictor(Settings(model_dir=str(testing.starter_bundle())))
    assert (p.name, p.version, p.vocab) == (predictor.name, predictor.version, predictor.vocab)


@pytest.mark.parametrize('mod', [bapp, launch])
def test_app_reads_no_environment_and_imports_no_other_front_end(mod):
    "Configuration comes only through bear_classifier.files; app and the JSON service never import each other"
    tree = ast.parse(Path(mod.__file__).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not {m for m in imported if m and m.split('.')[-1] in ('api', 'service', 'testing')}, imported
    names = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
             and re.fullmatch(r'BEAR_[A-Z_]+', n.value)]
    assert not names, names                                                        # no BEAR_* variable named by hand


# ---- words from the card (issue 12): any labels, no bears in the code --------------------------------

class Stub:
    "A predictor for a model that knows nothing about bears"
    def __init__(self, vocab, task=None, in_domain=True):
        self.name, self.version, self.kind, self.vocab, self.in_domain = 'mine', '1', 'trained', list(vocab), in_domain
        self.card = {'vocab': self.vocab, **({'task': task} if task else {})}
    def predict(self, img):
        from bear_classifier.inference import Prediction
        probs = {l: 1 / len(self.vocab) for l in self.vocab}
        return Prediction(self.vocab[0], 0, probs[self.vocab[0]], probs, self.in_domain, .5, .4)


def page_text(app):
    "Everything the page shows in words: the widgets' texts"
    out = []
    for w in [*app.box.children, *app.feedback.children]:
        for k in ('value', 'description'):
            v = getattr(w, k, None)
            if isinstance(v, str): out.append(re.sub('<[^>]+>', ' ', v))
        if isinstance(w, widgets.Dropdown): out += [t for t, _ in w.options]
    return ' '.join(out)


def test_a_non_bear_model_says_nothing_about_bears(logdb):
    app = BearApp(Stub(['citroen_2cv', 'renault_4', 'vw_beetle'], in_domain=False), log=logdb)
    upload(app, jpeg(Image.new('RGB', (64, 64), (10, 200, 30)))); click(app)
    assert app.label.value == "This doesn't look like a citroen_2cv, renault_4 or vw_beetle"
    assert app.title == 'Citroen_2cv, renault_4 or vw_beetle?' and app.fixes[NONE_OF_THESE].description == 'none of these'
    assert 'bear' not in page_text(app).lower(), page_text(app)
    with_task = BearApp(Stub(['black', 'grizzly'], task='bear', in_domain=False))
    upload(with_task, jpeg(Image.new('RGB', (64, 64)))); click(with_task)
    assert with_task.label.value == "This doesn't look like a bear" and with_task.instructions == 'Upload a photo of a bear, then click Classify.'


def test_many_labels_get_a_dropdown(logdb):
    labels = [f'plant_{i}' for i in range(9)]
    app = BearApp(Stub(labels, task='houseplant'), log=logdb)
    assert app.fixes == {} and app.pick is not None and app.title == 'Which houseplant?'
    upload(app, jpeg(Image.new('RGB', (64, 64)))); click(app)
    pick, send = app.pick
    assert [a for _, a in pick.options][-1] == 'plant_0' and pick.value != 'plant_0'      # the model's answer last, not first
    assert ('not a houseplant', NONE_OF_THESE) in pick.options
    pick.value = 'plant_5'; send.click()
    assert 'saved as plant_5' in app.thanks.value and send.disabled and pick.disabled
    assert rows(logdb)[-1]['feedback'] == 'plant_5'


# ---- the page's server: the kernel ceiling (issue 16) -------------------------------------------------

def test_bear_app_refuses_a_ceiling_with_no_room_for_a_visitor():
    with pytest.raises(SystemExit) as e: launch.kernel_ceiling(ROOT, 1, 1)
    assert 'leaves no kernel for a visitor' in str(e.value)


def test_kernel_manager_ceiling():
    "Reservations and starts never add up past max_kernels; a visitor's start past it is a 503, not a kernel"
    import asyncio
    km = launch.CappedKernelManager(max_kernels=3)
    assert [km.admit() for _ in range(4)] == [True, True, True, False]
    km.release(); km.release(); km.release()
    km.starting = {'k1', 'k2', 'k3'}
    with pytest.raises(launch.KernelsBusy) as e: asyncio.run(km.start_kernel(env={'VOILA_PREHEAT': 'False'}))
    assert e.value.status_code == 503 and not km.admit()
    page = launch.busy_page(3)
    assert 'try again' in page and 'bear' not in page.lower()


def test_a_pre_heated_kernel_leaves_the_room_to_visitors_let_in():
    "The pool's next kernel waits while admitted visitors hold the room, and starts once they are served"
    import asyncio
    km = launch.CappedKernelManager(max_kernels=2)
    assert km.admit() and km.admit()
    async def refill():
        task = asyncio.ensure_future(km.start_kernel(env={'VOILA_PREHEAT': 'True'}))
        await asyncio.sleep(1.2)
        waiting = not task.done() and km.heated == []
        task.cancel()
        return waiting
    assert asyncio.run(refill()) and km.starting == set()


def test_a_visitors_reservation_becomes_its_starting_kernel(monkeypatch):
    "Never counted twice: once the visitor's kernel starts, the reservation is gone and the kernel counts once"
    import asyncio
    seen = []
    async def start(self, *a, **kw):
        seen.append((self.in_use(), self.reserved)); return kw['kernel_id']
    monkeypatch.setattr(launch.AsyncMappingKernelManager, 'start_kernel', start)
    km = launch.CappedKernelManager(max_kernels=2)
    async def visitor():
        assert km.admit()
        held = [True]; token = launch.LET_IN.set(held)
        try: return await km.start_kernel(env={'VOILA_PREHEAT': 'False'}), held[0]
        finally: launch.LET_IN.reset(token)
    kid, held = asyncio.run(visitor())
    assert seen == [(1, 0)] and held is False and (km.reserved, km.starting) == (0, set()) and kid


def test_a_visitor_never_waits_for_a_pool_kernel_that_has_no_room(monkeypatch):
    "The pool's next kernel: taken when started, promised when there is room to start it, else the visitor gets the busy page"
    import asyncio
    async def start(self, *a, **kw): return kw['kernel_id']
    monkeypatch.setattr(launch.AsyncMappingKernelManager, 'start_kernel', start)
    km = launch.CappedKernelManager(max_kernels=2)
    pre = {'VOILA_PREHEAT': 'True'}
    kid = asyncio.run(km.start_kernel(env=pre))
    assert km.heated == [kid] and km.take_pooled() and km.heated == []          # a started pool kernel: taken
    assert km.take_pooled() and km.take_pooled() and km.promised == 2            # the next ones: room promised
    assert not km.take_pooled() and not km.admit()                               # (the stand-in lists no kernel) 2 owed: full
    for _ in range(2): asyncio.run(km.start_kernel(env=pre))                     # promised starts do not wait
    assert km.promised == 0 and km.heated == []


# ---- a page kernel's memory (issue 16): serving model.onnx loads no torch, timm or fastai ---------------

HEAVY = ('torch', 'torchvision', 'fastai', 'timm', 'matplotlib', 'pandas')

PAGE_RUN = '''
import json, sys
from datetime import datetime, timezone
from pathlib import Path
import nbformat
page = nbformat.read(sys.argv[1], as_version=4)
ns = {}
for cell in page.cells:                                  # the page, as Voila runs it in a kernel
    if cell.cell_type == 'code': exec(cell.source, ns)
app, data = ns['box'].bear, Path(sys.argv[2]).read_bytes()
app.upload.value = ({'name': 'bear.jpg', 'type': 'image/jpeg', 'size': len(data), 'content': memoryview(data),
                     'last_modified': datetime(2024, 5, 1, tzinfo=timezone.utc)},)
app.button.click()                                       # classify: decode, ONNX, "none of these", a log row
label = app.label.value
app.fixes['teddy'].click()                               # a correction: the feedback row and the review queue
print(json.dumps(dict(backend=ns['predictor'].backend, label=label, thanks=app.thanks.value, rows=len(app.log.rows()),
                      heavy=[m for m in sys.argv[3].split(',') if m in sys.modules])))
'''

def test_the_page_loads_no_torch(tmp_path, sample_photos):
    "The page notebook run as a kernel runs it (bear-app's settings in the environment), one Classify and one correction"
    s = launch.served_settings(Settings(review_root=str(tmp_path/'review')), testing.starter_bundle(), tmp_path/'log.sqlite')
    bears = testing.shared_data('bears_shift', 'grizzly')
    photo, want = (sorted(bears.glob('*.jpg'))[0], 'Prediction: grizzly') if bears else (None, "This doesn't look like a bear")
    (tmp_path/'photo.jpg').write_bytes(photo.read_bytes() if photo else jpeg(sample_photos['chelsea']))
    r = subprocess.run([sys.executable, '-c', PAGE_RUN, str(ROOT/launch.PAGE), str(tmp_path/'photo.jpg'), ','.join(HEAVY)],
                       cwd=ROOT/'nbs', env={**os.environ, **launch.kernel_env(s)}, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out['backend'] == 'onnx' and out['label'].startswith(want), out
    assert 'saved as teddy' in out['thanks'] and out['rows'] == 1, out
    assert out['heavy'] == [], f"the page's path imports {out['heavy']} again: a Voila kernel per visitor pays for them"

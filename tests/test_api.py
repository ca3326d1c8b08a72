"""The JSON prediction service (nbs/15_service.ipynb, nbs/16_api.ipynb) over real sockets: a real uvicorn server on a free
loopback port, the real `Predictor` with the starter model (built once into a temporary models folder),
and real HTTP requests through httpx. Every status the service can answer is produced here."""
import base64, hashlib, io, json, logging, os, re, select, signal, socket, sqlite3, subprocess, sys, threading, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from PIL import Image

from bear_classifier.files import Settings
from bear_classifier.inference import Predictor
from bear_classifier.api import create_app, openapi_schema, bear_serve
from bear_classifier.api import MULTIPART_SLACK
from bear_classifier.predlog import PredictionLog, NONE_OF_THESE
from bear_classifier.manifest import read_manifest, usable_files
from bear_classifier.testing import LoopbackServer, png_bomb, sample_photos, starter_bundle

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 300_000   # max upload bytes of the test server: small, so over-limit bodies stay cheap

def jpeg(img, quality=90) -> bytes:
    buf = io.BytesIO(); img.convert('RGB').save(buf, 'JPEG', quality=quality); return buf.getvalue()

def png(img) -> bytes:
    buf = io.BytesIO(); img.save(buf, 'PNG'); return buf.getvalue()

@pytest.fixture(scope='module')
def models_root():
    "A models folder that holds only the starter bundle (built once per process; read-only here)"
    return starter_bundle().parent

@pytest.fixture(scope='module')
def predictor(models_root):
    "The real inference core on the starter model (built here, in a temporary folder)"
    return Predictor.load(models_root=str(models_root))

@pytest.fixture(scope='module')
def samples(): return sample_photos()

@pytest.fixture(scope='module')
def photos(samples):
    return {k: jpeg(v) for k, v in samples.items()}

@pytest.fixture(scope='module')
def log_dir(tmp_path_factory):
    "The test server's prediction log and review queue live here, never in the project's data/"
    return tmp_path_factory.mktemp('api-log')

@pytest.fixture(scope='module')
def settings(log_dir):
    return Settings(max_upload_bytes=LIMIT, max_batch=4, workers=1, queue=2,
                    log_db=str(log_dir / 'predictions.sqlite'), review_root=str(log_dir / 'review'))

def logged(settings) -> dict:
    "The rows of the test server's log, by id"
    log = PredictionLog(settings.log_db)
    try: return {r['id']: r for r in log.rows()}
    finally: log.close()

def no_id(d): return {k: v for k, v in d.items() if k != 'id'}

@pytest.fixture(scope='module')
def server(predictor, settings):
    app = create_app(predictor, settings)
    with LoopbackServer(app) as srv:
        srv.app = app
        yield srv

def post_raw(url, data, ctype='image/jpeg', **kw):
    return httpx.post(f"{url}/predict", content=data, headers={'content-type': ctype}, timeout=60, **kw)

def post_file(url, data, name='photo.jpg', ctype='image/jpeg', field='file'):
    return httpx.post(f"{url}/predict", files={field: (name, data, ctype)}, timeout=60)

def check_error(r, status, code):
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {'error', 'detail'} and body['error'] == code, body
    assert body['detail'] and '\n' not in body['detail']
    return body

# ---------------------------------------------------------------- 200: predictions

def test_predict_multipart_matches_the_inference_core(server, predictor, photos):
    for name in ('chelsea', 'astronaut'):
        r = post_file(server.url, photos[name], f'{name}.jpg')
        assert r.status_code == 200, r.text
        got, want = r.json(), predictor.predict_bytes(photos[name])
        assert set(got) == {'id', 'label', 'index', 'probability', 'probabilities', 'in_domain', 'model'}
        assert isinstance(got['id'], int)
        assert (got['label'], got['index'], got['in_domain']) == (want.label, want.index, want.in_domain)
        assert got['probability'] == pytest.approx(float(want.probability), abs=1e-6)
        assert got['probabilities'] == pytest.approx({k: float(v) for k, v in want.probs.items()}, abs=1e-6)
        assert list(got['probabilities']) == list(map(str, predictor.vocab))
        assert got['model'] == {'name': str(predictor.name), 'version': str(predictor.version), 'kind': predictor.kind}
        assert got['model']['kind'] == 'starter'

def test_raw_body_jpeg_png_and_octet_stream(server, samples, photos):
    by_file = no_id(post_file(server.url, photos['coffee']).json())
    assert no_id(post_raw(server.url, photos['coffee']).json()) == by_file
    assert no_id(post_raw(server.url, photos['coffee'], 'application/octet-stream').json()) == by_file
    assert no_id(post_raw(server.url, photos['coffee'], 'image/jpeg; charset=binary').json()) == by_file
    r = post_raw(server.url, png(samples['rocket'].resize((200, 300))), 'image/png')
    assert r.status_code == 200 and r.json()['label'] in r.json()['probabilities']

# ---------------------------------------------------------------- 400: not a (whole) image

def test_400_not_an_image_truncated_empty(server, photos):
    check_error(post_raw(server.url, b'this is not a picture, just some text' * 10), 400, 'not_an_image')
    check_error(post_file(server.url, b'GIF? no: plain bytes ' * 20, 'photo.jpg'), 400, 'not_an_image')
    check_error(post_raw(server.url, photos['chelsea'][:len(photos['chelsea']) // 2]), 400, 'truncated')
    check_error(post_raw(server.url, b''), 400, 'empty')
    check_error(post_file(server.url, b'', 'empty.jpg'), 400, 'empty')

# ---------------------------------------------------------------- 413: too large

def test_413_declared_length_is_refused_before_reading(server):
    big = b'\xff\xd8' + os.urandom(LIMIT + MULTIPART_SLACK + 1000)
    r = post_raw(server.url, big)
    check_error(r, 413, 'too_large')
    assert 'limit' in r.json()['detail']

def read_http_response(sock) -> tuple[int, dict]:
    "The status and JSON body of the HTTP/1.1 response waiting on `sock` (Content-Length framed, as uvicorn sends JSON)"
    buf = b''
    while b'\r\n\r\n' not in buf and (got := sock.recv(65536)): buf += got
    head, _, body = buf.partition(b'\r\n\r\n')
    lines = head.decode('latin-1').split('\r\n')
    n = int({k.lower(): v.strip() for k, _, v in (l.partition(':') for l in lines[1:])}['content-length'])
    while len(body) < n and (got := sock.recv(65536)): body += got
    return int(lines[0].split()[1]), json.loads(body[:n])

def test_413_chunked_upload_is_stopped_while_streaming(server):
    """No Content-Length: the server must count the body as it streams in and answer 413 long before its end.
    A raw socket sends the chunks one by one and looks for the answer after each: an httpx client would only
    read the answer after sending the whole body, whether the server refused it early or late."""
    limit, chunk, n = LIMIT + MULTIPART_SLACK, b'\0' * 64_000, 40           # 2.56 MB: 7x the limit of /predict
    with socket.create_connection((server.host, server.port), timeout=30) as sock:
        sock.sendall(b'POST /predict HTTP/1.1\r\nHost: test\r\nContent-Type: image/jpeg\r\nTransfer-Encoding: chunked\r\n\r\n')
        sent, answered = 0, False
        for _ in range(n):
            try: sock.sendall(b'%x\r\n%s\r\n' % (len(chunk), chunk))
            except OSError: answered = True; break     # the server answered and closed: read what it said
            sent += len(chunk)
            if select.select([sock], [], [], 0.5 if sent > limit else 0.01)[0]: answered = True; break
        if not answered: sock.sendall(b'0\r\n\r\n')   # the whole body went in: let a late answer come
        status, body = read_http_response(sock)
    assert (status, body['error']) == (413, 'too_large'), (status, body)
    assert answered and sent < n * len(chunk), f'the server answered only after the whole body ({sent:,} bytes) was sent'
    assert limit < sent <= limit + 8 * len(chunk), f'answered after {sent:,} bytes; the limit is {limit:,}'

def test_413_one_file_over_the_limit(server):
    r = post_file(server.url, b'\xff\xd8' + os.urandom(LIMIT + 10), 'huge.jpg')   # fits the body slack, not the file limit
    body = check_error(r, 413, 'too_large')
    assert 'huge.jpg' in body['detail']

def test_413_decompression_bomb(server):
    bomb = Image.new('1', (15_000, 15_000))    # 225 M pixels, a few KB as PNG
    data = png(bomb)
    assert len(data) < LIMIT
    check_error(post_raw(server.url, data, 'image/png'), 413, 'decompression_bomb')

# ---------------------------------------------------------------- 415: unsupported type

HEIC = b'\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic' + b'\x00' * 64

def test_415_unsupported_types(server, photos):
    check_error(post_raw(server.url, b'hello', 'text/plain'), 415, 'unsupported_media_type')
    check_error(post_raw(server.url, b'{"image": "x"}', 'application/json'), 415, 'unsupported_media_type')
    check_error(post_raw(server.url, photos['chelsea'], ''), 415, 'unsupported_media_type')
    check_error(post_file(server.url, photos['chelsea'], 'notes.txt', 'text/plain'), 415, 'unsupported_media_type')
    check_error(post_raw(server.url, HEIC, 'image/heic'), 415, 'unsupported_format')
    check_error(post_raw(server.url, b'%PDF-1.7\n' + b'0' * 100, 'application/octet-stream'), 415, 'unsupported_format')
    check_error(post_file(server.url, HEIC, 'IMG_0001.HEIC', 'image/heic'), 415, 'unsupported_format')

# ---------------------------------------------------------------- 422: malformed requests

def test_422_malformed_requests(server, photos):
    check_error(post_file(server.url, photos['chelsea'], field='photo'), 422, 'missing_file')
    r = httpx.post(f"{server.url}/predict", data={'file': 'not a file'}, files={'other': ('x.jpg', b'x')}, timeout=60)
    check_error(r, 422, 'missing_file')
    r = httpx.post(f"{server.url}/predict", content=b'--xx\r\nnonsense', timeout=60,
                   headers={'content-type': 'multipart/form-data'})       # no boundary
    check_error(r, 422, 'malformed_request')
    r = httpx.post(f"{server.url}/predict/batch", data={'note': 'no files here'}, timeout=60)
    check_error(r, 415, 'unsupported_media_type')   # a urlencoded form is not multipart
    r = httpx.post(f"{server.url}/predict/batch", content=b'--b\r\n\r\n--b--\r\n', timeout=60,
                   headers={'content-type': 'multipart/form-data; boundary=b'})
    assert r.status_code == 422 and r.json()['error'] in ('missing_file', 'malformed_request'), r.text

def test_404_405_are_json_too(server):
    check_error(httpx.get(f"{server.url}/nope"), 404, 'not_found')
    check_error(httpx.get(f"{server.url}/predict"), 405, 'method_not_allowed')

# ---------------------------------------------------------------- batch

def test_batch_reports_each_file_and_never_fails_the_batch(server, predictor, photos):
    files = [('files', ('a.jpg', photos['chelsea'], 'image/jpeg')),
             ('files', ('junk.jpg', b'not an image', 'image/jpeg')),
             ('files', ('notes.txt', b'hello', 'text/plain')),
             ('files', ('b.jpg', photos['coffee'], 'image/jpeg'))]
    r = httpx.post(f"{server.url}/predict/batch", files=files, timeout=60)
    assert r.status_code == 200, r.text
    items = r.json()
    assert [(i['filename'], i['status'], i['error']) for i in items] == [
        ('a.jpg', 200, None), ('junk.jpg', 400, 'not_an_image'), ('notes.txt', 415, 'unsupported_media_type'), ('b.jpg', 200, None)]
    assert no_id(items[0]['prediction']) == no_id(post_file(server.url, photos['chelsea']).json())
    assert items[3]['prediction']['label'] == predictor.predict_bytes(photos['coffee']).label
    assert items[1]['prediction'] is None and items[1]['detail']

def test_batch_limits(server, photos):
    five = [('files', (f'{i}.jpg', photos['chelsea'], 'image/jpeg')) for i in range(5)]
    check_error(httpx.post(f"{server.url}/predict/batch", files=five, timeout=60), 413, 'too_many_files')
    one_big = [('files', ('ok.jpg', photos['chelsea'], 'image/jpeg')), ('files', ('big.jpg', os.urandom(LIMIT + 1), 'image/jpeg'))]
    items = httpx.post(f"{server.url}/predict/batch", files=one_big, timeout=60).json()
    assert [(i['status'], i['error']) for i in items] == [(200, None), (413, 'too_large')]
    r = httpx.post(f"{server.url}/predict/batch", content=photos['chelsea'], headers={'content-type': 'image/jpeg'}, timeout=60)
    check_error(r, 415, 'unsupported_media_type')

# ---------------------------------------------------------------- batch: bounded in pixels, served in turns

def test_batch_over_the_pixel_budget_is_refused_from_the_headers(predictor, photos):
    """The issue's batch: 16 PNGs whose headers say 9400x9400 (each under the 89 MP per-image limit, 1,414 MP in all).
    It gets 413 at once, from the headers (nothing is decoded: these PNGs hold one row of pixels), and a single
    /predict sent at the same time is answered as fast as ever. A file that is over the per-image limit on its own
    gets its own error entry and does not count toward the budget."""
    with LoopbackServer(create_app(predictor, Settings(max_upload_bytes=LIMIT, max_batch=16, log_db='off'))) as srv:
        big = [('files', (f'big{i}.png', png_bomb(9400, 9400), 'image/png')) for i in range(16)]
        with ThreadPoolExecutor(1) as ex:
            t0 = time.perf_counter()
            batch = ex.submit(httpx.post, f"{srv.url}/predict/batch", files=big, timeout=60)
            single = post_raw(srv.url, photos['chelsea']); single_s = time.perf_counter() - t0
            r = batch.result(); batch_s = time.perf_counter() - t0
        body = check_error(r, 413, 'too_large')
        assert '16 images of this batch have 1,414 MP in all' in body['detail'], body
        assert batch_s < 5 and single.status_code == 200 and single_s < 5, (batch_s, single_s)
        files = [('files', ('bomb.png', png_bomb(20_000, 20_000), 'image/png')), ('files', ('big.png', png_bomb(9400, 9400), 'image/png')),
                 ('files', ('a.jpg', photos['coffee'], 'image/jpeg'))]
        items = httpx.post(f"{srv.url}/predict/batch", files=files, timeout=60).json()
        assert [(i['filename'], i['status'], i['error']) for i in items] == [
            ('bomb.png', 413, 'decompression_bomb'), ('big.png', 400, 'truncated'), ('a.jpg', 200, None)], items

def test_batch_pixel_budget_is_a_setting(predictor, photos, samples):
    """`max_batch_pixels` bounds the sum over the readable files: a batch of real photos just under it is served,
    one pixel over it is refused whole, and files that fail on their own do not count."""
    sizes = [samples[n].size for n in ('chelsea', 'coffee')]
    budget = sum(w * h for w, h in sizes)
    files = [('files', ('a.jpg', photos['chelsea'], 'image/jpeg')), ('files', ('junk.jpg', b'not an image', 'image/jpeg')),
             ('files', ('b.jpg', photos['coffee'], 'image/jpeg'))]
    for limit, status in ((budget, 200), (budget - 1, 413)):
        with LoopbackServer(create_app(predictor, Settings(max_upload_bytes=LIMIT, max_batch_pixels=limit, log_db='off'))) as srv:
            r = httpx.post(f"{srv.url}/predict/batch", files=files, timeout=60)
        assert r.status_code == status, (limit, r.text)
    body = check_error(r, 413, 'too_large')
    assert body['detail'].startswith(f"the 2 images of this batch have {budget / 1e6:,.0f} MP in all"), body

class SlowPredictor:
    "The real predictor, taking `delay` seconds per image on the worker, and noting what ran when"
    def __init__(self, p, delay):
        self.p, self.delay, self.events, self.started = p, delay, [], threading.Event()
        self.name, self.version, self.kind, self.vocab, self.card = p.name, p.version, p.kind, p.vocab, p.card
    def predict(self, img):
        self.events.append('single'); time.sleep(self.delay); return self.p.predict(img)
    def predict_batch(self, imgs):
        self.events.append(f'batch of {len(imgs)}'); self.started.set(); time.sleep(self.delay * len(imgs))
        return self.p.predict_batch(imgs)

def test_a_batch_takes_turns_with_single_predictions(predictor, photos):
    """A batch runs as a sequence of pool jobs; a /predict sent while it runs gets in between two of them, so it waits
    for one job (here one image: 0.5 s), not for the whole batch (2 s). Small images still share a job by default."""
    slow = SlowPredictor(predictor, delay=0.5)
    app = create_app(slow, Settings(max_upload_bytes=LIMIT, max_batch=4, workers=1, queue=4, log_db='off'))
    names = ['chelsea', 'coffee', 'astronaut', 'rocket']
    files = [('files', (f'{n}.jpg', photos[n], 'image/jpeg')) for n in names]
    with LoopbackServer(app) as srv:
        items = httpx.post(f"{srv.url}/predict/batch", files=files, timeout=60).json()
        assert slow.events == ['batch of 4'], slow.events                      # 4 small photos: one job, as before
        assert [i['prediction']['label'] for i in items] == [predictor.predict_bytes(photos[n]).label for n in names]
        app.state.service.job_pixels = 1                                        # now every image is a job of its own
        slow.events.clear(); slow.started.clear()
        with ThreadPoolExecutor(1) as ex:
            batch = ex.submit(httpx.post, f"{srv.url}/predict/batch", files=files, timeout=60)
            assert slow.started.wait(30)
            t0 = time.perf_counter(); single = post_raw(srv.url, photos['china']); waited = time.perf_counter() - t0
            r = batch.result()
    assert single.status_code == 200 and r.status_code == 200, (single.text, r.text)
    assert [(i['filename'], i['status']) for i in r.json()] == [(f'{n}.jpg', 200) for n in names]
    assert slow.events.index('single') < len(slow.events) - 1 and slow.events.count('batch of 1') == 4, slow.events
    assert waited < 1.6, f'a single /predict waited {waited:.2f} s behind a 4-job batch; one job is 0.5 s'

# ---------------------------------------------------------------- the prediction log

def test_predictions_are_logged(server, settings, predictor, photos, samples):
    r = post_file(server.url, photos['chelsea'], 'chelsea.jpg')
    assert r.status_code == 200
    got = r.json()
    row = logged(settings)[got['id']]
    assert (row['frontend'], row['label'], bool(row['in_domain'])) == ('api', got['label'], got['in_domain'])
    assert (row['model_name'], row['model_version'], row['model_kind']) == (str(predictor.name), str(predictor.version), 'starter')
    assert row['probability'] == pytest.approx(got['probability']) and json.loads(row['probs']) == pytest.approx(got['probabilities'])
    assert row['sha256'] == hashlib.sha256(photos['chelsea']).hexdigest() and row['nbytes'] == len(photos['chelsea'])
    assert (row['width'], row['height']) == samples['chelsea'].size
    assert 0 < row['latency_ms'] < 60_000
    assert row['image_path'] is None and row['feedback'] is None            # the photo itself is not kept
    assert not (Path(settings.log_db).parent / 'review').exists()

def test_batch_predictions_are_logged_failures_are_not(server, settings, photos):
    before = logged(settings)
    files = [('files', ('a.jpg', photos['coffee'], 'image/jpeg')), ('files', ('junk.jpg', b'not an image', 'image/jpeg')),
             ('files', ('b.jpg', photos['rocket'], 'image/jpeg'))]
    items = httpx.post(f"{server.url}/predict/batch", files=files, timeout=60).json()
    ids = [i['prediction']['id'] if i['prediction'] else None for i in items]
    assert ids[1] is None and ids[0] and ids[2] and ids[0] != ids[2]
    rows = logged(settings)
    assert set(rows) - set(before) == {ids[0], ids[2]}                      # the broken file is not a prediction
    assert rows[ids[2]]['sha256'] == hashlib.sha256(photos['rocket']).hexdigest()
    check_error(post_raw(server.url, b'no image'), 400, 'not_an_image')
    assert len(logged(settings)) == len(rows)

# ---------------------------------------------------------------- feedback

def b64(b): return base64.b64encode(b).decode()

def answer_of(pred): return pred['label'] if pred['in_domain'] else NONE_OF_THESE

def test_feedback_confirms_and_corrects(server, settings, predictor, photos):
    review = Path(settings.review_root)
    right = post_file(server.url, photos['astronaut']).json()
    fb = httpx.post(f"{server.url}/feedback", json={'id': right['id'], 'label': answer_of(right), 'image': b64(photos['astronaut'])})
    assert fb.status_code == 200, fb.text
    assert fb.json() == {'id': right['id'], 'label': answer_of(right), 'correct': True, 'saved': None}
    assert logged(settings)[right['id']]['feedback'] == answer_of(right)
    assert not read_manifest(review)                                        # a confirmation keeps no photo
    wrong = post_raw(server.url, photos['coffee']).json()
    fix = next(l for l in [*map(str, predictor.vocab), NONE_OF_THESE] if l != answer_of(wrong))
    fb = httpx.post(f"{server.url}/feedback", json={'id': wrong['id'], 'label': fix, 'image': b64(photos['coffee'])})
    assert fb.status_code == 200, fb.text
    assert (fb.json()['correct'], fb.json()['label']) == (False, fix)
    saved = review / fb.json()['saved']
    assert fb.json()['saved'].startswith(f'{fix}/') and saved.read_bytes() == photos['coffee']
    m = [r for r in read_manifest(review) if r['file'] == fb.json()['saved']]
    assert len(m) == 1 and (m[0]['label'], m[0]['source'], m[0]['status']) == (fix, 'feedback', 'ok')
    assert m[0]['sha256'] == hashlib.sha256(photos['coffee']).hexdigest()
    assert logged(settings)[wrong['id']]['feedback'] == fix
    # a data: URL works too, a batch item's id as well; a correction without the photo is recorded, nothing saved
    item = httpx.post(f"{server.url}/predict/batch", files=[('files', ('c.jpg', photos['china'], 'image/jpeg'))], timeout=60).json()[0]
    other = next(l for l in [*map(str, predictor.vocab), NONE_OF_THESE] if l != answer_of(item['prediction']))
    fb = httpx.post(f"{server.url}/feedback", json={'id': item['prediction']['id'], 'label': other})
    assert fb.json() == {'id': item['prediction']['id'], 'label': other, 'correct': False, 'saved': None}
    fb = httpx.post(f"{server.url}/feedback", json={'id': item['prediction']['id'], 'label': other,
                                                    'image': 'data:image/jpeg;base64,' + b64(photos['china'])})
    assert fb.status_code == 200 and (review / fb.json()['saved']).read_bytes() == photos['china']

def test_feedback_corrected_twice_keeps_the_photo_once(server, settings, predictor, samples):
    """Correcting the same prediction again replaces the first correction: the photo is in the review queue once, under
    the latest label (moved there even when the second verdict comes without the photo), and it leaves the queue when
    the last verdict says the model was right after all."""
    photo = jpeg(samples['flower'], quality=77)          # bytes no other test sends: only this prediction holds them
    review, sha = Path(settings.review_root), hashlib.sha256(photo).hexdigest()
    pred = post_raw(server.url, photo).json()
    wrong = [l for l in [*map(str, predictor.vocab), NONE_OF_THESE] if l != answer_of(pred)]
    def queued():
        return sorted(f.relative_to(review).as_posix() for f in usable_files(review) if hashlib.sha256(f.read_bytes()).hexdigest() == sha)
    for label, image in ((wrong[0], photo), (wrong[1], photo), (wrong[0], None)):
        body = {'id': pred['id'], 'label': label} | ({'image': b64(image)} if image else {})
        fb = httpx.post(f"{server.url}/feedback", json=body)
        assert fb.status_code == 200 and fb.json()['saved'].startswith(f'{label}/'), fb.text
        assert queued() == [fb.json()['saved']], (label, queued())
        assert logged(settings)[pred['id']]['feedback'] == label
    fb = httpx.post(f"{server.url}/feedback", json={'id': pred['id'], 'label': answer_of(pred)})
    assert fb.json()['correct'] is True and queued() == [], queued()

def test_feedback_errors(server, settings, photos):
    pred = post_raw(server.url, photos['rocket']).json()
    url, pid, label = f"{server.url}/feedback", pred['id'], answer_of(pred)
    check_error(httpx.post(url, json={'id': 10**12, 'label': label}), 404, 'unknown_id')
    check_error(httpx.post(url, json={'id': 10**12, 'label': label, 'image': b64(b'junk')}), 404, 'unknown_id')
    body = check_error(httpx.post(url, json={'id': pid, 'label': 'panda'}), 422, 'unknown_label')
    assert NONE_OF_THESE in body['detail'] and 'grizzly' in body['detail']
    for bad in ({'id': str(pid), 'label': label}, {'id': True, 'label': label}, {'id': float(pid), 'label': label}):
        body = check_error(httpx.post(url, json=bad), 422, 'malformed_request')     # "5", true, 5.0: not ids
        assert body['detail'].startswith('id: must be a JSON integer') and json.dumps(bad['id']) in body['detail'], body
    for bad in [{'label': label}, {'id': 'seven', 'label': label}, {'id': 0, 'label': label}, {'id': 2**64, 'label': label},
                {'id': pid}, {'id': pid, 'label': label, 'photo': 'x'}, {'id': pid, 'label': label, 'image': 'not base64!'},
                {'id': pid, 'label': label, 'image': 12}, [pid, label]]:
        check_error(httpx.post(url, json=bad), 422, 'malformed_request')
    check_error(httpx.post(url, content=b'{"id": 1, "label": ', headers={'content-type': 'application/json'}), 422, 'malformed_request')
    check_error(httpx.post(url, content=b'id=1&label=black', headers={'content-type': 'application/x-www-form-urlencoded'}), 422, 'malformed_request')
    check_error(httpx.post(url, json={'id': pid, 'label': label, 'image': b64(b'plain text, no picture')}), 400, 'not_an_image')
    check_error(httpx.post(url, json={'id': pid, 'label': label, 'image': ''}), 400, 'empty')
    check_error(httpx.post(url, json={'id': pid, 'label': label, 'image': b64(photos['rocket'][:len(photos['rocket']) // 2])}), 400, 'truncated')
    check_error(httpx.post(url, json={'id': pid, 'label': label, 'image': b64(HEIC)}), 415, 'unsupported_format')
    check_error(httpx.post(url, json={'id': pid, 'label': label, 'image': b64(b'\xff\xd8' + os.urandom(LIMIT))}), 413, 'too_large')
    check_error(httpx.post(url, json={'id': pid, 'label': label, 'image': b64(os.urandom(2 * LIMIT))}), 413, 'too_large')  # refused unread
    body = check_error(httpx.post(url, json={'id': pid, 'label': label, 'image': b64(photos['chelsea'])}), 422, 'image_mismatch')
    assert str(pid) in body['detail']
    assert logged(settings)[pid]['feedback'] is None                        # nothing was recorded by the refusals
    assert not [r for r in read_manifest(settings.review_root) if r['sha256'] in (hashlib.sha256(photos['chelsea']).hexdigest(),)]

# ---------------------------------------------------------------- a log that fails never fails an answer

def test_a_broken_log_does_not_break_predict(predictor, tmp_path, photos, capfd):
    (tmp_path / 'a-file').write_text('where the log folder should be')
    s = Settings(max_upload_bytes=LIMIT, log_db=str(tmp_path / 'a-file' / 'predictions.sqlite'))
    with LoopbackServer(create_app(predictor, s)) as srv:
        for _ in range(3):
            r = post_raw(srv.url, photos['chelsea'])
            assert r.status_code == 200 and r.json()['id'] is None and r.json()['label'], r.text
        items = httpx.post(f"{srv.url}/predict/batch", files=[('files', ('a.jpg', photos['coffee'], 'image/jpeg'))], timeout=60).json()
        assert items[0]['status'] == 200 and items[0]['prediction']['id'] is None
        check_error(httpx.post(f"{srv.url}/feedback", json={'id': 1, 'label': NONE_OF_THESE}), 503, 'log_unavailable')
    err = [l for l in capfd.readouterr().err.splitlines() if 'prediction log' in l]
    assert len(err) == 1 and err[0].startswith('bear-serve: cannot open the prediction log') and 'answering without logging' in err[0], err

def test_logging_off(predictor, photos):
    with LoopbackServer(create_app(predictor, Settings(max_upload_bytes=LIMIT, log_db='off'))) as srv:
        assert httpx.get(f"{srv.url}/health").json()['logging'] is False
        r = post_raw(srv.url, photos['chelsea'])
        assert r.status_code == 200 and r.json()['id'] is None
        check_error(httpx.post(f"{srv.url}/feedback", json={'id': 1, 'label': NONE_OF_THESE}), 503, 'feedback_off')

def test_a_locked_log_delays_no_answer_and_loses_no_row(predictor, tmp_path, photos, capfd):
    db = tmp_path / 'locked.sqlite'
    with LoopbackServer(create_app(predictor, Settings(max_upload_bytes=LIMIT, log_db=str(db)))) as srv:
        t0 = time.perf_counter(); post_raw(srv.url, photos['chelsea']).raise_for_status(); free = time.perf_counter() - t0
        other = sqlite3.connect(db, isolation_level=None)
        other.execute('BEGIN EXCLUSIVE')                  # another process holds the write lock
        try:
            t0 = time.perf_counter(); r = post_raw(srv.url, photos['chelsea']); held = time.perf_counter() - t0
            assert r.status_code == 200 and r.json()['id'] is None   # answered without waiting for the lock
            assert held < free + 2.0, (held, free)
        finally: other.execute('COMMIT'); other.close()
        for _ in range(200):                              # the row is written once the lock is free
            if PredictionLog(db).count() == 2: break
            time.sleep(0.05)
        assert PredictionLog(db).count() == 2
    assert 'prediction log' in capfd.readouterr().err

# ---------------------------------------------------------------- 503: bounded queue

def test_503_when_the_queue_is_full_then_recovers(server, photos):
    pool, gate = server.app.state.service.pool, threading.Event()
    held = [pool.submit(gate.wait, 30) for _ in range(pool.capacity)]   # occupy every worker and queue slot
    try:
        t0 = time.perf_counter()
        r = post_raw(server.url, photos['chelsea'])
        elapsed = time.perf_counter() - t0
        check_error(r, 503, 'busy')
        assert r.headers['retry-after'] == '1'
        assert elapsed < 1.0, f'a full queue should refuse at once, took {elapsed:.3f} s'
        check_error(httpx.post(f"{server.url}/predict/batch", files=[('files', ('a.jpg', photos['chelsea']))]), 503, 'busy')
        h = httpx.get(f"{server.url}/health")          # health is served by the event loop, never queued
        assert h.status_code == 200 and h.json()['pending'] == pool.capacity
    finally:
        gate.set()
        for f in held: f.result(timeout=30)
    assert post_raw(server.url, photos['chelsea']).status_code == 200
    assert pool.pending == 0

def test_overload_gives_200_or_503_never_a_crash(server, settings, photos):
    before = len(logged(settings))
    def one(_): return post_raw(server.url, photos['astronaut']).status_code
    with ThreadPoolExecutor(12) as ex: codes = list(ex.map(one, range(24)))
    assert set(codes) <= {200, 503} and 200 in codes, codes
    assert httpx.get(f"{server.url}/health").json()['pending'] == 0
    for _ in range(100):                  # every answer is logged, none of the refusals (rows written by now, or very soon)
        if len(logged(settings)) - before >= codes.count(200): break
        time.sleep(0.05)
    assert len(logged(settings)) - before == codes.count(200)

# ---------------------------------------------------------------- health and the model card

def test_health_is_503_loading_until_the_model_is_loaded(models_root, settings, photos):
    gate = threading.Event()
    def slow_load():   # the real loader, held back until the test has seen the 'loading' state
        gate.wait(60)
        return Predictor.load(models_root=str(models_root))
    with LoopbackServer(create_app(settings=settings, loader=slow_load)) as srv:
        h = httpx.get(f"{srv.url}/health")
        assert h.status_code == 503 and h.json()['status'] == 'loading' and h.json()['model'] is None
        assert h.headers['retry-after'] == '1'
        check_error(post_raw(srv.url, photos['chelsea']), 503, 'not_ready')
        check_error(httpx.get(f"{srv.url}/model"), 503, 'not_ready')
        gate.set()
        for _ in range(600):
            if (h := httpx.get(f"{srv.url}/health")).status_code == 200: break
            time.sleep(0.05)
        assert h.status_code == 200 and h.json()['status'] == 'ready'
        assert h.json()['model']['kind'] == 'starter' and (h.json()['workers'], h.json()['queue']) == (1, 2)
        assert post_raw(srv.url, photos['chelsea']).status_code == 200

def test_a_model_that_fails_to_load_is_reported_without_its_path(tmp_path, settings, photos, caplog):
    """Anonymous clients learn that the bundle failed and why, but not where it lives on the server's disk:
    the paths are cut to the bundle's folder name. The server's log has the whole message."""
    s = Settings(model_dir=str(tmp_path / 'not-a-bundle'), max_upload_bytes=LIMIT, log_db='off')
    (tmp_path / 'not-a-bundle').mkdir()
    with caplog.at_level(logging.ERROR, logger='bear_classifier.service'), LoopbackServer(create_app(settings=s)) as srv:
        for _ in range(600):
            if (h := httpx.get(f"{srv.url}/health")).json()['status'] != 'loading': break
            time.sleep(0.05)
        assert h.status_code == 503 and h.json()['status'] == 'error' and h.json()['detail']
        body = check_error(post_raw(srv.url, photos['chelsea']), 503, 'model_unavailable')
        card = check_error(httpx.get(f"{srv.url}/model"), 503, 'model_unavailable')
    for detail in (h.json()['detail'], body['detail'], card['detail']):
        assert 'not-a-bundle' in detail and str(tmp_path) not in detail and '/' not in detail.split('not-a-bundle')[0], detail
    assert h.json()['detail'].startswith('BundleError: not-a-bundle is not a model bundle'), h.json()
    logged_text = '\n'.join(r.getMessage() for r in caplog.records)
    assert str(tmp_path / 'not-a-bundle') in logged_text, logged_text

def test_model_card_has_no_paths_or_secrets(server, predictor, models_root):
    r = httpx.get(f"{server.url}/model")
    assert r.status_code == 200
    card = r.json()
    assert (card['name'], card['version'], card['kind']) == (str(predictor.name), str(predictor.version), predictor.kind)
    text = json.dumps(card)
    assert str(models_root) not in text and str(Path.home()) not in text and '/tmp' not in text
    def strings(o):
        if isinstance(o, dict): yield from (s for v in o.values() for s in strings(v))
        elif isinstance(o, list): yield from (s for v in o for s in strings(v))
        elif isinstance(o, str): yield o
    assert not [s for s in strings(card) if s.startswith('/')]

# ---------------------------------------------------------------- CORS

def test_cors_is_off_by_default_and_on_for_named_origins(predictor, server):
    pre = {'origin': 'https://app.example', 'access-control-request-method': 'POST'}
    r = httpx.options(f"{server.url}/predict", headers=pre)
    assert 'access-control-allow-origin' not in r.headers
    assert 'access-control-allow-origin' not in httpx.get(f"{server.url}/health", headers={'origin': 'https://app.example'}).headers
    s = Settings(cors_origins='https://app.example', max_upload_bytes=LIMIT, log_db='off')
    with LoopbackServer(create_app(predictor, s)) as srv:
        r = httpx.options(f"{srv.url}/predict", headers=pre)
        assert r.status_code == 200 and r.headers['access-control-allow-origin'] == 'https://app.example'
        r = httpx.options(f"{srv.url}/predict", headers={**pre, 'origin': 'https://evil.example'})
        assert r.headers.get('access-control-allow-origin') != 'https://evil.example'

# ---------------------------------------------------------------- the contract

def test_committed_openapi_matches_the_app(server):
    committed = json.loads((ROOT / 'openapi.json').read_text())
    assert committed == openapi_schema(), 'the API changed: run `bear-serve --openapi openapi.json` and commit it'
    assert httpx.get(f"{server.url}/openapi.json").json() == committed
    assert set(committed['paths']) == {'/predict', '/predict/batch', '/feedback', '/health', '/model'}

def test_schemathesis_finds_no_server_errors(server, tmp_path):
    exe = Path(sys.executable).parent / 'schemathesis'
    cmd = [str(exe), 'run', f"{server.url}/openapi.json", '--checks', 'not_a_server_error', '--max-examples', '15',
           '--workers', '1', '--request-timeout', '30', '--suppress-health-check', 'all']
    p = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=180,
                       env={**os.environ, 'SCHEMATHESIS_HOOKS': '', 'NO_COLOR': '1'})
    assert p.returncode == 0, p.stdout[-6000:] + p.stderr[-3000:]
    assert re.search(r'\d+ passed', p.stdout), p.stdout[-3000:]

# ---------------------------------------------------------------- the console command

def test_bear_serve_command(models_root, photos, tmp_path):
    env = {**os.environ, 'BEAR_MODELS': str(models_root), 'BEAR_QUEUE': '3', 'BEAR_REVIEW_ROOT': str(tmp_path / 'queue')}
    env.pop('BEAR_LOG_DB', None)
    log = tmp_path / 'served.sqlite'
    proc = subprocess.Popen([str(Path(sys.executable).parent / 'bear-serve'), '--port', '0', '--no-access-log', '--log-level', 'warning',
                             '--log', str(log)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = proc.stdout.readline()
        m = re.search(r'listening on (http://127\.0\.0\.1:\d+)', line)
        assert m, line
        url = m.group(1)
        assert 'queue=3' in line          # read from BEAR_QUEUE
        assert f'prediction log {log}' in line
        for _ in range(1200):
            if (h := httpx.get(f"{url}/health")).status_code == 200: break
            assert h.json()['status'] == 'loading'
            time.sleep(0.05)
        assert h.status_code == 200 and h.json()['queue'] == 3
        r = post_raw(url, photos['chelsea'])
        assert r.status_code == 200 and r.json()['model']['kind'] == 'starter'
        other = 'black' if r.json()['label'] != 'black' or not r.json()['in_domain'] else 'teddy'
        fb = httpx.post(f"{url}/feedback", json={'id': r.json()['id'], 'label': other, 'image': base64.b64encode(photos['chelsea']).decode()})
        assert fb.status_code == 200 and fb.json()['saved'].startswith(f'{other}/'), fb.text
        assert (tmp_path / 'queue' / fb.json()['saved']).read_bytes() == photos['chelsea']   # BEAR_REVIEW_ROOT
        row = PredictionLog(log).rows()[-1]
        assert (row['id'], row['frontend'], row['feedback']) == (r.json()['id'], 'api', other)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    # uvicorn shuts down gracefully, then re-raises the signal so the exit status says SIGTERM
    assert proc.returncode in (0, -signal.SIGTERM), out
    assert 'Traceback' not in out, out

def test_bear_serve_errors_are_one_line(tmp_path):
    for kw, msg in [(dict(workers=0), 'workers must be at least 1'), (dict(port=70000), 'port must be 0..65535'),
                    (dict(model_dir=str(tmp_path / 'nope')), 'not found')]:
        with pytest.raises(SystemExit) as e: bear_serve(**kw)
        assert str(e.value).startswith('bear-serve: ') and msg in str(e.value) and '\n' not in str(e.value)
    with pytest.raises(SystemExit, match='bear-serve: BEAR_WORKERS must be a whole number'):
        os.environ['BEAR_WORKERS'] = 'many'
        try: bear_serve()
        finally: del os.environ['BEAR_WORKERS']
    import socket
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); s.listen()
        with pytest.raises(SystemExit, match='pass another --port'): bear_serve(port=s.getsockname()[1])

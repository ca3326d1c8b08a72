"""The prediction log under concurrent writers, the feedback loop and review queue, and the service's background writer,
on SQLite (the embedded default) and on a real PostgreSQL server started for the tests (skipped, with the reason, where none can run)."""
import asyncio, io, itertools, multiprocessing as mp, sqlite3, time
from pathlib import Path
import pytest
from bear_classifier.cluster import PostgresServer, postgres_problem
from bear_classifier.files import project_root, sha256_bytes
from bear_classifier.images import encode_jpeg
from bear_classifier.manifest import read_manifest, usable_files
from bear_classifier.predlog import (PredictionLog, PredictionRecorder, NONE_OF_THESE, LogOff, LogUnavailable, LogBusy,
                                     log_name, log_problem, row_answer)
from bear_classifier.testing import free_port

N_PROC, N_ROWS = 6, 800

def _row(label='grizzly', p=.95, ind=True): return {'label': label, 'probability': p, 'probs': {label: p}, 'in_domain': ind}

@pytest.fixture(scope='module')
def jpeg(sample_photos): return encode_jpeg(sample_photos['coffee'])

@pytest.fixture(scope='module')
def postgres():
    "A real PostgreSQL server for this module (initdb in a temp folder, loopback port), stopped at the end"
    if why := postgres_problem():
        print(f'PostgreSQL tests skipped: {why}'); pytest.skip(f'PostgreSQL: {why}')
    with PostgresServer(free_port()) as pg: yield pg

_dbs = itertools.count()

@pytest.fixture(params=['sqlite', 'postgresql'])
def location(request, tmp_path):
    "Where a test's log lives: a SQLite file, or a fresh database on the PostgreSQL server"
    if request.param == 'sqlite': return tmp_path/'log.sqlite'
    return request.getfixturevalue('postgres').create_database(f'predlog_{next(_dbs)}')

def _writer(path, k, q):
    try:
        log = PredictionLog(path)
        for i in range(N_ROWS):
            log.log({'label': 'grizzly', 'probability': .9, 'probs': {'grizzly': .9}, 'in_domain': True},
                    frontend=f'w{k}', latency_ms=float(i))
        q.put((k, 'ok'))
    except Exception as e:          # any "database is locked" reaching us is a failure
        q.put((k, repr(e)))

def test_concurrent_writers_lose_nothing(location):
    path = location
    PredictionLog(path).close()
    ctx = mp.get_context('spawn')
    q = ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(path, k, q)) for k in range(N_PROC)]
    for p in procs: p.start()
    for p in procs: p.join(120)
    results = sorted(q.get(timeout=5) for _ in procs)
    assert results == [(k, 'ok') for k in range(N_PROC)]
    log = PredictionLog(path)
    assert log.count() == N_PROC * N_ROWS
    per = {}
    for r in log.rows(): per.setdefault(r['frontend'], []).append(r['latency_ms'])
    assert all(sorted(v) == [float(i) for i in range(N_ROWS)] for v in per.values()), 'every row of every writer, once'

# ---------------------------------------------------------------- where the log lives, what it keeps

def test_one_rule_for_the_path_and_the_flags(tmp_path, monkeypatch, jpeg):
    monkeypatch.setenv('BEAR_LOG_DB', str(tmp_path/'env'/'log.sqlite'))
    monkeypatch.setenv('BEAR_KEEP_IMAGES', 'true')                 # used to crash on int('true')
    log = PredictionLog()
    assert log.path == (tmp_path/'env'/'log.sqlite').resolve() and log.keep_images
    assert log.review_root == (tmp_path/'env'/'review').resolve()
    rid = log.log(_row(), 'cli', image=jpeg)
    kept = Path(log.get(rid)['image_path'])
    assert kept.parent.name == 'kept' and kept.read_bytes() == jpeg
    monkeypatch.setenv('BEAR_REVIEW_ROOT', str(tmp_path/'queue'))
    monkeypatch.setenv('BEAR_KEEP_IMAGES', 'no')
    other = PredictionLog(tmp_path/'other.sqlite')
    assert other.review_root == (tmp_path/'queue').resolve() and not other.keep_images
    monkeypatch.setenv('BEAR_LOG_DB', 'off')
    with pytest.raises(ValueError, match='switched off'): PredictionLog()

def test_log_problem_names_the_reason(tmp_path):
    assert log_problem(tmp_path/'log.sqlite') is None
    (tmp_path/'a-file').write_text('not a folder')
    why = log_problem(tmp_path/'a-file'/'log.sqlite')
    assert why and ':' in why and '\n' not in why

# ---------------------------------------------------------------- verdicts and the review queue

def test_feedback_fills_the_review_queue_once(location, tmp_path, jpeg):
    log = PredictionLog(location, review_root=tmp_path/'review')
    rid = log.log(_row('teddy'), 'app', image=jpeg)
    assert log.get(rid)['image_path'] is None                     # privacy by default
    assert log.logged_answer(rid) == dict(answer='teddy', sha256=sha256_bytes(jpeg))
    assert log.logged_answer(rid + 1) is None
    assert log.record_verdict(rid, 'teddy', jpeg) is None          # a confirmation keeps no photo
    saved = log.record_verdict(rid, NONE_OF_THESE, jpeg)
    assert saved == f'{NONE_OF_THESE}/{sha256_bytes(jpeg)[:16]}.jpg'
    assert usable_files(log.review_root) == [log.review_root/saved]
    rid2 = log.log(_row('black'), 'app', image=jpeg)
    log.feedback(rid2, NONE_OF_THESE, image=jpeg, reviewer=True)       # the same photo again: one file, one row
    [m] = read_manifest(log.review_root)
    assert (m['source'], m['label'], m['sha256'], m['status']) == ('feedback', NONE_OF_THESE, sha256_bytes(jpeg), 'ok')
    r1, r2 = log.get(rid), log.get(rid2)
    assert (r1['feedback'], r2['reviewer'], r2['feedback']) == (NONE_OF_THESE, NONE_OF_THESE, None)
    with pytest.raises(KeyError, match='no prediction with id'): log.feedback(10**6, 'teddy')

def test_answer_of_an_out_of_domain_row_is_not_a_bear(location):
    log = PredictionLog(location)
    rid = log.log(_row('teddy', .4, False), 'api')
    assert row_answer(log.get(rid)) == NONE_OF_THESE and log.logged_answer(rid)['answer'] == NONE_OF_THESE
    assert log.feedback(rid, NONE_OF_THESE, image=b'not even an image') is None   # agrees: nothing decoded or saved

# ---------------------------------------------------------------- the service's background writer

def test_recorder_answers_without_waiting_for_a_locked_log(tmp_path, jpeg, capfd):
    db = tmp_path/'locked.sqlite'
    async def go():
        rec = PredictionRecorder(db, wait_s=0.3).start()
        try:
            [first] = await rec.record([(_row(), jpeg, (10, 10), 1.0)], {'name': 'm'})
            other = sqlite3.connect(db, isolation_level=None); other.execute('BEGIN EXCLUSIVE')
            try:
                t0 = time.perf_counter(); [held] = await rec.record([(_row(), jpeg, (10, 10), 1.0)], {'name': 'm'})
                waited = time.perf_counter() - t0
            finally: other.execute('COMMIT'); other.close()
            return first, held, waited
        finally: rec.close(timeout=30)
    first, held, waited = asyncio.run(go())
    assert isinstance(first, int) and held is None and waited < 2.0
    assert PredictionLog(db).count() == 2                          # written once the lock was free
    assert 'is slow (locked?)' in capfd.readouterr().err

def test_recorder_call_errors(tmp_path, capfd):
    (tmp_path/'a-file').write_text('where the log folder should be')
    async def go(rec, fn, *args):
        rec.start()
        try: return await rec.call(fn, *args)
        finally: rec.close()
    with pytest.raises(LogOff, match='--log off'): asyncio.run(go(PredictionRecorder(), PredictionLog.get, 1))
    with pytest.raises(LogUnavailable, match='cannot be opened'):
        asyncio.run(go(PredictionRecorder(tmp_path/'a-file'/'log.sqlite'), PredictionLog.get, 1))
    err = capfd.readouterr().err
    assert err.startswith('bear-serve: cannot open the prediction log') and 'answering without logging' in err
    good = PredictionRecorder(tmp_path/'log.sqlite')
    assert asyncio.run(go(good, PredictionLog.logged_answer, 1)) is None
    assert asyncio.run(go(good, PredictionLog.logged_answer, 2**70)) is None    # beyond any id: unknown, not an error
    with pytest.raises(KeyError): asyncio.run(go(good, PredictionLog.feedback, 1, 'teddy'))   # the caller's mistake, as it is
    def broken(log): raise sqlite3.DatabaseError('database disk image is malformed')
    with pytest.raises(LogUnavailable, match='could not be written'): asyncio.run(go(good, broken))
    assert good.errors == 1 and 'a verdict not logged' in capfd.readouterr().err
    async def slow():
        rec = PredictionRecorder(tmp_path/'log.sqlite').start()
        try: return await rec.call(lambda log: time.sleep(1), timeout=0.1)
        finally: rec.close()
    with pytest.raises(LogBusy): asyncio.run(slow())

def test_recorder_drops_rows_rather_than_fill_memory(tmp_path, jpeg, capfd):
    async def go():
        rec = PredictionRecorder(tmp_path/'log.sqlite', max_pending_bytes=len(jpeg)).start()
        try: return await rec.record([(_row(), jpeg, None, 1.0)], {}), rec.errors
        finally: rec.close()
    assert asyncio.run(go()) == ([None], 1)
    assert 'not keeping up' in capfd.readouterr().err

# ---------------------------------------------------------------- the same log on a database server

def test_the_log_location_can_be_a_url(postgres, tmp_path, monkeypatch):
    url = postgres.create_database('located')
    monkeypatch.setenv('BEAR_LOG_DB', url)
    log = PredictionLog()
    assert log.path == url and log.review_root == project_root()/'data'/'review'   # no folder "beside" a server
    rid = log.log(_row('black', .75), 'app', size=(640, 480))
    got = PredictionLog(f'postgres://{url.split("://", 1)[1]}').get(rid)          # the old scheme name works too
    assert (got['label'], got['probability'], got['width'], got['in_domain']) == ('black', .75, 640, 1)
    monkeypatch.setenv('BEAR_LOG_DB', f'sqlite:///{tmp_path}/via-url.sqlite')
    assert PredictionLog().path == tmp_path/'via-url.sqlite'
    secret = f'postgresql://bear:s3cret@127.0.0.1:{postgres.port}/located'
    assert 's3cret' not in log_name(secret) and log_name(secret).endswith(f':{postgres.port}/located')

def test_an_unreachable_server_is_a_one_line_problem(postgres):
    why = log_problem(f'postgresql://bear@127.0.0.1:{free_port()}/nowhere')
    assert why and why.startswith('OperationalError') and '\n' not in why
    assert log_problem('mysql://u@localhost/db').startswith('ValueError: unsupported prediction log')

def test_recorder_on_postgres(postgres, tmp_path, jpeg):
    url = postgres.create_database('recorder')
    async def go():
        rec = PredictionRecorder(url, tmp_path/'queue', wait_s=5).start()
        try:
            ids = await rec.record([(_row('teddy'), jpeg, (10, 10), 1.0), (_row(), None, None, 2.0)], {'name': 'm'})
            saved = await rec.call(PredictionLog.record_verdict, ids[0], 'black', jpeg)
            return ids, saved, await rec.call(PredictionLog.logged_answer, ids[1])
        finally: rec.close()
    ids, saved, answer = asyncio.run(go())
    assert all(isinstance(i, int) for i in ids) and saved == f'black/{sha256_bytes(jpeg)[:16]}.jpg'
    assert answer == dict(answer='grizzly', sha256=None)
    log = PredictionLog(url)
    assert [(r['frontend'], r['feedback']) for r in log.rows()] == [('api', 'black'), ('api', None)]
    assert (tmp_path/'queue'/saved).read_bytes() == jpeg

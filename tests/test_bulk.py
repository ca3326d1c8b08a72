"""Bulk scoring on Ray Data (issue 15): a folder of good and bad photos scored by actors that each hold one Predictor,
in-process (`ray.init(num_cpus=2)`) and on a Ray started by the test (`ray start --head`, then `bear-bulk --ray ADDRESS`);
the Parquet rows equal `bear-predict --json` row for row. Skipped, with the reason, where Ray is not installed."""
import json, os, secrets, signal, subprocess, sys, time
from pathlib import Path
import pytest

from bear_classifier.bulk import list_inputs, result_schema, score_files
from bear_classifier.inference import Predictor
from bear_classifier.testing import WebServer, free_port, image_bytes, sample_photos, starter_bundle

BIN = Path(sys.executable).parent

def _command(name, module, function) -> list[str]:
    "The console script `name` beside this Python, else a launcher file that calls the same function"
    script = BIN/name
    if script.exists(): return [str(script)]
    launcher = Path(os.environ.get('TMPDIR', '/tmp'))/f'bear-launch-{name}.py'  # fastcore's call_parse needs a __main__ module
    launcher.write_text(f'from bear_classifier.{module} import {function}\n{function}()\n')
    return [sys.executable, str(launcher)]

@pytest.fixture(scope='module')
def model(): return starter_bundle()

@pytest.fixture(scope='module')
def folder(tmp_path_factory):
    "Good photos (JPEG, PNG, in a sub-folder too) and bad ones (cut short, not an image, empty) in one folder"
    d = tmp_path_factory.mktemp('archive')
    photos = sample_photos()
    for k in ('chelsea', 'coffee', 'astronaut', 'china'): (d/f'{k}.jpg').write_bytes(image_bytes(photos[k]))
    (d/'deeper').mkdir(); (d/'deeper'/'rocket.png').write_bytes(image_bytes(photos['rocket'], 'PNG'))
    (d/'cut-short.jpg').write_bytes(image_bytes(photos['flower'])[:2000])
    (d/'notes.jpg').write_text('a text file with a photo\'s name')
    (d/'empty.png').write_bytes(b'')
    return d

@pytest.fixture(scope='module')
def expected(model, folder):
    "What bear-predict --json answers for every file of the folder, in the folder's order"
    files = list_inputs(folder)
    r = subprocess.run([*_command('bear-predict', 'export', 'bear_predict'), '--model', str(model), '--json', '--log', 'off', *files],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stderr[-2000:]                 # 1: some files were not images
    return json.loads(r.stdout)

def same_rows(table, expected):
    "Parquet rows == bear-predict --json rows: file, answer, probabilities and score, or the error code"
    rows = table.to_pylist()
    assert [r['file'] for r in rows] == [e['file'] for e in expected]
    for r, e in zip(rows, expected):
        if 'error' in e: assert (r['error'], r['label'], r['probabilities']) == (e['error'], None, None), r
        else:
            assert (r['label'], r['in_domain'], r['error']) == (e['label'], e['in_domain'], None), r
            assert r['probability'] == pytest.approx(e['probability'], abs=1e-5) and r['score'] == pytest.approx(e['score'], abs=1e-4)
            assert r['probabilities'] == pytest.approx(e['probs'], abs=1e-5)

def test_inputs_and_rows_without_ray(model, folder, expected, tmp_path):
    "The actor's work, without Ray: the same rows as bear-predict; lists, globs and URLs name inputs too"
    import pyarrow as pa
    pred = Predictor.load(model, threads=1)
    files = list_inputs(folder)
    assert sum(e.get('error') is not None for e in expected) == 3 and len(files) == 8
    same_rows(pa.Table.from_pylist(score_files(pred, files), schema=result_schema(pred.vocab)), expected)
    (tmp_path/'list.txt').write_text('\n'.join(files[:2]) + '\n')
    import pyarrow.parquet as pq
    pq.write_table(pa.table({'label': ['x'], 'path': [files[2]]}), tmp_path/'list.parquet')
    assert list_inputs([tmp_path/'list.txt', tmp_path/'list.parquet', f'{folder}/*.png']) == files[:3] + [str(folder/'empty.png')]
    with WebServer() as web:
        good, gone = web.add('/bear.jpg', image_bytes(sample_photos()['chelsea'])), web.add('/gone.jpg', b'', status=404)
        rows = score_files(pred, [good, gone])
    assert rows[0]['error'] is None and rows[0]['label'] == expected[[Path(e['file']).name for e in expected].index('chelsea.jpg')]['label']
    assert rows[1]['error'] == 'fetch_http_404'

def test_ray_in_process(model, folder, expected, tmp_path):
    ray = pytest.importorskip('ray', reason="Ray is not installed (pip install 'bear_classifier[scale]')")
    import pyarrow.parquet as pq
    from bear_classifier.bulk import score_with_ray
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try: res = score_with_ray(folder, tmp_path/'out.parquet', model_dir=model, num_actors=2, progress=False)
    finally: ray.shutdown()
    assert (res['rows'], res['errors']) == (8, 3)
    same_rows(pq.read_table(tmp_path/'out.parquet'), expected)

@pytest.fixture
def ray_head(tmp_path):
    "`ray start --head` on 127.0.0.1 (a free port, 2 CPUs, token auth with a fresh token); its address and environment"
    pytest.importorskip('ray', reason="Ray is not installed (pip install 'bear_classifier[scale]')")
    port, env = free_port(), dict(os.environ, RAY_AUTH_MODE='token', RAY_AUTH_TOKEN=secrets.token_hex(16))
    temp = Path(f'/tmp/bear-ray-{secrets.token_hex(3)}')           # Ray's socket paths must stay short
    cmd = [str(BIN/'ray'), 'start', '--head', '--node-ip-address', '127.0.0.1', '--port', str(port), '--num-cpus', '2',
           '--include-dashboard', 'false', '--disable-usage-stats', '--temp-dir', str(temp), '--block']
    head = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)
    out = []
    for line in head.stdout:
        out.append(line)
        if 'Ray runtime started' in line: break
    try:
        assert head.poll() is None, ''.join(out)[-3000:]
        yield f'127.0.0.1:{port}', env
    finally:
        os.killpg(head.pid, signal.SIGTERM)               # our head and the processes it started, nothing else
        try: head.wait(20)
        except subprocess.TimeoutExpired: os.killpg(head.pid, signal.SIGKILL); head.wait()
        subprocess.run(['rm', '-rf', str(temp)])

def test_bear_bulk_on_a_ray_cluster(ray_head, model, folder, expected, tmp_path):
    import pyarrow.parquet as pq
    address, env = ray_head
    cmd = [*_command('bear-bulk', 'bulk', 'bear_bulk'), str(folder), '--out', str(tmp_path/'bulk.parquet'), '--ray', address,
           '--actors', '2', '--model', str(model), '--quiet']
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 1, r.stderr[-3000:]                 # 1: the job finished, some photos carry an error
    assert '8 photos, 3 with an error' in r.stdout
    same_rows(pq.read_table(tmp_path/'bulk.parquet'), expected)

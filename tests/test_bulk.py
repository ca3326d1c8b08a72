"""Bulk scoring on Ray Data (issue 15): a folder of good and bad photos scored by actors that each hold one Predictor,
through the front doors `bear-predict --ray` and `bear-bulk`: in-process (`ray.init(num_cpus=2)`) and on a Ray started
by the test (`ray start --head`, then `bear-predict --ray ADDRESS INPUT --out results.parquet`); the Parquet rows equal
`bear-predict --json` row for row. Skipped, with the reason, where Ray is not installed (and that case is one line)."""
import json, os, subprocess, sys
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

def test_bear_predict_ray_arguments():
    "`--ray` bare means auto, and `--ray FOLDER` reads FOLDER as the first input (argparse alone would take it as the address)"
    from fastcore.script import anno_parser
    from bear_classifier.bulk import ray_target
    from bear_classifier.export import bear_predict
    parse = lambda *a: (lambda n: ray_target(n.ray, n.images) + (n.out,))(anno_parser(bear_predict).parse_args(a))
    assert parse('photos/', '--ray', '--out', 'r.parquet') == ('auto', ['photos/'], 'r.parquet')
    assert parse('--ray', 'photos/', 'list.csv') == ('auto', ['photos/', 'list.csv'], None)
    assert parse('--ray', '127.0.0.1:6379', 'photos/') == ('127.0.0.1:6379', ['photos/'], None)
    assert parse('--ray', 'local', 'a.jpg') == ('local', ['a.jpg'], None)
    assert parse('a.jpg', '--json') == (None, ['a.jpg'], None)

def test_without_ray_is_one_line(model, folder, tmp_path, monkeypatch, capsys):
    "No Ray installed: `bear-predict --ray` is one line naming the extra, nothing is written; without --ray, --out is refused"
    from bear_classifier.export import bear_predict
    monkeypatch.setitem(sys.modules, 'ray', None)                 # `import ray` raises ImportError, as without the extra
    with pytest.raises(SystemExit) as e: bear_predict(str(folder), ray='local', out=str(tmp_path/'r.parquet'), model=str(model))
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err == "bear-predict: Ray is not installed: pip install '.[scale]' (or 'bear_classifier[scale]')", err
    assert not (tmp_path/'r.parquet').exists()
    with pytest.raises(SystemExit, match='--out goes with --ray'): bear_predict(str(folder), out=str(tmp_path/'r.parquet'))

def test_ray_in_process(model, folder, expected, tmp_path, capsys):
    "Both front doors on a Ray this process started (`ray.init(num_cpus=2)`): bear-predict --ray and bear-bulk, as Python calls"
    ray = pytest.importorskip('ray', reason="Ray is not installed (pip install 'bear_classifier[scale]')")
    import pyarrow.parquet as pq
    from bear_classifier.bulk import bear_bulk
    from bear_classifier.export import bear_predict
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        with pytest.raises(SystemExit) as e1: bear_predict(str(folder), ray='auto', out=str(tmp_path/'p.parquet'), model=str(model))
        with pytest.raises(SystemExit) as e2: bear_bulk(str(folder), out=str(tmp_path/'b.parquet'), model=str(model), quiet=True)
    finally: ray.shutdown()
    out = capsys.readouterr().out
    assert (e1.value.code, e2.value.code) == (1, 1) and out.count('8 photos, 3 with an error') == 2, out   # 1: some photos carry an error
    assert '(2 actors' in out, out                                # one actor per CPU of the Ray it found
    for name in ('p', 'b'): same_rows(pq.read_table(tmp_path/f'{name}.parquet'), expected)

@pytest.fixture
def ray_head():
    "`ray start --head` on 127.0.0.1 (a free port, 2 CPUs, token auth with a fresh token); its address and environment"
    pytest.importorskip('ray', reason="Ray is not installed (pip install 'bear_classifier[scale]')")
    from bear_classifier.cluster import ray_head
    with ray_head(free_port(), cpus=2) as (address, env): yield address, env

def test_bear_predict_on_a_ray_cluster(ray_head, model, folder, expected, tmp_path):
    "The issue's command, `bear-predict --ray ADDRESS INPUT --out results.parquet`, on the Ray the test started"
    import pyarrow.parquet as pq
    address, env = ray_head
    cmd = [*_command('bear-predict', 'export', 'bear_predict'), '--ray', address, str(folder), '--out', str(tmp_path/'results.parquet'),
           '--model', str(model)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 1, r.stderr[-3000:]                 # 1: the job finished, some photos carry an error
    assert '8 photos, 3 with an error' in r.stdout and '(2 actors' in r.stdout, r.stdout   # the cluster's 2 CPUs: 2 actors
    same_rows(pq.read_table(tmp_path/'results.parquet'), expected)

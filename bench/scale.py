#!/usr/bin/env python
"""Benchmark: beyond one machine (issue 15) — images/s of each way to score many photos, side by side in one run.

  bear-predict loop          one `bear-predict --json --log off FILES…` process over every file (start-up included;
                             startup_s: the same command on one file)
  ray, 1 / 2 actors          `bear-predict --ray ADDRESS PHOTOS/ --actors N --out …` (the front door, issue 15) on the same
                             files, against a `ray start --head` with 2 CPUs that the bench starts (startup_s: the head's
                             start, not included; the command's own start-up, the actors' and the model loads included,
                             as in the bear-predict loop)
  1 replica                  one bear-serve, POST /predict from 16 client threads, logging to PostgreSQL
  1 replica behind nginx     the same through nginx (the balancer's own cost)
  3 replicas behind nginx    three bear-serve processes behind nginx, one PostgreSQL log
  kill test                  3 replicas behind nginx, one SIGKILLed a third of the way: answers without a row (must be 0)

Every replica runs with one inference thread. This machine has few cores shared by everything, so
3 replicas cannot be 3x one: the table reports what one box gives, and the per-core rate is what a
projection to more machines starts from (nbs/16b_cluster.ipynb, "On paper").
Needs Debian's postgresql and nginx; Ray rows need the `scale` extra (skipped with a note otherwise).
Writes bench/results/scale.json.

Run from the repository root:
    python bench/scale.py [--files 300] [--requests 1500] [--concurrency 16] [--no-ray] [--parts predict,ray,replicas,kill]
"""
import argparse, json, os, subprocess, sys, tempfile, time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bear_classifier.cluster import Nginx, PostgresServer, nginx_problem, post_many, postgres_problem, ray_head, start_replicas
from bear_classifier.files import atomic_write, utc_now
from bear_classifier.predlog import PredictionLog
from bear_classifier.testing import free_port, image_bytes, sample_photos, starter_bundle

def photo_files(n, folder) -> list[Path]:
    "n photo files (the package photos, repeated) in `folder`"
    folder.mkdir(parents=True, exist_ok=True)
    ims = list(sample_photos().values())
    out = []
    for i in range(n):
        p = folder/f'{i:05d}.jpg'; p.write_bytes(image_bytes(ims[i % len(ims)], size=320)); out.append(p)
    return out

def _predict(model, files) -> float:
    "Seconds one bear-predict process takes over `files`"
    cmd = [str(Path(sys.executable).with_name('bear-predict')), '--model', str(model), '--json', '--log', 'off', *map(str, files)]
    t0 = time.perf_counter(); r = subprocess.run(cmd, capture_output=True, text=True); dt = time.perf_counter() - t0
    if r.returncode: raise SystemExit(f'bear-predict failed: {r.stderr[-2000:]}')
    return dt

def predict_loop(model, files) -> dict:
    "One bear-predict process over every file; its start-up (imports, model load) measured on one file"
    startup, dt = _predict(model, files[:1]), _predict(model, files)
    return dict(images=len(files), seconds=dt, rate=len(files) / dt, startup_s=round(startup, 1))

def ray_rows(model, files, tmp, actors=(1, 2)) -> dict:
    "`bear-predict --ray ADDRESS FOLDER --actors N` for each N, on one Ray head started here (its start-up reported, not counted)"
    try:
        import ray  # noqa: F401  (the scale extra)
        import pyarrow.parquet as pq
    except ImportError as e: return {'ray': dict(note=f'skipped: {e}')}
    t0 = time.perf_counter()
    with ray_head(free_port(), cpus=max(actors)) as (address, env):
        out, startup = {}, round(time.perf_counter() - t0, 1)
        for n in actors:
            res = tmp/f'ray-{n}.parquet'
            cmd = [str(Path(sys.executable).with_name('bear-predict')), '--ray', address, str(files[0].parent), '--out', str(res),
                   '--actors', str(n), '--model', str(model)]
            t0 = time.perf_counter(); r = subprocess.run(cmd, capture_output=True, text=True, env=env); dt = time.perf_counter() - t0
            if r.returncode: raise SystemExit(f'bear-predict --ray failed: {r.stderr[-2000:]}')
            rows = pq.read_metadata(res).num_rows
            out[f'ray, {n} actor{"s" if n > 1 else ""}'] = dict(images=rows, seconds=dt, rate=rows / dt, startup_s=startup)
    return out

def http_rate(url, bodies, concurrency, **kw) -> tuple[dict, list]:
    "POST every body to url/predict; the rate and the per-request results"
    t0 = time.perf_counter(); res = post_many(f'{url}/predict', bodies, concurrency=concurrency, **kw); dt = time.perf_counter() - t0
    ok = sum(r['status'] == 200 for r in res)
    return dict(images=ok, failed=len(res) - ok, seconds=dt, rate=ok / dt), res

def replica_rows(pg, model, bodies, concurrency, tmp) -> dict:
    "1 replica direct, 1 behind nginx, 3 behind nginx, each on its own fresh database"
    out = {}
    for name, n, balanced in (('1 replica', 1, False), ('1 replica behind nginx', 1, True), ('3 replicas behind nginx', 3, True)):
        url = pg.create_database(f"bench_{n}_{int(balanced)}")
        PredictionLog(url).close()
        reps = start_replicas([free_port() for _ in range(n)], model, url, tmp/name.replace(' ', '-'))
        try:
            if balanced:
                with Nginx([r.address for r in reps], free_port()) as lb: out[name] = http_rate(lb.url, bodies, concurrency)[0]
            else: out[name] = http_rate(reps[0].url, bodies, concurrency)[0]
        finally:
            for r in reps: r.stop()
        out[name]['logged'] = PredictionLog(url).count()
    return out

def kill_row(pg, model, bodies, concurrency, tmp) -> dict:
    "3 replicas behind nginx, one SIGKILLed a third of the way through: accepted answers without a row"
    url = pg.create_database('bench_kill')
    PredictionLog(url).close()
    reps, killed = start_replicas([free_port() for _ in range(3)], model, url, tmp/'kill'), []
    def kill(done):
        if done >= len(bodies) // 3 and not killed: killed.append(done); reps[1].kill()
    try:
        with Nginx([r.address for r in reps], free_port()) as lb: row, res = http_rate(lb.url, bodies, concurrency, progress=kill)
    finally:
        for r in reps: r.stop()
    ids = {r['id'] for r in res if r['status'] == 200 and r['id'] is not None}
    rows = {r['id'] for r in PredictionLog(url).rows()}
    return dict(row, lost=len(ids - rows), extra=len(rows - ids), no_id=sum(r['status'] == 200 and r['id'] is None for r in res),
                client_retries=sum(r['tries'] - 1 for r in res), killed_after=killed[0] if killed else None)

def table(res) -> str:
    lines = [f"{'method':<28} {'images':>7} {'seconds':>8} {'images/s':>9}  notes", '-' * 72]
    for k, v in res.items():
        if 'rate' not in v: lines.append(f"{k:<28} {v.get('note', '')}"); continue
        note = ', '.join(f'{n} {v[n]}' for n in ('startup_s', 'failed', 'logged', 'lost', 'extra', 'no_id', 'client_retries') if n in v)
        lines.append(f"{k:<28} {v['images']:>7} {v['seconds']:>8.1f} {v['rate']:>9.1f}  {note}")
    return '\n'.join(lines)

def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--files', type=int, default=300, help='photos for bear-predict and Ray')
    ap.add_argument('--requests', type=int, default=1500, help='HTTP requests per replica row')
    ap.add_argument('--concurrency', type=int, default=16)
    ap.add_argument('--no-ray', action='store_true')
    ap.add_argument('--parts', default='predict,ray,replicas,kill', help='which rows to measure (comma-separated)')
    a = ap.parse_args()
    parts = set(a.parts.split(',')) - ({'ray'} if a.no_ray else set())
    for why in (postgres_problem(), nginx_problem()):
        if why: raise SystemExit(f'bench/scale.py: {why}')
    model, tmp = starter_bundle(), Path(tempfile.mkdtemp(prefix='bear-scale-'))
    files = photo_files(a.files, tmp/'photos')
    bodies = [files[i % len(files)].read_bytes() for i in range(a.requests)]
    res = {'bear-predict loop': predict_loop(model, files)} if 'predict' in parts else {}
    if 'ray' in parts: res.update(ray_rows(model, files, tmp))
    if parts & {'replicas', 'kill'}:
        with PostgresServer(free_port()) as pg:
            if 'replicas' in parts: res.update(replica_rows(pg, model, bodies, a.concurrency, tmp))
            if 'kill' in parts: res['kill test (3 behind nginx)'] = kill_row(pg, model, bodies, a.concurrency, tmp)
    print(table(res))
    out = atomic_write(ROOT/'bench'/'results'/'scale.json', json.dumps(dict(
        when=utc_now(), cpus=os.cpu_count(), files=a.files, requests=a.requests, concurrency=a.concurrency, results=res), indent=1))
    print(f'written: {out.relative_to(ROOT)}')
    if res.get('kill test (3 behind nginx)', {}).get('lost'): sys.exit(1)

if __name__ == '__main__': main()

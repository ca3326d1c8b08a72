#!/usr/bin/env python
"""Load test of the JSON prediction service on loopback, next to the Predictor's own rate, in one run.

    python bench/api.py [--requests 2000] [--clients 16] [--model-dir DIR | --models DIR] [--log PATH|off] [--no-compare-log-off]
    python bench/api.py --only big-batch [--models DIR]     # part 5 alone (about a minute); updates its part of the JSON

1. starts the real `bear-serve` (`python -m bear_classifier.api`) on a free 127.0.0.1 port and waits for
   GET /health, then reads the server process's memory (RSS);
2. measures `Predictor.predict_bytes` in a tight loop in this process on the same photos (before and after
   the load run: the CPU is shared, so the two are averaged and both are reported);
3. load run: `--clients` concurrent clients send `--requests` multipart uploads to POST /predict, and stop.
   The server logs every answer to a prediction log (`--log`, default a temporary SQLite file, never the
   project's data/); afterwards the log must hold exactly one row per 200. Unless `--no-compare-log-off`,
   a second server with `--log off` serves the same number of requests in alternating rounds, so that
   the cost of logging is measured side by side on the same (shared) CPU;
4. overload run: a second server with a small queue (`--overload-queue`), flooded by `--overload-clients`
   clients from a separate process (more than workers + queue), while this process sends one probe request
   every 20 ms and times it: requests beyond the queue bound must get their 503 quickly. (The flood runs in
   its own process so that the probe's timing is not the flood client's own scheduling delay.)
5. big batch (issue 16): a fresh server gets the batch that once took it from 1.3 to 8.1 GB, 16 PNGs of 9400x9400
   (280 KB each, each under the 89 MP per-image limit), then a batch of 4 of them (353 MP, within the
   default budget of max_batch_pixels, so it is decoded: one image per pool job). Meanwhile a second client
   sends one /predict every 200 ms, and the server's RSS is sampled every 100 ms (psutil). Reported: each
   batch's status and time, the singles' p50 and max latency while it ran, and the peak RSS.
Prints a table and writes bench/results/api.json. Targets: no errors at 16 clients, service throughput at
least 0.8x the tight loop, 503s under 50 ms (p99); the 16 x 9400^2 batch refused (413) or served with a peak
RSS under 2.5 GB, the singles meanwhile under 2 s.
"""
import argparse, asyncio, json, os, platform, re, statistics, subprocess, sys, tempfile, time
from datetime import datetime, timezone
from pathlib import Path

import threading
import httpx, psutil

from bear_classifier.files import shared_data_dir

ROOT = Path(__file__).resolve().parents[1]
SHARED = shared_data_dir()

def photos(n=48) -> list[tuple[str, bytes]]:
    "JPEG bytes of real bear photos (../shared/data) or, in a fresh clone, of the photos shipped with scikit-image"
    bears = SHARED / 'bears'
    if bears.is_dir():
        files = sorted(p for d in sorted(bears.iterdir()) if d.is_dir() for p in sorted(d.glob('*.jp*g')))
        step = max(1, len(files) // n)
        return [(p.name, p.read_bytes()) for p in files[::step][:n]]
    from bear_classifier.testing import sample_photos, image_bytes
    return [(f'{name}.jpg', image_bytes(im, quality=88)) for name, im in sample_photos().items()]

def pct(xs, q):
    if not xs: return float('nan')
    xs = sorted(xs); k = (len(xs) - 1) * q / 100
    lo = int(k); hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)

def tight_loop(predictor, images, seconds=5.0, min_n=20):
    "(images, seconds) of predictor.predict_bytes, one image after the other, for about `seconds`"
    for _, b in images[:5]: predictor.predict_bytes(b)   # warm up
    n, t0 = 0, time.perf_counter()
    while (el := time.perf_counter() - t0) < seconds or n < min_n:
        predictor.predict_bytes(images[n % len(images)][1]); n += 1
    return n, el

def flood(args):
    "The overload process: clients that keep more requests in flight than the server holds; prints a JSON summary"
    res, wall = asyncio.run(load_run(args.flood, photos(), 10**6, args.overload_clients, seconds=args.overload_seconds, backoff=0.05))
    print(json.dumps({'wall_s': round(wall, 2), 'statuses': {str(k): sum(1 for s, _ in res if s == k) for k in {s for s, _ in res}}}))

def probe(url, images, seconds, every=0.02):
    "One request at a time with a plain synchronous client, every `every` s: [(status, latency_s)]"
    out, t_end = [], time.perf_counter() + seconds
    with httpx.Client(timeout=120) as client:
        while time.perf_counter() < t_end:
            name, data = images[len(out) % len(images)]
            t0 = time.perf_counter()
            try: status = client.post(f"{url}/predict", files={'file': (name, data, 'image/jpeg')}).status_code
            except httpx.HTTPError as e: status = type(e).__name__
            out.append((status, time.perf_counter() - t0))
            time.sleep(every)
    return out

def start_server(args, models_root, queue=None, log='off'):
    queue = args.queue if queue is None else queue
    cmd = [sys.executable, '-m', 'bear_classifier.api', '--port', '0', '--workers', str(args.workers), '--queue', str(queue),
           '--no-access-log', '--log-level', 'warning', '--log', str(log)]
    cmd += ['--model-dir', args.model_dir] if args.model_dir else ['--models', str(models_root)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    line = proc.stdout.readline()
    m = re.search(r'(http://127\.0\.0\.1:\d+)', line)
    if not m: proc.kill(); raise SystemExit(f"bench/api.py: bear-serve did not start: {line}{proc.stdout.read()}")
    url = m.group(1)
    t0 = time.perf_counter()
    while True:
        try:
            if httpx.get(f"{url}/health").status_code == 200: break
        except httpx.TransportError: pass
        if proc.poll() is not None or time.perf_counter() - t0 > 300:
            proc.kill(); raise SystemExit(f"bench/api.py: bear-serve did not become ready: {proc.stdout.read()}")
        time.sleep(0.1)
    return proc, url, time.perf_counter() - t0

async def load_run(url, images, n_requests, clients, seconds=None, backoff=0.0):
    "`clients` concurrent clients, until `n_requests` are done (or `seconds` passed): [(status, latency_s)]"
    results, counter = [], iter(range(n_requests))
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    t_end = time.perf_counter() + seconds if seconds else None
    async with httpx.AsyncClient(limits=limits, timeout=120) as client:
        async def one_client():
            for i in counter:
                if t_end and time.perf_counter() > t_end: return
                name, data = images[i % len(images)]
                t0 = time.perf_counter()
                try:
                    r = await client.post(f"{url}/predict", files={'file': (name, data, 'image/jpeg')})
                    status = r.status_code
                except httpx.HTTPError as e: status = type(e).__name__
                results.append((status, time.perf_counter() - t0))
                if status == 503 and backoff: await asyncio.sleep(backoff)
        t0 = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(clients)))
        return results, time.perf_counter() - t0

def ms(x): return f"{1000 * x:.1f}"

def big_png(side=9400) -> bytes:
    "The issue's image: `Image.new('RGB', (side, side)).save('big.png')`, 280 KB for 88 MP"
    import io
    from PIL import Image
    buf = io.BytesIO(); Image.new('RGB', (side, side)).save(buf, 'PNG'); return buf.getvalue()

def sample_rss(pid, stop, out, every=0.1):
    "Append (time, RSS bytes) of process `pid` to `out` every `every` s until `stop` is set"
    ps = psutil.Process(pid)
    while not stop.is_set():
        out.append((time.perf_counter(), ps.memory_info().rss)); time.sleep(every)

def send_singles(url, image, stop, out, every=0.2):
    "One /predict every `every` s (each waits for its answer) until `stop`: append (start, status, latency_s) to `out`"
    with httpx.Client(timeout=120) as client:
        while not stop.is_set():
            t0 = time.perf_counter()
            try: status = client.post(f"{url}/predict", files={'file': image}).status_code
            except httpx.HTTPError as e: status = type(e).__name__
            out.append((t0, status, time.perf_counter() - t0))
            time.sleep(max(0.0, every - (time.perf_counter() - t0)))

def big_batch(args, models_root, log, images):
    "Part 5: the 16 x 9400^2 batch, then 4 of them, against a fresh server, with singles and an RSS sampler running"
    png = big_png()
    proc, url, _ = start_server(args, models_root, log=log)
    stop, rss, singles, runs = threading.Event(), [], [], []
    threads = [threading.Thread(target=sample_rss, args=(proc.pid, stop, rss), daemon=True),
               threading.Thread(target=send_singles, args=(url, images[0], stop, singles), daemon=True)]
    try:
        baseline = psutil.Process(proc.pid).memory_info().rss
        for th in threads: th.start()
        time.sleep(2.0)                                   # the singles' latency before any batch
        for n in (16, 4):
            t0 = time.perf_counter()
            r = httpx.post(f"{url}/predict/batch", files=[('files', (f'big{i}.png', png, 'image/png')) for i in range(n)], timeout=600)
            t1 = time.perf_counter()
            body = r.json()
            runs.append({'files': n, 'megapixels': round(n * 9400 * 9400 / 1e6), 'status': r.status_code, 'seconds': round(t1 - t0, 2),
                         'error': body.get('error') if isinstance(body, dict) else None,
                         'detail': body.get('detail') if isinstance(body, dict) else None,
                         'items_ok': sum(i['status'] == 200 for i in body) if isinstance(body, list) else None, 't': (t0, t1)})
            time.sleep(2.0)                               # memory after the batch, and singles again
    finally:
        stop.set()
        for th in threads: th.join(30)
        proc.terminate()
        try: proc.wait(15)
        except subprocess.TimeoutExpired: proc.kill()
    before = [lat for t, s, lat in singles if s == 200 and t < runs[0]['t'][0]]
    for run in runs:
        t0, t1 = run.pop('t')
        during = [lat for t, s, lat in singles if t0 - 0.2 <= t <= t1]   # sent while the batch was in (or just before it)
        run['singles_during'] = {'n': len(during), 'p50_ms': round(1000 * pct(during, 50), 1) if during else None,
                                 'max_ms': round(1000 * max(during), 1) if during else None,
                                 'errors': sum(1 for t, s, _ in singles if t0 - 0.2 <= t <= t1 and s != 200)}
        run['peak_rss_mib'] = round(max(m for t, m in rss if t0 <= t <= t1 + 2.0) / 2**20, 1)
    return {'png_bytes': len(png), 'baseline_rss_mib': round(baseline / 2**20, 1), 'peak_rss_mib': round(max(m for _, m in rss) / 2**20, 1),
            'rss_samples': len(rss), 'singles': len(singles), 'single_p50_ms_before': round(1000 * pct(before, 50), 1) if before else None,
            'runs': runs}

def big_batch_rows(B) -> list:
    rows = [('big batch: server RSS at start / peak', f"{B['baseline_rss_mib']:.0f} / {B['peak_rss_mib']:.0f} MiB",
             f"{B['rss_samples']} samples every 100 ms; singles p50 before any batch {B['single_p50_ms_before']} ms")]
    for r in B['runs']:
        what = f"{r['status']} {r['error']}" if r['error'] else f"{r['status']}, {r['items_ok']}/{r['files']} files classified"
        S = r['singles_during']
        rows += [(f"  {r['files']} x 9400x9400 PNG ({r['megapixels']} MP)", what, f"in {r['seconds']} s; peak RSS {r['peak_rss_mib']:.0f} MiB"),
                 ('    singles meanwhile p50 / max', f"{S['p50_ms']} / {S['max_ms']} ms", f"{S['n']} requests, {S['errors']} errors")]
    return rows

def big_batch_targets(B) -> dict:
    r16 = B['runs'][0]
    return {'big_batch_413_or_under_2.5GB': r16['status'] == 413 or r16['peak_rss_mib'] * 2**20 < 2.5e9,
            'singles_during_big_batch_under_2s': (r16['singles_during']['max_ms'] or 0) < 2000 and not r16['singles_during']['errors'],
            'big_batch_peak_rss_under_2.5GB': B['peak_rss_mib'] * 2**20 < 2.5e9}

def print_table(rows):
    w = max(len(r[0]) for r in rows)
    print(f"\n| {'measure'.ljust(w)} | value | note |\n|{'-' * (w + 2)}|---|---|")
    for a, b, c in rows: print(f"| {a.ljust(w)} | {b} | {c} |")

def write_json(out, result):
    out = Path(out); out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmpf = tempfile.mkstemp(dir=out.parent, prefix=out.name, suffix='.tmp')
    with os.fdopen(fd, 'w') as f: f.write(json.dumps(result, indent=2) + '\n')
    os.replace(tmpf, out)
    print(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")

def only_big_batch(args):
    "`--only big-batch`: part 5 alone; its numbers replace that part of the JSON, the other parts stay as they were"
    from bear_classifier.export import ensure_bundle
    tmp = tempfile.TemporaryDirectory(prefix='bear-bench-api-')
    models_root = Path(args.models or Path(tmp.name) / 'models')
    if not args.model_dir: ensure_bundle(models_root)
    B = big_batch(args, models_root, Path(tmp.name) / 'big-batch.sqlite', [(n, b, 'image/jpeg') for n, b in photos()])
    out = Path(args.out)
    result = json.loads(out.read_text()) if out.exists() else {}
    result['big_batch'] = B | {'date': datetime.now(timezone.utc).isoformat(timespec='seconds')}
    targets = big_batch_targets(B)
    result['targets'] = result.get('targets', {}) | targets
    print_table(big_batch_rows(B))
    print('\ntargets: ' + ', '.join(f"{k}: {'OK' if v else 'MISSED'}" for k, v in targets.items()))
    write_json(out, result)
    tmp.cleanup()

def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--requests', type=int, default=2000)
    ap.add_argument('--clients', type=int, default=16)
    ap.add_argument('--rounds', type=int, default=4, help='alternate tight loop and service this many times')
    ap.add_argument('--tight-seconds', type=float, default=5.0, help='length of each tight-loop measurement')
    ap.add_argument('--workers', type=int, default=1)
    ap.add_argument('--queue', type=int, default=32)
    ap.add_argument('--overload-queue', type=int, default=2)
    ap.add_argument('--overload-clients', type=int, default=12)
    ap.add_argument('--overload-seconds', type=float, default=8.0)
    ap.add_argument('--flood', default=None, help=argparse.SUPPRESS)   # internal: be the flood process for this URL
    ap.add_argument('--model-dir', default=None, help='a model bundle (default: the starter, built in a temporary folder)')
    ap.add_argument('--models', default=None, help='serve the newest bundle under this folder')
    ap.add_argument('--log', default=None, help="the load-run server's prediction log (default: a temporary file; 'off': none)")
    ap.add_argument('--no-compare-log-off', dest='compare', action='store_false', help='skip the side-by-side server without logging')
    ap.add_argument('--only', choices=['big-batch'], default=None, help='run only this part (its numbers go into the JSON)')
    ap.add_argument('--out', default=str(ROOT / 'bench' / 'results' / 'api.json'))
    args = ap.parse_args()
    if args.flood: return flood(args)
    if args.only == 'big-batch': return only_big_batch(args)

    import torch
    from bear_classifier.inference import Predictor
    from bear_classifier.export import ensure_bundle
    tmp = tempfile.TemporaryDirectory(prefix='bear-bench-api-')
    models_root = Path(args.models or Path(tmp.name) / 'models')
    predictor = Predictor.load(args.model_dir or ensure_bundle(models_root))   # builds the starter if needed
    images = photos()
    print(f"model {predictor.name} v{predictor.version} ({predictor.kind}); {len(images)} photos, "
          f"mean {statistics.mean(len(b) for _, b in images) / 1024:.0f} KiB; torch threads {torch.get_num_threads()}; "
          f"{os.cpu_count()} CPUs (shared with other work: compare numbers within this run only)", flush=True)

    log = Path(tmp.name) / 'predictions.sqlite' if args.log is None else args.log
    proc, url, ready_s = start_server(args, models_root, log=log)
    off = start_server(args, models_root, log='off') if args.compare and str(log) != 'off' else None
    try:
        ps = psutil.Process(proc.pid)
        m = ps.memory_full_info(); rss_loaded, uss_loaded = m.rss / 2**20, m.uss / 2**20
        warm, _ = asyncio.run(load_run(url, images, 2 * args.clients, args.clients))   # warm-up, not counted (but logged)
        warm_ok = sum(1 for s_, _ in warm if s_ == 200)
        if off: asyncio.run(load_run(off[1], images, 2 * args.clients, args.clients))
        # The CPU is shared and its speed drifts, so the two are measured in alternating rounds:
        # tight loop, a quarter of the requests (logging server, then the one without), tight loop, ...
        # and compared on the totals.
        res, wall, rounds, tight_n, tight_s = [], 0.0, [], 0, 0.0
        res_off, wall_off = [], 0.0
        for k in range(args.rounds):
            n_k = args.requests // args.rounds + (1 if k < args.requests % args.rounds else 0)
            n_t, s_t = tight_loop(predictor, images, seconds=args.tight_seconds)
            tight_n += n_t; tight_s += s_t; rate_k = n_t / s_t
            r_k, w_k = asyncio.run(load_run(url, images, n_k, args.clients))
            res += r_k; wall += w_k
            rounds.append({'tight_loop_img_s': round(rate_k, 2), 'service_req_s': round(sum(1 for s_, _ in r_k if s_ == 200) / w_k, 2)})
            if off:
                r_o, w_o = asyncio.run(load_run(off[1], images, n_k, args.clients))
                res_off += r_o; wall_off += w_o
                rounds[-1]['service_log_off_req_s'] = round(sum(1 for s_, _ in r_o if s_ == 200) / w_o, 2)
            print(f"round {k + 1}/{args.rounds}: tight loop {rate_k:.1f} img/s, service {rounds[-1]['service_req_s']:.1f} req/s"
                  + (f", without logging {rounds[-1]['service_log_off_req_s']:.1f} req/s" if off else ''), flush=True)
        m = ps.memory_full_info(); rss_served, uss_served = m.rss / 2**20, m.uss / 2**20
    finally:
        for p_ in [proc] + ([off[0]] if off else []):
            p_.terminate()
            try: p_.wait(15)
            except subprocess.TimeoutExpired: p_.kill()
    logged_rows = None
    if str(log) != 'off':
        from bear_classifier.predlog import PredictionLog
        pl = PredictionLog(log); logged_rows = pl.count() - warm_ok; pl.close()

    proc, url, _ = start_server(args, models_root, queue=args.overload_queue, log=Path(tmp.name) / 'overload.sqlite' if str(log) != 'off' else 'off')
    try:
        fl = subprocess.Popen([sys.executable, __file__, '--flood', url, '--overload-clients', str(args.overload_clients),
                               '--overload-seconds', str(args.overload_seconds)], stdout=subprocess.PIPE, text=True)
        time.sleep(min(2.0, args.overload_seconds / 3))        # let the flood fill the queue
        over = probe(url, images, args.overload_seconds - 3)
        flood_out = json.loads(fl.communicate(timeout=300)[0].strip().splitlines()[-1])
        health = httpx.get(f"{url}/health").json()
    finally:
        proc.terminate()
        try: proc.wait(15)
        except subprocess.TimeoutExpired: proc.kill()
    big = big_batch(args, models_root, Path(tmp.name) / 'big-batch.sqlite' if str(log) != 'off' else 'off',
                    [(n, b, 'image/jpeg') for n, b in images])

    ok = [t for s, t in res if s == 200]
    errors = {str(s): sum(1 for x, _ in res if x == s) for s in {s for s, _ in res if s != 200}}
    tight = tight_n / tight_s
    service_rate = len(ok) / wall
    ok_off = [t for s, t in res_off if s == 200]
    off_rate = len(ok_off) / wall_off if off else None
    rejected = [t for s, t in over if s == 503]
    over_ok = [t for s, t in over if s == 200]
    over_err = {str(s): sum(1 for x, _ in over if x == s) for s in {s for s, _ in over if s not in (200, 503)}}
    result = {
        'date': datetime.now(timezone.utc).isoformat(timespec='seconds'), 'host': platform.node(), 'cpus': os.cpu_count(),
        'torch_threads': torch.get_num_threads(), 'python': platform.python_version(), 'torch': torch.__version__,
        'model': {'name': predictor.name, 'version': str(predictor.version), 'kind': predictor.kind},
        'server': {'workers': args.workers, 'queue': args.queue, 'ready_s': round(ready_s, 2),
                   'rss_loaded_mib': round(rss_loaded, 1), 'uss_loaded_mib': round(uss_loaded, 1),
                   'rss_after_load_run_mib': round(rss_served, 1), 'uss_after_load_run_mib': round(uss_served, 1)},
        'images': len(images),
        'tight_loop_img_s': round(tight, 2), 'rounds': rounds,
        'load_run': {'clients': args.clients, 'requests': len(res), 'ok': len(ok), 'errors': errors, 'wall_s': round(wall, 2),
                     'throughput_req_s': round(service_rate, 2), 'ratio_to_tight_loop': round(service_rate / tight, 3),
                     'latency_ms': {f'p{q}': round(1000 * pct(ok, q), 1) for q in (50, 95, 99)} | {'max': round(1000 * max(ok), 1) if ok else None},
                     'logging': str(log) != 'off', 'logged_rows': logged_rows},
        'load_run_log_off': None if not off else {
            'requests': len(res_off), 'ok': len(ok_off), 'wall_s': round(wall_off, 2), 'throughput_req_s': round(off_rate, 2),
            'logging_cost': round(1 - service_rate / off_rate, 3),
            'latency_ms': {f'p{q}': round(1000 * pct(ok_off, q), 1) for q in (50, 95, 99)}},
        'overload_run': {'flood_clients': args.overload_clients, 'capacity': args.workers + args.overload_queue,
                         'flood': flood_out, 'probes': len(over), 'probe_ok': len(over_ok), 'probe_503': len(rejected), 'other_errors': over_err,
                         'latency_503_ms': {f'p{q}': round(1000 * pct(rejected, q), 2) for q in (50, 95, 99)} | {'max': round(1000 * max(rejected), 2) if rejected else None},
                         'latency_200_ms_p50': round(1000 * pct(over_ok, 50), 1) if over_ok else None,
                         'pending_after': health.get('pending')},
        'big_batch': big,
    }
    result['targets'] = {
        'no_errors_at_16_clients': not errors,
        'throughput_at_least_0.8x_tight_loop': service_rate >= 0.8 * tight,
        '503_p99_under_50ms': bool(rejected) and pct(rejected, 99) < 0.050,
        'overload_only_200_or_503': not over_err and set(flood_out['statuses']) <= {'200', '503'},
    }
    if logged_rows is not None: result['targets']['every_answer_logged'] = logged_rows == len(ok)
    if off: result['targets']['logging_costs_under_10pct'] = service_rate >= 0.9 * off_rate
    result['targets'] |= big_batch_targets(big)

    L = result['load_run']; O = result['overload_run']
    rows = [
        ('Predictor tight loop (this process)', f"{tight:.1f} img/s", f"{args.rounds} rounds: " + ', '.join(f"{r['tight_loop_img_s']:.0f}" for r in rounds)),
        (f"service, {args.clients} clients, {len(res)} requests", f"{service_rate:.1f} req/s", f"{L['ratio_to_tight_loop']:.2f}x tight loop; rounds: " + ', '.join(f"{r['service_req_s']:.0f}" for r in rounds)),
        ('  latency p50 / p95 / p99', f"{L['latency_ms']['p50']} / {L['latency_ms']['p95']} / {L['latency_ms']['p99']} ms", f"max {L['latency_ms']['max']} ms"),
        ('  errors', str(sum(errors.values())), json.dumps(errors) if errors else 'none'),
        ('  rows in the prediction log', 'off' if logged_rows is None else f"{logged_rows} for {len(ok)} answers", ''),
    ] + ([
        (f"same, server with --log off", f"{off_rate:.1f} req/s",
         f"logging costs {100 * (1 - service_rate / off_rate):+.1f}%; rounds: " + ', '.join(f"{r['service_log_off_req_s']:.0f}" for r in rounds)),
        ('  latency p50 / p95 / p99 (--log off)', ' / '.join(str(result['load_run_log_off']['latency_ms'][f'p{q}']) for q in (50, 95, 99)) + ' ms', ''),
    ] if off else []) + [
        (f"overload: flood of {args.overload_clients} clients > capacity {O['capacity']}", json.dumps(flood_out['statuses']),
         f"in {flood_out['wall_s']} s"),
        ('  probes during the flood', f"{len(rejected)} x 503, {len(over_ok)} x 200", f"other errors: {sum(over_err.values())}"),
        ('  503 latency p50 / p95 / p99', f"{O['latency_503_ms']['p50']} / {O['latency_503_ms']['p95']} / {O['latency_503_ms']['p99']} ms", f"max {O['latency_503_ms']['max']} ms"),
        ('server memory RSS (USS = unique)', f"{rss_loaded:.0f} ({uss_loaded:.0f}) MiB loaded", f"{rss_served:.0f} ({uss_served:.0f}) MiB after the load run"),
    ] + big_batch_rows(big)
    print_table(rows)
    print('\ntargets: ' + ', '.join(f"{k}: {'OK' if v else 'MISSED'}" for k, v in result['targets'].items()))
    write_json(args.out, result)
    tmp.cleanup()

if __name__ == '__main__': main()

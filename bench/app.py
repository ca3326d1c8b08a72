"""Time to first prediction on the Voilà page: a cold kernel vs a pre-heated one.

For each mode, `bear-app` serves the offline starter on a free loopback port (`--pool 0`: Voilà starts
a kernel when the visitor arrives, as plain Voilà does; `--pool 1`: the repository's setting, a kernel
that has already run the page). Once the server's processes are idle, Debian's chromium (playwright)
opens the page, uploads a photo and clicks Classify as soon as the widgets appear. We time

    page   navigation → the widgets are on screen
    click  Classify → the label shows the prediction
    ttfp   navigation → the label shows the prediction (time to first prediction)

Modes alternate (cold, warm, cold, warm, ...) so that the machine's load drifts over both alike.
Prints a table and writes bench/results/app.json.  Usage: python bench/app.py [--reps 2]

`--crowd N` (issue 16) instead sends N anonymous page loads at once to `bear-app --max-kernels CAP
--idle S` and samples the kernels each second: the peak number of kernels, how many visitors got
the busy page (503), the server's memory (its whole process tree) at baseline, peak and after the
idle timeout. Writes bench/results/app_crowd.json.  Usage: python bench/app.py --crowd 20 [--cap 6] [--idle 30]
"""
import argparse, json, os, platform, signal, socket, statistics, subprocess, sys, tempfile, time
from pathlib import Path

import psutil

from bear_classifier import testing
from bear_classifier.files import atomic_write, utc_now

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
                 '--disable-background-networking', '--disable-component-update', '--disable-sync']


def wait_idle(proc, kernels, timeout=600, quiet_s=3.0, cpu_pct=10.0):
    "Wait until `proc` has `kernels` kernel children and its whole process tree stays under `cpu_pct`% CPU for `quiet_s`"
    t0, quiet_since, p = time.time(), None, psutil.Process(proc.pid)
    while time.time() - t0 < timeout:
        if proc.poll() is not None: raise SystemExit(f'bench/app.py: bear-app exited with {proc.returncode}')
        tree, n = [p] + p.children(recursive=True), 0
        for c in tree:
            try:
                c.cpu_percent(interval=None)                 # prime: the next call measures from here
                n += c is not p and 'ipykernel_launcher' in ' '.join(c.cmdline())
            except psutil.Error: pass                        # a child that just exited
        time.sleep(0.5)
        cpu = 0.0
        for c in tree:
            try: cpu += c.cpu_percent(interval=None)
            except psutil.Error: pass
        if n >= kernels and cpu < cpu_pct:
            quiet_since = quiet_since or time.time()
            if time.time() - quiet_since >= quiet_s: return time.time() - t0
        else: quiet_since = None
    raise SystemExit(f'bench/app.py: bear-app did not settle within {timeout}s')


def photo(tmp):
    "A grizzly from ../shared/data/bears_shift, else (fresh clone) a photo that ships with scikit-image"
    folder = testing.shared_data('bears_shift', 'grizzly')
    files = sorted(folder.glob('*.jpg')) if folder else []
    if files: return files[0]
    p = Path(tmp)/'chelsea.jpg'; testing.sample_photos()['chelsea'].save(p); return p


def visit(browser, url, img):
    page = browser.new_page()
    t0 = time.perf_counter()
    page.goto(url, timeout=600_000)
    page.wait_for_selector('.bear-upload', timeout=600_000)
    t_page = time.perf_counter()
    with page.expect_file_chooser() as fc: page.click('.bear-upload')
    fc.value.set_files(str(img))
    page.wait_for_function("document.querySelector('.bear-upload').textContent.includes('(1)')", timeout=600_000)
    t_click = time.perf_counter()
    page.click('.bear-classify')
    page.wait_for_function("document.querySelector('.bear-upload').textContent.includes('(0)')", timeout=600_000)
    t_done = time.perf_counter()
    label = page.inner_text('.bear-prediction')
    page.close()
    return dict(page_s=t_page - t0, click_s=t_done - t_click, ttfp_s=t_done - t0, label=label)


def run_mode(browser, model, pool, img):
    port = testing.free_port()
    log = open(Path(tempfile.gettempdir())/f'bench-app-{port}.log', 'w')
    t0 = time.time()
    db = Path(tempfile.gettempdir())/f'bench-app-{port}.sqlite'        # every click is logged, as in production, but not in data/
    proc = subprocess.Popen([str(BIN/'bear-app'), '--model', str(model), '--port', str(port), '--pool', str(pool), '--log', str(db)],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        while True:
            try:
                with socket.create_connection(('127.0.0.1', port), timeout=1): break
            except OSError: time.sleep(0.3)
            if proc.poll() is not None: raise SystemExit(f'bench/app.py: bear-app exited; see {log.name}')
        listen_s = time.time() - t0
        ready_s = listen_s + wait_idle(proc, kernels=pool)
        r = visit(browser, f'http://127.0.0.1:{port}/', img)
        return dict(mode='pre-heated' if pool else 'cold', pool=pool, listen_s=listen_s, ready_s=ready_s, **r)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try: proc.wait(30)
        except subprocess.TimeoutExpired: os.killpg(proc.pid, signal.SIGKILL); proc.wait()


def tree(proc):
    "(kernels, MiB of the whole process tree) of bear-app's process"
    p, n, rss = psutil.Process(proc.pid), 0, 0
    for c in [p] + p.children(recursive=True):
        try: n += c is not p and 'ipykernel' in ' '.join(c.cmdline()); rss += c.memory_info().rss
        except psutil.Error: pass
    return n, rss / 2**20


def get_status(url):
    import urllib.request, urllib.error
    try:
        with urllib.request.urlopen(url, timeout=600) as r: return r.status
    except urllib.error.HTTPError as e: return e.code
    except Exception as e: return type(e).__name__


def crowd(model, n, cap, idle):
    "n page loads at once: one row of kernel counts (sampled each second), answers and memory"
    import threading
    port = testing.free_port()
    log = open(Path(tempfile.gettempdir())/f'bench-app-crowd-{port}.log', 'w')
    proc = subprocess.Popen([str(BIN/'bear-app'), '--model', str(model), '--port', str(port), '--log', 'off',
                             '--max-kernels', str(cap), '--idle', str(idle)], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_idle(proc, kernels=1)
        _, base = tree(proc)
        answers, samples, peak_rss = [], [], base
        ts = [threading.Thread(target=lambda: answers.append(get_status(f'http://127.0.0.1:{port}/'))) for _ in range(n)]
        t0 = time.time()
        for t in ts: t.start()
        while any(t.is_alive() for t in ts):
            k, rss = tree(proc); samples.append(k); peak_rss = max(peak_rss, rss); time.sleep(1)
        t1 = time.time()
        while tree(proc)[0] > 1 and time.time() - t1 < idle * 6: samples.append(tree(proc)[0]); time.sleep(1)
        time.sleep(3)
        return dict(visitors=n, cap=cap, idle_s=idle, peak_kernels=max(samples), served=answers.count(200), busy=answers.count(503),
                    other=len(answers) - answers.count(200) - answers.count(503), answer_s=t1 - t0, back_to_one_s=time.time() - t1,
                    baseline_mib=base, peak_mib=peak_rss, after_idle_mib=tree(proc)[1], kernels_after=tree(proc)[0])
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try: proc.wait(30)
        except subprocess.TimeoutExpired: os.killpg(proc.pid, signal.SIGKILL); proc.wait()


def crowd_main(args):
    row = crowd(testing.starter_bundle(), args.crowd, args.cap, args.idle)
    print(f"\n{'visitors':>9}{'cap':>5}{'peak kernels':>14}{'served':>8}{'busy':>6}{'other':>7}{'baseline MiB':>14}{'peak MiB':>10}{'after idle MiB':>16}")
    print(f"{row['visitors']:>9}{row['cap']:>5}{row['peak_kernels']:>14}{row['served']:>8}{row['busy']:>6}{row['other']:>7}"
          f"{row['baseline_mib']:>14.0f}{row['peak_mib']:>10.0f}{row['after_idle_mib']:>16.0f}")
    out = ROOT/'bench'/'results'/'app_crowd.json'
    atomic_write(out, json.dumps(dict(bench='app kernel ceiling under a crowd', cpus=os.cpu_count(), when=utc_now(), **row), indent=2))
    print(f'wrote {out.relative_to(ROOT)}')


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--reps', type=int, default=2)
    ap.add_argument('--crowd', type=int, default=0, help='N page loads at once instead of the time-to-first-prediction runs')
    ap.add_argument('--cap', type=int, default=6); ap.add_argument('--idle', type=int, default=30)
    args = ap.parse_args()
    if args.crowd: return crowd_main(args)
    from playwright.sync_api import sync_playwright
    with tempfile.TemporaryDirectory() as tmp:
        model, img = testing.starter_bundle(), photo(tmp)
        rows = []
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path='/usr/bin/chromium', args=CHROMIUM_ARGS)
            for rep in range(args.reps):
                for pool in (0, 1):
                    rows.append(dict(rep=rep, **run_mode(browser, model, pool, img)))
                    print({k: (round(v, 2) if isinstance(v, float) else v) for k, v in rows[-1].items()}, flush=True)
            browser.close()
    summary = {}
    for mode in ('cold', 'pre-heated'):
        rs = [r for r in rows if r['mode'] == mode]
        summary[mode] = {k: statistics.median(r[k] for r in rs) for k in ('ready_s', 'page_s', 'click_s', 'ttfp_s')}
    print(f"\n{'mode':<12}{'server ready':>14}{'page':>10}{'click':>10}{'TTFP':>10}   (medians of {args.reps}, seconds)")
    for mode, s in summary.items():
        print(f"{mode:<12}{s['ready_s']:>14.1f}{s['page_s']:>10.1f}{s['click_s']:>10.2f}{s['ttfp_s']:>10.1f}")
    out = ROOT/'bench'/'results'/'app.json'
    res = dict(bench='app time to first prediction', photo=str(img.name), cpus=os.cpu_count(),
               machine=platform.machine(), python=platform.python_version(), runs=rows, median=summary,
               when=utc_now())
    atomic_write(out, json.dumps(res, indent=2))
    print(f'wrote {out.relative_to(ROOT)}')


if __name__ == '__main__': main()

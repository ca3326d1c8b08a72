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

`--crowd N` (issue 16) instead sends N anonymous page loads at once to `bear-app --idle S` (the
kernel ceiling of voila.json, 6, unless `--cap N` passes `--max-kernels N`) and samples the kernels
each second: the peak number of kernels (never over the ceiling), how many visitors got the busy
page (503), and the memory, as the sum of the kernels' RSS and as the server's whole process tree,
at baseline (one pre-heated kernel), at the peak and after the idle timeout culled the visitors'
kernels. Writes bench/results/app_crowd.json.  Usage: python bench/app.py --crowd 20 [--cap N] [--idle 30]

`--kernel-rss` measures one page kernel: `bear-app --pool 1` pre-heats a kernel (it runs the page:
imports, loads the starter, one warm-up prediction), then chromium classifies one photo in it (the
answer is logged). RSS and USS (the pages no other process shares) of that kernel after each, and
whether libtorch is mapped into it. `--old DIR` measures the checkout DIR first (e.g. `git worktree
add /tmp/old HEAD`; bear-app and its kernels get DIR's code through PYTHONPATH), side by side. Writes bench/results/app_kernel.json.
Usage: python bench/app.py --kernel-rss [--old /tmp/old]
"""
import argparse, json, os, platform, signal, socket, statistics, subprocess, sys, tempfile, time
from pathlib import Path

import psutil

from bear_classifier import testing
from bear_classifier.files import atomic_write, utc_now
from bear_classifier.predlog import PredictionLog

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


def visit(browser, url, img, before_close=None):
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
    if before_close: before_close()                  # Voila shuts the kernel down when the page goes
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


def start_app(root, model, port, *args, log_name='bench-app'):
    "bear-app serving `model` from checkout `root` (another checkout than this one: its code, through PYTHONPATH)"
    env = dict(os.environ)
    if Path(root).resolve() != ROOT: env['PYTHONPATH'] = os.pathsep.join(filter(None, [str(root), env.get('PYTHONPATH')]))
    log = open(Path(tempfile.gettempdir())/f'{log_name}-{port}.log', 'w')
    proc = subprocess.Popen([str(BIN/'bear-app'), '--model', str(model), '--port', str(port), *map(str, args)],
                            cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    testing.wait_listening(proc, port, Path(log.name), 'bear-app', 600)
    return proc


def stop_app(proc):
    os.killpg(proc.pid, signal.SIGTERM)
    try: proc.wait(30)
    except subprocess.TimeoutExpired: os.killpg(proc.pid, signal.SIGKILL); proc.wait()


def kernels(proc) -> dict:
    "{pid: psutil.Process} of the kernels under bear-app's process"
    out = {}
    for c in psutil.Process(proc.pid).children(recursive=True):
        try:
            if 'ipykernel' in ' '.join(c.cmdline()): out[c.pid] = c
        except psutil.Error: pass                            # a kernel that just exited
    return out


def tree(proc):
    "(kernels, MiB of the kernels' RSS, MiB of the whole process tree's RSS) of bear-app's process"
    p, ks, rss = psutil.Process(proc.pid), kernels(proc), 0
    krss = 0
    for c in [p] + p.children(recursive=True):
        try:
            r = c.memory_info().rss; rss += r; krss += r if c.pid in ks else 0
        except psutil.Error: pass
    return len(ks), krss / 2**20, rss / 2**20


def kernel_memory(k) -> dict:
    "RSS and USS (MiB) of kernel process `k`, and whether libtorch is mapped into it"
    m = k.memory_full_info()
    return dict(rss_mib=m.rss / 2**20, uss_mib=m.uss / 2**20, torch=any('libtorch' in x.path for x in k.memory_maps()))


def kernel_rss(browser, root, model, img):
    "One page kernel of checkout `root`: its memory once pre-heated (the page ran), and after one Classify"
    port, db = testing.free_port(), Path(tempfile.mkdtemp())/'predictions.sqlite'
    proc = start_app(root, model, port, '--pool', '1', '--log', db)
    try:
        wait_idle(proc, kernels=1)
        (pid, k), = kernels(proc).items()
        row = dict(root=str(root), preheated=kernel_memory(k))
        r = visit(browser, f'http://127.0.0.1:{port}/', img, before_close=lambda: row.update(classified=kernel_memory(k)))
        return dict(row, label=r['label'], logged=PredictionLog(db).count())
    finally: stop_app(proc)


def kernel_rss_main(args):
    from playwright.sync_api import sync_playwright
    roots = ([Path(args.old)] if args.old else []) + [ROOT]
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as pw:
        model, img = testing.starter_bundle(), photo(tmp)
        browser = pw.chromium.launch(executable_path=testing.CHROMIUM, args=CHROMIUM_ARGS)
        rows = [kernel_rss(browser, root, model, img) for root in roots]
        browser.close()
    print(f"\n{'checkout':<28}{'pre-heated RSS':>16}{'USS':>8}{'after Classify RSS':>20}{'USS':>8}{'libtorch':>10}  (MiB)")
    for r in rows:
        a, b = r['preheated'], r['classified']
        print(f"{r['root']:<28}{a['rss_mib']:>16.0f}{a['uss_mib']:>8.0f}{b['rss_mib']:>20.0f}{b['uss_mib']:>8.0f}{'yes' if b['torch'] else 'no':>10}")
    out = ROOT/'bench'/'results'/'app_kernel.json'
    atomic_write(out, json.dumps(dict(bench='memory of one page kernel (starter, ONNX)', cpus=os.cpu_count(), when=utc_now(), rows=rows), indent=2))
    print(f'wrote {out.relative_to(ROOT)}')


def get_status(url):
    import urllib.request, urllib.error
    try:
        with urllib.request.urlopen(url, timeout=600) as r: r.read(); return r.status      # the whole page, as a browser waits for it
    except urllib.error.HTTPError as e: return e.code
    except Exception as e: return type(e).__name__


def crowd(model, n, cap, idle):
    "n page loads at once: kernel counts and memory sampled each second until the idle timeout culled the visitors' kernels"
    import threading
    from bear_classifier.launch import kernel_ceiling
    ceiling = kernel_ceiling(ROOT, cap, 1)                   # what bear-app will enforce: --max-kernels, else voila.json's
    port = testing.free_port()
    proc = start_app(ROOT, model, port, '--log', 'off', '--idle', idle, *(['--max-kernels', cap] if cap else []), log_name='bench-app-crowd')
    try:
        wait_idle(proc, kernels=1)
        _, base_k, base = tree(proc)
        answers, samples = [], []
        def sample():
            k, krss, rss = tree(proc); samples.append(dict(t=round(time.time() - t0, 1), kernels=k, kernels_mib=krss, tree_mib=rss))
        ts = [threading.Thread(target=lambda: answers.append(get_status(f'http://127.0.0.1:{port}/'))) for _ in range(n)]
        t0 = time.time()
        for t in ts: t.start()
        while any(t.is_alive() for t in ts): sample(); time.sleep(1)
        t1 = time.time()
        while (samples[-1]['kernels'] > 1 or time.time() - t1 < idle) and time.time() - t1 < idle * 6: sample(); time.sleep(1)
        time.sleep(3); sample()
        peak = max(samples, key=lambda s: s['kernels_mib'])
        return dict(visitors=n, cap=ceiling, idle_s=idle, peak_kernels=max(s['kernels'] for s in samples),
                    samples_over_cap=sum(s['kernels'] > ceiling for s in samples), served=answers.count(200), busy=answers.count(503),
                    other=len(answers) - answers.count(200) - answers.count(503), answer_s=t1 - t0, settled_s=time.time() - t1,
                    baseline_kernels_mib=base_k, peak_kernels_mib=peak['kernels_mib'], after_idle_kernels_mib=samples[-1]['kernels_mib'],
                    baseline_mib=base, peak_mib=max(s['tree_mib'] for s in samples), after_idle_mib=samples[-1]['tree_mib'],
                    kernels_after=samples[-1]['kernels'], samples=samples)
    finally: stop_app(proc)


def crowd_main(args):
    row = crowd(testing.starter_bundle(), args.crowd, args.cap, args.idle)
    print(f"\n{'visitors':>9}{'cap':>5}{'peak kernels':>14}{'over cap':>10}{'served':>8}{'busy':>6}{'other':>7}   memory MiB: kernels (whole server)")
    print(f"{row['visitors']:>9}{row['cap']:>5}{row['peak_kernels']:>14}{row['samples_over_cap']:>10}{row['served']:>8}{row['busy']:>6}{row['other']:>7}"
          f"   baseline {row['baseline_kernels_mib']:.0f} ({row['baseline_mib']:.0f}), peak {row['peak_kernels_mib']:.0f} ({row['peak_mib']:.0f}), "
          f"after idle {row['after_idle_kernels_mib']:.0f} ({row['after_idle_mib']:.0f}), {row['kernels_after']} kernel(s) left")
    out = ROOT/'bench'/'results'/'app_crowd.json'
    atomic_write(out, json.dumps(dict(bench='app kernel ceiling under a crowd', cpus=os.cpu_count(), when=utc_now(), **row), indent=2))
    print(f'wrote {out.relative_to(ROOT)}')


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--reps', type=int, default=2)
    ap.add_argument('--crowd', type=int, default=0, help='N page loads at once instead of the time-to-first-prediction runs')
    ap.add_argument('--cap', type=int, default=None, help="the kernel ceiling (default: voila.json's)")
    ap.add_argument('--idle', type=int, default=30, help='seconds after which an idle kernel is culled (bear-app --idle)')
    ap.add_argument('--kernel-rss', action='store_true', help="one page kernel's memory instead")
    ap.add_argument('--old', default=None, help='with --kernel-rss: another checkout measured first (e.g. a git worktree of HEAD)')
    args = ap.parse_args()
    if args.crowd: return crowd_main(args)
    if args.kernel_rss: return kernel_rss_main(args)
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

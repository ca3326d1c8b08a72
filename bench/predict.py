#!/usr/bin/env python
"""Benchmark: one image, end to end — learn.predict vs the raw network vs the Predictor (PyTorch and ONNX Runtime).

One process, the same photos, the methods interleaved image by image so that a busy machine slows
them all alike:
  learn.predict(path)        fastai, from the bundle's export.pkl (what the lesson's app does)
  raw forward (torch)        learn.model on an already preprocessed tensor: the network alone
  raw forward (onnx)         the bundle's model.onnx (network + "none of these" gate) on the same tensor, ONNX Runtime
  Predictor torch / onnx     Predictor.predict(path): read + decode + preprocess + network + answer
Reports p50/p95 latency, images/s at batch 1 and at batch 32 (learn.get_preds on a test_dl vs
Predictor.predict_batch, decoding included), model load time, and peak RSS of a fresh process that
loads the model and classifies one image. Writes bench/results/predict.json.

Run from the repository root:
    python bench/predict.py [--model BUNDLE ...] [--n 40] [--repeats 3]
Default models: the starter (built in a temporary folder) and the newest trained bundle under models/.
Timings on a shared machine swing a lot: compare numbers of one run only.
"""
import argparse, json, os, subprocess, sys, tempfile, time
from pathlib import Path
import numpy as np

ROOT = Path(__file__).resolve().parents[1]

def photos(n, tmp):
    "n real photos as files: held-out bear photos when available, else package photos written to `tmp`"
    from bear_classifier.testing import sample_photos, shared_data
    shift = shared_data('bears_shift')
    if shift is not None:
        fs = sorted(shift.rglob('*.jpg'))
        return [fs[i] for i in np.linspace(0, len(fs) - 1, min(n, len(fs))).astype(int)]
    out = []
    for i, im in enumerate(sample_photos().values()):
        p = Path(tmp)/f'{i}.jpg'; im.convert('RGB').save(p, quality=90); out.append(p)
    return (out * (n // len(out) + 1))[:n]

RSS_SNIPPET = r'''
import resource, sys, time
from pathlib import Path
kind, bundle, img = sys.argv[1:4]
import torch; torch.set_num_threads(1)
t = time.perf_counter()
if kind == 'learn.predict':
    from bear_classifier.bundle import load_bundle_learner
    learn = load_bundle_learner(bundle)
    with learn.no_bar(): learn.predict(Path(img))
else:
    from bear_classifier.inference import Predictor
    Predictor.load(bundle, backend=kind.split()[-1], threads=1).predict(img)
# VmHWM, not ru_maxrss: ru_maxrss survives exec and would report the (large) parent's size
hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')]
peak = int(hwm[0].split()[1]) / 1024 if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(peak, time.perf_counter() - t)
'''

def peak_rss(kind, bundle, img):
    "Peak RSS (MiB) and seconds of a fresh process that loads `bundle` and classifies one image"
    r = subprocess.run([sys.executable, '-c', RSS_SNIPPET, kind, str(bundle), str(img)], capture_output=True, text=True, cwd=ROOT)
    if r.returncode: return None, None
    mb, secs = r.stdout.split()[-2:]
    return float(mb), float(secs)

def pct(ts, q): return float(np.percentile(np.asarray(ts) * 1000, q))

def bench_model(bundle, files, repeats, bs=32, threads=1):
    import torch
    torch.set_num_threads(threads)
    from bear_classifier.bundle import load_bundle_learner, read_card
    from bear_classifier.images import decode_image
    from bear_classifier.inference import Predictor
    card = read_card(bundle)
    loads = {}
    t = time.perf_counter(); learn = load_bundle_learner(bundle); loads['learn.predict'] = time.perf_counter() - t
    preds = {}
    for be in ('torch', 'onnx'):
        t = time.perf_counter(); preds[be] = Predictor.load(bundle, backend=be, threads=threads); loads[f'Predictor {be}'] = time.perf_counter() - t
    model = learn.model.eval()
    xs = {f: preds['onnx'].preprocess(decode_image(f))[None] for f in files}
    xg = {f: (lambda a, g: (a[None], None if g is None else g[None]))(*preds['onnx'].inputs(decode_image(f))) for f in files}
    def raw_torch(f):
        with torch.inference_mode(): model(torch.from_numpy(xs[f]))
    methods = {
        'learn.predict': lambda f: learn.predict(f),
        'raw forward (torch)': raw_torch,
        'raw forward (onnx)': lambda f: preds['onnx'].predict_arrays(*xg[f]),      # incl. the gate, if any
        'Predictor torch': lambda f: preds['torch'].predict(f),
        'Predictor onnx': lambda f: preds['onnx'].predict(f),
    }
    times = {m: [] for m in methods}
    with learn.no_bar():
        for m, fn in methods.items():                      # warm up
            for f in files[:3]: fn(f)
        for _ in range(repeats):
            for f in files:
                for m, fn in methods.items():
                    t = time.perf_counter(); fn(f); times[m].append(time.perf_counter() - t)
        # batch 32: decoding included on both sides
        batch = (files * (bs // len(files) + 1))[:bs]
        tput = {m: [] for m in ('learn.get_preds', 'Predictor torch', 'Predictor onnx')}
        for _ in range(repeats):
            t = time.perf_counter(); learn.get_preds(dl=learn.dls.test_dl(batch, bs=bs, num_workers=0))
            tput['learn.get_preds'].append(bs / (time.perf_counter() - t))
            for be in ('torch', 'onnx'):
                t = time.perf_counter(); preds[be].predict_batch(batch, bs=bs)
                tput[f'Predictor {be}'].append(bs / (time.perf_counter() - t))
    rows = {}
    for m, ts in times.items():
        rows[m] = dict(p50_ms=pct(ts, 50), p95_ms=pct(ts, 95), mean_ms=float(np.mean(ts) * 1000),
                       ips_batch1=float(1 / np.mean(ts)), n=len(ts), load_s=loads.get(m))
    for m, v in tput.items():
        key = 'learn.predict' if m == 'learn.get_preds' else m
        rows[key]['ips_batch32'] = float(np.median(v))
    for m in ('learn.predict', 'Predictor torch', 'Predictor onnx'):
        rows[m]['peak_rss_mb'], rows[m]['cold_start_s'] = peak_rss(m, bundle, files[0])
    lp = rows['learn.predict']['p50_ms']
    for m in rows: rows[m]['vs_learn_predict'] = rows[m]['p50_ms'] / lp
    return dict(model=card['name'], kind=card['kind'], version=card['version'], size=card['input']['size'], threads=threads,
                gate=card['none_of_these'].get('features'), n_images=len(files), repeats=repeats, rows=rows)

def print_table(r):
    print(f"\n## {r['model']} ({r['kind']}, input {r['size']}, none-of-these features: {r['gate']}); "
          f"{r['n_images']} photos x {r['repeats']} repeats, {r['threads']} thread(s)")
    print("| method | p50 ms | p95 ms | vs learn.predict (p50) | img/s batch 1 | img/s batch 32 | load s | peak RSS MiB (fresh process) |")
    print("|---|---|---|---|---|---|---|---|")
    f = lambda v, fmt: '-' if v is None else format(v, fmt)
    for m, x in r['rows'].items():
        print(f"| {m} | {x['p50_ms']:.1f} | {x['p95_ms']:.1f} | {x['vs_learn_predict']:.2f}x | {x['ips_batch1']:.1f} | "
              f"{f(x.get('ips_batch32'), '.1f')} | {f(x.get('load_s'), '.2f')} | {f(x.get('peak_rss_mb'), '.0f')} |")

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--model', action='append', help='bundle folder (repeatable)')
    ap.add_argument('--n', type=int, default=40, help='number of photos')
    ap.add_argument('--repeats', type=int, default=3)
    ap.add_argument('--threads', type=int, default=1, help='threads for PyTorch and ONNX Runtime alike (default 1: on a '
                    'small shared machine, two spinning PyTorch threads stalled a forward pass from 20 ms to 2 s)')
    ap.add_argument('--out', default=str(ROOT/'bench'/'results'/'predict.json'))
    a = ap.parse_args()
    import torch, onnxruntime
    from bear_classifier.bundle import list_bundles
    from bear_classifier.core import package_versions
    from bear_classifier.export import build_starter
    from bear_classifier.files import utc_now
    out = dict(created=utc_now(), loadavg_start=os.getloadavg(),
               cpus=os.cpu_count(), torch_threads=torch.get_num_threads(), versions=package_versions(), models={})
    with tempfile.TemporaryDirectory() as tmp:
        files = photos(a.n, tmp)
        bundles = [Path(m) for m in a.model] if a.model else []
        if not bundles:
            bundles.append(build_starter(Path(tmp)/'models'))
            trained = [p for p, c in list_bundles(ROOT/'models') if c.get('kind') == 'trained']
            if trained: bundles.append(trained[0])
        for b in bundles:
            r = bench_model(b, files, a.repeats, threads=a.threads)
            out['models'][f"{r['model']} ({r['kind']})"] = r
            print_table(r)
    out['loadavg_end'] = os.getloadavg()
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1))
    print(f"\nloadavg start {out['loadavg_start']}, end {out['loadavg_end']}; wrote {a.out}")

if __name__ == '__main__': main()

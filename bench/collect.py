#!/usr/bin/env python
"""How fast collection checks and stores images, and what its two speed choices buy, in one run.

    python bench/collect.py [--latency 0.05] [--n-web 48]

1. decode + verify + shrink (`images.decode_bytes`, as collect calls it) on camera-sized JPEGs (4000x3000, made from the
   photos that ship with scikit-image/scikit-learn): Pillow's JPEG `draft` mode (decode at a
   reduced DCT scale) against decoding at full size, with the pixel difference of the results;
2. downloads over loopback from a server that answers each request after `--latency` seconds
   (a stand-in for a real web server far away): `workers=1` against `workers=8`;
3. importing ../shared/data/bears with the folder source (when present): images per second.
Prints a table and writes bench/results/collect.json. Compare rows only within one run: the
machine is shared and timings swing.
"""
import argparse, json, os, platform, tempfile, time
from pathlib import Path

import numpy as np

from bear_classifier.collect import collect_images
from bear_classifier.download import SearchSource
from bear_classifier.files import atomic_write, utc_now
from bear_classifier.images import decode_bytes
from bear_classifier.testing import WebServer, image_bytes, sample_photos, shared_data

ROOT = Path(__file__).resolve().parents[1]


def bench_decode(photos, reps=2):
    big = [image_bytes(im.resize((4000, 3000)), quality=90) for im in photos]
    out = {}
    for draft in (True, False):
        t = time.perf_counter()
        for _ in range(reps):
            res = [decode_bytes(b, max_side=400, draft=draft) for b in big]
        out[draft] = ((time.perf_counter() - t) / (reps * len(big)), res)
    diff = np.mean([np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)).mean()
                    for a, b in zip(out[True][1], out[False][1])])
    return dict(images=len(big), ms_draft=1000 * out[True][0], ms_full=1000 * out[False][0],
                speedup=out[False][0] / out[True][0], mean_abs_pixel_diff=float(diff))


def bench_web(photos, n, latency):
    rows = {}
    with WebServer() as web:
        for w in (1, 8):
            urls = [web.add(f'/w{w}/{i}.jpg', image_bytes(photos[i % len(photos)], size=300 + 7 * i), delay=latency)
                    for i in range(n)]
            with tempfile.TemporaryDirectory() as d:
                src = SearchSource(search=lambda q, max_results: urls, pause=0)
                t = time.perf_counter()
                res = collect_images(['x'], dest=Path(d), source=src, workers=w, progress=False, max_per_label=n)
                s = time.perf_counter() - t
            rows[w] = dict(workers=w, seconds=s, images_per_s=n / s, kept=res['x'].kept, duplicates=res['x'].duplicates)
    return rows


def bench_folder():
    bears = shared_data('bears')
    if bears is None: return None
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        res = collect_images(dest=Path(d), source=f'folder:{bears}', progress=False)
        s = time.perf_counter() - t
    tot = res.totals()
    return dict(images=tot['candidates'], seconds=s, images_per_s=tot['candidates'] / s, kept=tot['kept'],
                duplicates=tot['duplicates'], failed=tot['failed'], conflicts=len(res.conflicts))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument('--latency', type=float, default=0.05)
    ap.add_argument('--n-web', type=int, default=48)
    a = ap.parse_args()
    photos = list(sample_photos().values())
    dec, web, folder = bench_decode(photos), bench_web(photos, a.n_web, a.latency), bench_folder()
    print(f"decode+verify+shrink of {dec['images']} 4000x3000 JPEGs to 400 px: draft {dec['ms_draft']:.0f} ms/image, "
          f"full {dec['ms_full']:.0f} ms/image ({dec['speedup']:.1f}x), mean |pixel diff| {dec['mean_abs_pixel_diff']:.2f}/255")
    print(f"{'loopback downloads':<28}{'workers':>8}{'seconds':>9}{'img/s':>8}{'kept':>6}")
    for r in web.values():
        print(f"{f'{a.n_web} x {a.latency*1000:.0f} ms latency':<28}{r['workers']:>8}{r['seconds']:>9.2f}{r['images_per_s']:>8.1f}{r['kept']:>6}")
    if folder:
        print(f"folder import of ../shared/data/bears: {folder['images']} images in {folder['seconds']:.1f}s "
              f"({folder['images_per_s']:.0f}/s), kept {folder['kept']}, duplicates {folder['duplicates']}, "
              f"failed {folder['failed']}, conflicts {folder['conflicts']}")
    else: print('folder import: ../shared/data/bears not found, skipped')
    out = ROOT/'bench'/'results'/'collect.json'
    atomic_write(out, json.dumps(dict(when=utc_now(), machine=f'{platform.machine()} {os.cpu_count()} cpus', decode=dec,
                                      web=list(web.values()), folder=folder, latency_s=a.latency), indent=1))
    print(f'wrote {out.relative_to(ROOT)}')


if __name__ == '__main__': main()

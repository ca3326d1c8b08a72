#!/usr/bin/env python
"""Benchmark: "not a bear" — OOD photos flagged vs real bears rejected, for the starter and a trained model.

Scores every photo of ../shared/data/ood (498 ImageNet classes that are none of ours, ice and sloth
bears included) and ../shared/data/bears_shift (held-out bear photos from a second scrape) with each
model's Predictor, and tabulates, over thresholds on the ImageNet bear mass, the share of OOD photos
flagged and of bears rejected. The row marked `*` is the threshold in the model's card (fixed for the
starter, calibrated on the validation split for a trained model): nothing here tunes it.

Three bears_shift photos are not bears (looked at by eye: two dog puppies filed under "teddy", and a
grey "Image" placeholder filed under "grizzly"); rejecting them is correct, so the table shows the
rejection rate with and without them. The max-softmax baseline is shown for comparison.

Run from the repository root:
    python bench/ood.py [--trained BUNDLE | --run RUN_DIR] [--out bench/results/ood.json]
Without --trained/--run, the newest trained bundle under models/ is used (skipped when there is none).
"""
import argparse, json, math, os, sys, tempfile, time
from pathlib import Path
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OFF_TOPIC = {'teddy/00000091.jpg': 'Shih-Tzu puppy', 'teddy/00000135.jpg': 'black puppy in a hand',
             'grizzly/00000064.jpg': 'grey placeholder with the word "Image"'}
MASSES = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5]

def score_all(pred, files):
    res = pred.predict_batch(files, bs=32)
    bad = [str(f) for f, r in zip(files, res) if isinstance(r, Exception)]
    if bad: raise SystemExit(f"bench/ood.py: could not read {bad}")
    return res

def evaluate(pred, shift_files, ood_files):
    t = time.time()
    shift, ood = score_all(pred, shift_files), score_all(pred, ood_files)
    secs = time.time() - t
    rel = [f'{f.parent.name}/{f.name}' for f in shift_files]
    keep = np.array([r not in OFF_TOPIC for r in rel])
    s_sc, o_sc = np.array([r.score for r in shift]), np.array([r.score for r in ood])
    s_mp, o_mp = np.array([r.probability for r in shift]), np.array([r.probability for r in ood])
    thr = pred.threshold
    rows = []
    for t_ in sorted({thr, *[math.log(m) for m in MASSES]}):
        rows.append(dict(threshold=t_, mass=math.exp(t_), card=abs(t_ - thr) < 1e-12,
                         ood_flagged=float((o_sc < t_).mean()), bears_rejected=float((s_sc < t_).mean()),
                         bears_rejected_on_topic=float((s_sc[keep] < t_).mean())))
    def baseline(rate):       # max softmax, its threshold set on bears_shift itself (the most favourable case)
        t_ = np.quantile(s_mp, rate); return float((o_mp < t_).mean())
    truth = [r.split('/')[0] for r in rel]
    acc_in = [p.label == y for p, y, k in zip(shift, truth, keep) if p.in_domain and k]
    at = dict(ood_flagged=float((o_sc < thr).mean()), bears_rejected=float((s_sc < thr).mean()),
              bears_rejected_on_topic=float((s_sc[keep] < thr).mean()),
              rejected_bears=[f"{r} ({p.score:.2f})" for r, p in zip(rel, shift) if not p.in_domain],
              accepted_ood=[f"{f.name} ({p.score:.2f})" for f, p in zip(ood_files, ood) if p.in_domain],
              accuracy_on_accepted_bears=float(np.mean(acc_in)) if acc_in else None)
    by_kind = {}
    for kind in ('ice_bear', 'sloth_bear'):
        hit = [p.in_domain for f, p in zip(ood_files, ood) if kind in f.name]
        if hit: by_kind[kind] = 'accepted (wrong)' if hit[0] else 'flagged'
    return dict(model=pred.name, kind=pred.kind, version=pred.version, threshold=thr,
                calibration=pred.card['not_a_bear'].get('calibration'), features=pred.card['not_a_bear'].get('features'),
                n_shift=len(shift_files), n_shift_on_topic=int(keep.sum()), n_ood=len(ood_files), seconds=secs,
                at_card_threshold=at, sweep=rows, ice_and_sloth=by_kind,
                max_softmax_baseline=dict(ood_flagged_at_2pct_bears=baseline(0.02), ood_flagged_at_5pct_bears=baseline(0.05)))

def print_table(r):
    print(f"\n## {r['model']} ({r['kind']}, version {r['version']}; score features: {r['features']})")
    print(f"threshold {r['threshold']:.3f} (mass {math.exp(r['threshold']):.4f}); calibration: "
          f"{ {k: v for k, v in (r['calibration'] or {}).items() if k != 'why'} }")
    print(f"bears_shift n={r['n_shift']} ({r['n_shift_on_topic']} on topic), ood n={r['n_ood']}")
    print("| threshold (log mass) | bear mass | OOD flagged | bears rejected (all) | bears rejected (on-topic) |")
    print("|---|---|---|---|---|")
    for row in r['sweep']:
        star = ' *' if row['card'] else ''
        print(f"| {row['threshold']:.3f}{star} | {row['mass']:.4f} | {row['ood_flagged']:.1%} | {row['bears_rejected']:.1%} | {row['bears_rejected_on_topic']:.1%} |")
    a = r['at_card_threshold']
    print(f"at the card threshold: OOD flagged {a['ood_flagged']:.1%}, bears rejected {a['bears_rejected']:.1%} "
          f"({a['bears_rejected_on_topic']:.1%} of on-topic), accuracy on accepted bears {a['accuracy_on_accepted_bears']:.1%}")
    print(f"  rejected bears: {a['rejected_bears']}")
    print(f"  OOD accepted as bears: {a['accepted_ood']}")
    print(f"  ice bear / sloth bear: {r['ice_and_sloth']}")
    b = r['max_softmax_baseline']
    print(f"  max-softmax baseline (threshold tuned on bears_shift itself): OOD flagged {b['ood_flagged_at_2pct_bears']:.1%} "
          f"at 2% bears rejected, {b['ood_flagged_at_5pct_bears']:.1%} at 5%")

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--trained', help='a trained bundle folder (models/<name>)')
    ap.add_argument('--run', help='a training run folder to export into a temporary bundle')
    ap.add_argument('--backend', default='auto')
    ap.add_argument('--out', default=str(ROOT/'bench'/'results'/'ood.json'))
    a = ap.parse_args()
    from bear_classifier.files import shared_data_dir, utc_now
    shared = shared_data_dir()
    if not (shared/'ood').is_dir(): sys.exit(f"bench/ood.py: reference images not found at {shared}; set BEAR_SHARED_DATA")
    from bear_classifier.bundle import list_bundles
    from bear_classifier.export import build_starter, export_bundle
    from bear_classifier.inference import Predictor
    shift_files = sorted((shared/'bears_shift').rglob('*.jpg'))
    ood_files = sorted((shared/'ood').rglob('*.jpg'))
    out = dict(created=utc_now(), loadavg=os.getloadavg(), models={})
    with tempfile.TemporaryDirectory() as tmp:
        bundles = [build_starter(Path(tmp)/'models')]
        if a.trained: bundles.append(Path(a.trained))
        elif a.run: bundles.append(export_bundle(a.run, dest=Path(tmp)/'models'))
        else:
            trained = [p for p, c in list_bundles(ROOT/'models') if c.get('kind') == 'trained']
            if trained: bundles.append(trained[0])
            else: print("no trained bundle under models/ (pass --trained or --run): measuring the starter only")
        for b in bundles:
            pred = Predictor.load(b, backend=a.backend)
            r = evaluate(pred, shift_files, ood_files)
            out['models'][r['kind']] = r
            print_table(r)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1))
    print(f"\nwrote {a.out}")

if __name__ == '__main__': main()

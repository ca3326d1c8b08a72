#!/usr/bin/env python
"""Benchmark: "none of these" — OOD photos flagged vs in-domain photos rejected, kNN vs ImageNet mass vs max-softmax.

Two tasks, side by side in one run:

- **bears**: a run of bear-train's default recipe on ../shared/data/bears; in-domain test photos are
  ../shared/data/bears_shift (a second scrape). Three of its 91 photos are not our bears (two puppies
  filed under "teddy", a grey "Image" placeholder under "grizzly"): rejecting them is right, so the
  table also shows the rejection rate without them.
- **plants**: a run on a fixed 80% of ../shared/data/plants (every 5th photo of each label, in sorted
  order, is held out) with `--imagenet-map none`; the held-out 20% are the in-domain test photos.

For each, every detector's threshold is calibrated the same way, at the same stated false-rejection
rate: the 2% quantile (position q·(n+1), `ood.calibrate`) of its scores on the run's VALIDATION split (nothing here is tuned on the test
photos or on ../shared/data/ood). Detectors: (a) kNN (k-th cosine similarity to the training split's
features through the served network: the default of every trained bundle), (b) the ImageNet mass on
our labels' rows (bears only: plants have no ImageNet rows), (c) max-softmax, and for the bears the
combination kNN AND ImageNet mass (reject only when both reject) with each at 1% and at 2%.

Run from the repository root (training both runs takes a while on a small CPU; pass runs you have):
    python bench/ood.py [--bears-run RUN] [--plants-run RUN] [--work DIR] [--out bench/results/ood.json]
"""
import argparse, csv, json, os, shutil, subprocess, sys, time
from pathlib import Path
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OFF_TOPIC = {'teddy/00000091.jpg': 'Shih-Tzu puppy', 'teddy/00000135.jpg': 'black puppy in a hand',
             'grizzly/00000064.jpg': 'grey placeholder with the word "Image"'}
Q = 0.02
MEASURABLE = 2      # photos: a detector "measurably helps" only when it rejects more than this many fewer in-domain photos

def split_plants(src:Path, work:Path) -> tuple[Path, Path]:
    "The fixed 80/20 split of ../shared/data/plants: (training folder, held-out folder), copied under `work`"
    train, held = work/'plants80', work/'plants20'
    if not train.is_dir():
        for lbl in sorted(p for p in src.iterdir() if p.is_dir()):
            for i, f in enumerate(sorted(lbl.glob('*.jpg'))):
                d = (held if i % 5 == 4 else train)/lbl.name; d.mkdir(parents=True, exist_ok=True)
                shutil.copy2(f, d/f.name)
    return train, held

def train(data:Path, out:Path, *extra) -> Path:
    "A bear-train run with the recipe's defaults (skipped when `out` already holds one)"
    if not (out/'export.pkl').is_file():
        subprocess.run([str(Path(sys.executable).parent/'bear-train'), str(data), '--out', str(out), *extra], check=True)
    return out

def split_files(run:Path, valid:bool) -> list[Path]:
    with open(run/'split.csv', newline='') as f:
        return [Path(r['file']) for r in csv.DictReader(f) if bool(int(r['is_valid'])) == valid and Path(r['file']).is_file()]

def scores(pred, files) -> dict:
    "Each photo's detector score and max-softmax, through the bundle's Predictor"
    res = pred.predict_batch(files, bs=32)
    bad = [str(f) for f, r in zip(files, res) if isinstance(r, Exception)]
    if bad: raise SystemExit(f"bench/ood.py: could not read {bad}")
    return dict(score=np.array([r.score for r in res]), msp=np.array([r.probability for r in res]),
                label=[r.label for r in res])

def rates(val, test, ood, keep=None, q=Q) -> dict:
    "Threshold at the `q` quantile of the validation scores (`ood.calibrate`, unclamped); share of test photos rejected and of OOD photos flagged"
    from bear_classifier.ood import calibrate
    t = calibrate(val, q)[0]
    out = dict(threshold=t, valid_rejected=float((val < t).mean()), in_domain_rejected=float((test < t).mean()),
               ood_flagged=float((ood < t).mean()))
    if keep is not None: out['in_domain_rejected_on_topic'] = float((test[keep] < t).mean())
    return out, t

def combined(a, b, keep, q) -> dict:
    "kNN AND ImageNet mass: rejected only when both reject, each at its own `q` validation quantile"
    (ra, ta), (rb, tb) = rates(*a, keep, q), rates(*b, keep, q)
    rej = lambda i: (a[i] < ta) & (b[i] < tb)
    return dict(valid_rejected=float(rej(0).mean()), in_domain_rejected=float(rej(1).mean()),
                in_domain_rejected_on_topic=float(rej(1)[keep].mean()), ood_flagged=float(rej(2).mean()), each_at=q)

def task_rows(preds:dict, run:Path, test_files, ood_files, keep=None) -> dict:
    "The table of one task: every detector at the same calibrated rate, plus what kNN gets wrong"
    sets = {name: [scores(p, fs) for fs in (split_files(run, True), test_files, ood_files)] for name, p in preds.items()}
    knn = sets['knn']
    rows = {'kNN (k-th cosine to training features)': rates(*[s['score'] for s in knn], keep)[0]}
    if 'imagenet_mass' in sets:
        m = [s['score'] for s in sets['imagenet_mass']]
        rows['ImageNet mass on our rows'] = rates(*m, keep)[0]
    rows['max-softmax'] = rates(*[s['msp'] for s in knn], keep)[0]
    if 'imagenet_mass' in sets:
        for q in (0.01, Q): rows[f'kNN AND ImageNet mass (each at {q:.0%})'] = combined([s['score'] for s in knn], m, keep, q)
    _, t = rates(*[s['score'] for s in knn], keep)
    missed = [f"{f.name} ({s:.3f})" for f, s in zip(ood_files, knn[2]['score']) if s >= t]
    rejected = [f"{f.parent.name}/{f.name} ({s:.3f})" for f, s in zip(test_files, knn[1]['score']) if s < t]
    return dict(n_valid=len(knn[0]['score']), n_test=len(test_files), n_ood=len(ood_files), rows=rows,
                knn_threshold=t, knn_ood_accepted=missed, knn_in_domain_rejected=rejected,
                card=preds['knn'].card['none_of_these'])

def print_task(name, r):
    print(f"\n## {name}: validation n={r['n_valid']}, in-domain test n={r['n_test']}, ood n={r['n_ood']} "
          f"(every threshold at the {Q:.0%} quantile of the validation scores)")
    print("| detector | validation rejected | in-domain test rejected | (on-topic) | OOD flagged |")
    print("|---|---|---|---|---|")
    for k, v in r['rows'].items():
        ot = f"{v['in_domain_rejected_on_topic']:.1%}" if 'in_domain_rejected_on_topic' in v else '-'
        print(f"| {k} | {v['valid_rejected']:.1%} | {v['in_domain_rejected']:.1%} | {ot} | {v['ood_flagged']:.1%} |")
    print(f"kNN accepts these OOD photos: {r['knn_ood_accepted'] or 'none'}")
    print(f"kNN rejects these in-domain test photos: {r['knn_in_domain_rejected'] or 'none'}")

def verdict(r) -> str:
    "Which bears detector wins: the combination only if it rejects measurably fewer bears without flagging less OOD"
    rows, knn = r['rows'], r['rows']['kNN (k-th cosine to training features)']
    n = r['n_test']; best = ('kNN', knn)
    for k, v in rows.items():
        if not k.startswith('kNN AND') or v['ood_flagged'] < knn['ood_flagged']: continue
        if (knn['in_domain_rejected'] - v['in_domain_rejected']) * n > MEASURABLE: best = (k, v)
    fewer = (knn['in_domain_rejected'] - best[1]['in_domain_rejected']) * n
    return (f"winner: {best[0]}" + ('' if best[0] == 'kNN' else f" ({fewer:.0f} fewer bears_shift photos rejected)") +
            f"; a combination must reject more than {MEASURABLE} fewer of the {n} bears_shift photos at no loss of OOD flagged")

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--bears-run'); ap.add_argument('--plants-run')
    ap.add_argument('--work', default=str(ROOT/'bench'/'results'/'ood-work'))
    ap.add_argument('--out', default=str(ROOT/'bench'/'results'/'ood.json'))
    a = ap.parse_args()
    from bear_classifier.testing import shared_data
    from bear_classifier.files import utc_now
    from bear_classifier.export import export_bundle
    from bear_classifier.inference import Predictor
    bears, shift, ood, plants = (shared_data(p) for p in ('bears', 'bears_shift', 'ood', 'plants'))
    if None in (bears, shift, ood, plants): sys.exit("bench/ood.py: ../shared/data (bears, bears_shift, ood, plants) not found")
    work = Path(a.work); work.mkdir(parents=True, exist_ok=True)
    p80, p20 = split_plants(plants, work)
    t0 = time.time()
    brun = Path(a.bears_run) if a.bears_run else train(bears, work/'runs'/'bears')
    prun = Path(a.plants_run) if a.plants_run else train(p80, work/'runs'/'plants', '--imagenet-map', 'none')
    trained_s = time.time() - t0
    models = work/'models'        # trust: this bench made (or was handed) these runs itself
    ex = lambda run, name, det: Predictor.load(export_bundle(run, dest=models, name=name, detector=det, trust=True))
    ood_files, shift_files = sorted(ood.rglob('*.jpg')), sorted(shift.rglob('*.jpg'))
    keep = np.array([f"{f.parent.name}/{f.name}" not in OFF_TOPIC for f in shift_files])
    t0 = time.time()
    res = dict(bears=task_rows(dict(knn=ex(brun, 'bears-knn', 'knn'), imagenet_mass=ex(brun, 'bears-mass', 'imagenet_mass')),
                               brun, shift_files, ood_files, keep),
               plants=task_rows(dict(knn=ex(prun, 'plants-knn', 'knn')), prun, sorted(p20.rglob('*.jpg')), ood_files))
    print_task('bears (in-domain test: bears_shift)', res['bears']); print_task('plants (in-domain test: held-out 20%)', res['plants'])
    res['bears']['verdict'] = verdict(res['bears']); print('\n' + res['bears']['verdict'])
    out = dict(created=utc_now(), loadavg=os.getloadavg(), quantile=Q, seconds=dict(training=trained_s, scoring=time.time() - t0),
               runs=dict(bears=str(brun), plants=str(prun)), tasks=res)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1))
    print(f"\nwrote {a.out}")

if __name__ == '__main__': main()

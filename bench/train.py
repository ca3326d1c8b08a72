#!/usr/bin/env python
"""Benchmark: the lesson's recipe against the default recipe, side by side in one process.

Trains both on ../shared/data/bears (427 photos, seed 42 split), evaluates each on its validation
split and on ../shared/data/bears_shift (a second scrape), and compares with the zero-shot ImageNet
classifier restricted to the mapped classes (brown bear, American black bear, teddy). A third run,
the default recipe with the ImageNet prior switched off (`imagenet_map='none'`), shows how the
recipe does for labels that have no ImageNet counterpart.

Prints a table and writes bench/results/train.json. Run from the repository root:
    python bench/train.py [--skip-unmapped] [--order lesson,default]
Timings on a shared machine swing a lot: compare rows of one run only; `cpu_s` (process CPU time)
is steadier than wall time when other processes compete for the cores.
"""
import argparse, json, os, platform, sys, tempfile
from pathlib import Path

from bear_classifier.files import atomic_write, shared_data_dir, utc_now

ROOT = Path(__file__).resolve().parents[1]
SHARED = shared_data_dir()

def zero_shot(bears, shift):
    "Accuracy of the untouched ImageNet classifier rows on the same valid split and on `shift`"
    from bear_classifier.train import train_learner, evaluate, test_items
    # the default recipe's model before any training: linear head = ImageNet rows, body untouched
    learn, facts = train_learner(bears, 'default', probe=False, epochs=0, wise_alpha=None, label_smoothing=0.0, show_progress=False)
    assert facts['prior_labels'] == list(learn.dls.vocab), facts['prior_labels']
    ev = evaluate(learn, learn.dls.valid)
    items, _ = test_items(shift, learn.dls.vocab)
    tv = evaluate(learn, learn.dls.test_dl(items, with_labels=True, bs=64))
    return dict(valid=round(ev['accuracy'], 4), valid_n=ev['n'], shift=round(tv['accuracy'], 4), shift_n=tv['n'])

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--skip-unmapped', action='store_true', help='skip the run without the ImageNet prior')
    ap.add_argument('--order', default='lesson,default', help='order of the two timed recipes')
    ap.add_argument('--epochs', type=int, default=None, help='override both recipes\' epochs (smoke tests only)')
    ap.add_argument('--size', type=int, default=None, help='override both recipes\' image size (smoke tests only)')
    ap.add_argument('--out', default=str(ROOT/'bench'/'results'/'train.json'))
    a = ap.parse_args()
    if not (SHARED/'bears').is_dir(): sys.exit(f"bench/train.py: reference images not found at {SHARED}; set BEAR_SHARED_DATA")
    import torch
    from bear_classifier.core import package_versions
    from bear_classifier.train import train_run
    bears, shift = SHARED/'bears', SHARED/'bears_shift'
    runs = [(r, r, {}) for r in a.order.split(',')]
    res = dict(machine=dict(cpus=os.cpu_count(), torch_threads=torch.get_num_threads(), platform=platform.platform(),
                            loadavg_start=os.getloadavg()), versions=package_versions(),
               created=utc_now(), runs={})
    with tempfile.TemporaryDirectory() as tmp:
        def run(name, recipe, kw):
            print(f'== {name}', flush=True)
            dest = Path(tmp)/str(len(res['runs']))
            m = train_run(bears, dest, recipe=recipe, test=shift, epochs=a.epochs, size=a.size, **kw)
            cfg = json.loads((dest/'model_config.json').read_text())
            res['runs'][name] = dict(recipe=recipe, seconds=m['seconds'], cpu_seconds=m['cpu_seconds'],
                                     valid=m['valid']['accuracy'], valid_n=m['valid']['n'],
                                     shift=m['test']['accuracy'], shift_n=m['test']['n'],
                                     valid_loss=m['valid']['loss'], shift_loss=m['test']['loss'],
                                     epochs=cfg['epochs'], freeze_epochs=cfg['freeze_epochs'], wise_alpha=cfg['wise_alpha'],
                                     imagenet_map=cfg['imagenet_map'], probe_lambda=cfg.get('probe_lambda'))
        for name, recipe, kw in runs: run(name, recipe, kw)
        print('== zero-shot ImageNet classifier', flush=True)
        res['zero_shot'] = zero_shot(bears, shift)
        report(res, a.out)
        if not a.skip_unmapped:   # labels without an ImageNet counterpart: the prior switched off
            run('default, no ImageNet prior', 'default', dict(imagenet_map='none'))
            report(res, a.out)

def report(res, out):
    "Print the table and write the JSON (atomically)"
    res['machine']['loadavg_end'] = os.getloadavg()
    L, D = res['runs']['lesson'], res['runs']['default']
    res['default_vs_lesson_time'] = round(D['seconds']/L['seconds'], 3)
    res['default_vs_lesson_cpu'] = round(D['cpu_seconds']/L['cpu_seconds'], 3)
    right = lambda acc, n: round(acc*n)   # compare photos, not rounded fractions
    res['done'] = dict(beats_zero_shot_on_shift=right(D['shift'], D['shift_n']) >= right(res['zero_shot']['shift'], res['zero_shot']['shift_n']),
                       at_most_0_6x_time=res['default_vs_lesson_time'] <= 0.6)
    z = res['zero_shot']
    def frac(acc, n): return f"{acc:.3f} ({round(acc*n)}/{n})"
    print(f"\n| recipe | wall s | cpu s | valid acc | bears_shift acc |\n|---|---:|---:|---:|---:|")
    for name, r in res['runs'].items():
        print(f"| {name} | {r['seconds']:.0f} | {r['cpu_seconds']:.0f} | {frac(r['valid'], r['valid_n'])} | {frac(r['shift'], r['shift_n'])} |")
    print(f"| zero-shot ImageNet (brown bear / American black bear / teddy) | 0 | 0 | {frac(z['valid'], z['valid_n'])} | {frac(z['shift'], z['shift_n'])} |")
    print(f"\ndefault/lesson wall time {res['default_vs_lesson_time']:.2f}x, cpu time {res['default_vs_lesson_cpu']:.2f}x; "
          f"load average {res['machine']['loadavg_start'][0]:.1f} -> {res['machine']['loadavg_end'][0]:.1f} on {res['machine']['cpus']} cpus")
    print(f"one photo is {100/z['valid_n']:.1f} points on valid and {100/z['shift_n']:.1f} points on bears_shift: differences of 1-2 photos are noise")
    out = atomic_write(out, json.dumps(res, indent=2))
    print(f'wrote {out}', flush=True)

if __name__ == '__main__': main()

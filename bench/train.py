#!/usr/bin/env python
"""Benchmark: the training recipes side by side, on the bears and on two tasks ImageNet has no labels for.

Tasks (all found through `testing.shared_data`, i.e. ../shared/data):
  bears   train on bears/ (seed-42 split: 342 train, 85 valid), test on bears_shift/ (a second scrape)
  plants  5 houseplants, `imagenet_map='none'`; a fixed held-out quarter (every 4th photo of each label,
          by sorted name) is never trained or validated on
  birds   bird / forest, `imagenet_map='none'`, held-out quarter as for plants
Rows: lesson (fastbook `fine_tune(4)`), zero-shot (ImageNet's own bear rows, bears only), frozen linear
probe (the probe alone, no fine-tuning), default-v1 (the recipe before issue 17: WiSE α = 0.5), default
(α chosen on the run's validation split), the zero-shot merge lever at a few α (bears: rows in brackets), and
the default recipe on each `--backbones` (bears only).
The probe, default-v1 and default rows of a task share ONE fine-tuning run: the three recipes are the
same steps up to WiSE-FT (same seed, same probe, same epochs), so the run is done once and each recipe's
ending is applied to it. Their time columns are what each recipe spends: the probe stops after the probe,
default-v1 after fine-tuning, default adds its α choice (one validation pass per α; an upper bound, since a
real default run also skips fastai's per-epoch validation, which the shared run keeps for default-v1).

Prints ONE table and writes bench/results/train.json. Run from the repository root:
    python bench/train.py [--tasks bears,plants,birds] [--backbones lite1,lite2] [--jobs 1]
`--jobs N` runs the task groups in N processes at once (each with one torch thread): rows of one task are
always timed one after the other in one process, so compare times within a column group only. Timings on a
shared machine swing a lot; `CPU s` (process CPU time) is steadier than wall time.
"""
import argparse, copy, json, os, platform, subprocess, sys, tempfile, time
from pathlib import Path

from bear_classifier.files import atomic_write, utc_now
from bear_classifier.testing import shared_data

ROOT = Path(__file__).resolve().parents[1]
HELD_OUT_EVERY = 4     # every 4th photo of each label (sorted by name) is held out of plants/birds

def held_out_split(name, dest):
    "Symlink farms dest/train/<label>/* and dest/held_out/<label>/* of shared_data(name): a fixed split"
    src = shared_data(name)
    for d in sorted(p for p in src.iterdir() if p.is_dir()):
        for i, f in enumerate(sorted(d.glob('*.jpg'))):
            to = Path(dest)/('held_out' if i % HELD_OUT_EVERY == HELD_OUT_EVERY - 1 else 'train')/d.name/f.name
            to.parent.mkdir(parents=True, exist_ok=True); to.symlink_to(f)
    return Path(dest)/'train', Path(dest)/'held_out'

def task_data(task, tmp):
    "(train root, test folder, imagenet_map) of a task"
    if task == 'bears': return shared_data('bears'), shared_data('bears_shift'), None
    train, held = held_out_split(task, Path(tmp)/task)
    return train, held, 'none'

def scores(learn, dls_valid, test):
    "Accuracy and loss on the validation split and on the test folder"
    from bear_classifier.train import evaluate, test_items
    ev = evaluate(learn, dls_valid)
    tv = evaluate(learn, learn.dls.test_dl(test_items(test, learn.dls.vocab)[0], with_labels=True, bs=64))
    return dict(valid=round(ev['accuracy'], 4), valid_n=ev['n'], valid_loss=round(ev['nll'], 4),
                test=round(tv['accuracy'], 4), test_n=tv['n'], test_loss=round(tv['nll'], 4))

def clock(): return time.perf_counter(), time.process_time()
def since(t): return dict(seconds=round(time.perf_counter() - t[0], 1), cpu_seconds=round(time.process_time() - t[1], 1))

def one_recipe(task, root, test, imap, recipe, backbone='lite0', **over):
    "A whole `train_learner` run of `recipe`, then its scores"
    from bear_classifier.train import train_learner
    learn, facts = train_learner(root, recipe, backbone=backbone, imagenet_map=imap, show_progress=False, **over)
    return dict(recipe=recipe, backbone=backbone, seconds=facts['seconds'], cpu_seconds=facts['cpu_seconds'],
                wise_alpha=facts.get('wise_alpha'), **scores(learn, learn.dls.valid.new(shuffle=False, drop_last=False), test))

def shared_family(task, root, test, imap, **over):
    "The probe, default-v1 and default rows from one fine-tuning run (plus zero-shot where every label maps)"
    import torch
    from fastai.callback.progress import ProgressCallback
    from fastai.torch_core import set_seed
    from bear_classifier.data import bear_dataloaders
    from bear_classifier.train import (recipe_config, build_learner, apply_prior, zero_shot_head, fine_tune_recipe,
                                       wise_interpolate, choose_wise_alpha, merge_head, linear_head, RECIPES)
    assert {k: v for k, v in RECIPES['default'].items() if k not in ('wise_alpha', 'merge_prior')} == \
           {k: v for k, v in RECIPES['default-v1'].items() if k not in ('wise_alpha', 'merge_prior')}
    cfg, t = recipe_config('default', **over), clock()
    set_seed(42, reproducible=True)
    dls = bear_dataloaders(root, item_tfms=cfg['item_tfms'], size=cfg['size'], bs=cfg['bs'], seed=42, aug=cfg['aug'], min_scale=cfg['min_scale'])
    learn = build_learner(dls, cfg); learn.remove_cb(ProgressCallback)
    facts = apply_prior(learn, cfg, imap)
    t_probe, start = since(t), copy.deepcopy(learn.model.state_dict())
    fine_tune_recipe(learn, dict(cfg, wise_alpha=1.0))          # plain fine-tuning: the end point of every WiSE mix
    t_ft, end, valid = since(t), copy.deepcopy(learn.model.state_dict()), dls.valid.new(shuffle=False, drop_last=False)
    zs = zero_shot_head(dls.vocab, facts['imagenet_map'])        # ImageNet's rows when every label maps (bears), else None
    prior = zs if cfg['merge_prior'] else None
    rows = {}
    def at(alpha, merge=None):
        learn.model.load_state_dict(end); wise_interpolate(learn.model, start, alpha)
        if merge is not None: merge_head(learn.model, merge)
        return scores(learn, valid, test)
    rows['frozen linear probe'] = dict(at(0.), **t_probe, wise_alpha=0.)
    rows['default-v1'] = dict(at(0.5), **t_ft, wise_alpha=0.5)
    learn.model.load_state_dict(end); tc = clock()
    a, losses = choose_wise_alpha(learn.model, start, valid, extra=prior)
    choice = since(tc)
    rows['default'] = dict(at(a, prior), **{k: round(t_ft[k] + choice[k], 1) for k in choice}, wise_alpha=a,
                           wise_losses={str(k): round(v, 4) for k, v in losses.items()}, merged_prior=prior is not None)
    if zs is not None:        # the zero-shot classifier, and the merge lever (product of experts) at a few α
        learn.model.load_state_dict(start)
        with torch.no_grad(): linear_head(learn.model).weight.copy_(zs[0]); linear_head(learn.model).bias.copy_(zs[1])
        rows['zero-shot'] = dict(scores(learn, valid, test), seconds=0., cpu_seconds=0.)
        for alpha in sorted({0., 0.5, 1., a}): rows[f'(α={alpha:g} + zero-shot merge)'] = dict(at(alpha, zs), wise_alpha=alpha)
    return rows

def run_group(group, **over):
    "The rows of one group `task:part` (part: lesson, family, or a backbone), timed one after the other in this process"
    task, part = group.split(':')
    with tempfile.TemporaryDirectory() as tmp:
        root, test, imap = task_data(task, tmp)
        if part == 'lesson': return {'lesson': one_recipe(task, root, test, imap, 'lesson', **over)}
        if part == 'family': return shared_family(task, root, test, imap, **over)
        return {f'default, {part}': one_recipe(task, root, test, imap, 'default', part, **over)}

ORDER = ['lesson', 'zero-shot', 'frozen linear probe', 'default-v1', 'default']
TASKS = ('bears', 'plants', 'birds')

def table(res):
    "The one table: a row per recipe, wall/CPU seconds and accuracy per task"
    names = ORDER + sorted({n for g in res['groups'].values() for n in g} - set(ORDER), key=lambda n: (n.startswith('('), n))
    cell = lambda r, k: f"{r[k]:.3f} ({round(r[k]*r[k + '_n'])}/{r[k + '_n']})"
    find = lambda name, task: next((g[name] for k, g in res['groups'].items() if k.split(':')[0] == task and name in g), None)
    secs = lambda name, k: ' / '.join('-' if find(name, t) is None or k not in find(name, t) else f"{find(name, t)[k]:.0f}" for t in TASKS)
    out = ['| recipe | wall s (bears / plants / birds) | CPU s (bears / plants / birds) | bears valid | bears_shift | plants held-out | birds held-out |',
           '|---|---:|---:|---:|---:|---:|---:|']
    for n in names:
        b, p, w = (find(n, t) for t in TASKS)
        c = [cell(b, 'valid') if b else '', cell(b, 'test') if b else '', cell(p, 'test') if p else '', cell(w, 'test') if w else '']
        if any(c): out.append(f"| {n} | {secs(n, 'seconds')} | {secs(n, 'cpu_seconds')} | " + ' | '.join(c) + ' |')
    return '\n'.join(out)

def verdict(res):
    "The issue's checks: default best on every held-out column, training <= 0.6x the lesson's time"
    g, out = {}, {}
    for k, rows in res['groups'].items(): g.setdefault(k.split(':')[0], {}).update(rows)
    for t in TASKS:
        if 'default' not in g.get(t, {}) or 'lesson' not in g[t]: continue
        right = lambda r: round(r['test']*r['test_n'])
        rivals = [n for n in ('lesson', 'zero-shot', 'frozen linear probe', 'default-v1') if n in g[t]]
        out[t] = dict(default_right=right(g[t]['default']), best_rival=max(right(g[t][n]) for n in rivals),
                      default_vs_lesson_wall=round(g[t]['default']['seconds']/g[t]['lesson']['seconds'], 3),
                      default_vs_lesson_cpu=round(g[t]['default']['cpu_seconds']/g[t]['lesson']['cpu_seconds'], 3))
        out[t]['default_best_or_tied'] = out[t]['default_right'] >= out[t]['best_rival']
    return out

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--tasks', default=','.join(TASKS), help='tasks to run: bears, plants, birds')
    ap.add_argument('--backbones', default='lite1,lite2', help="backbones for extra default-recipe rows on bears ('' for none)")
    ap.add_argument('--jobs', type=int, default=1, help='task groups run at once, in separate processes')
    ap.add_argument('--out', default=str(ROOT/'bench'/'results'/'train.json'))
    ap.add_argument('--size', type=int, default=None, help="override every recipe's image size (smoke tests only)")
    ap.add_argument('--epochs', type=int, default=None, help="override every recipe's epochs (smoke tests only)")
    ap.add_argument('--deadline', type=float, default=None, help='seconds after which unfinished groups are stopped and left out')
    ap.add_argument('--group', help=argparse.SUPPRESS)        # internal: run one group, print its JSON
    a = ap.parse_args()
    backbones = [b for b in a.backbones.split(',') if b]
    if a.group:
        import torch
        if a.jobs > 1: torch.set_num_threads(1)
        print('BENCH-JSON ' + json.dumps(run_group(a.group, size=a.size, epochs=a.epochs)), flush=True); return
    if shared_data('bears') is None: sys.exit("bench/train.py: reference images not found (../shared/data); set BEAR_SHARED_DATA")
    tasks = a.tasks.split(',')   # the recipes' rows first, longest task first; the backbone rows last
    groups = [f'{t}:{p}' for t in sorted(tasks, key=['plants', 'bears', 'birds'].index) for p in ('lesson', 'family')]
    groups += [f'bears:{b}' for b in backbones if 'bears' in tasks]
    res = dict(machine=dict(cpus=os.cpu_count(), jobs=a.jobs, platform=platform.platform(), loadavg_start=os.getloadavg()),
               created=utc_now(), held_out='every %dth photo of each label, sorted by name' % HELD_OUT_EVERY, groups={})
    from bear_classifier.core import package_versions
    res['versions'] = package_versions()
    cmd = lambda g: [sys.executable, __file__, '--group', g, '--jobs', str(a.jobs)] + \
                    [x for k in ('size', 'epochs') if getattr(a, k) is not None for x in (f'--{k}', str(getattr(a, k)))]
    todo, running, t0 = list(groups), {}, time.monotonic()
    while todo or running:
        if a.deadline and time.monotonic() - t0 > a.deadline:
            for g, p in running.items(): p.kill(); print(f'== {g} stopped at the deadline', flush=True)
            res['stopped'] = sorted(running) + todo; break
        while todo and len(running) < a.jobs:
            g = todo.pop(0); print(f'== {g}', flush=True)
            running[g] = subprocess.Popen(cmd(g), stdout=subprocess.PIPE, text=True, cwd=ROOT)
        time.sleep(2)
        for g, p in list(running.items()):
            if p.poll() is None: continue
            lines = [l for l in p.stdout.read().splitlines() if l.startswith('BENCH-JSON ')]
            if p.returncode or not lines: sys.exit(f'bench/train.py: group {g} failed (exit {p.returncode})')
            res['groups'][g] = json.loads(lines[-1][len('BENCH-JSON '):]); del running[g]
            atomic_write(a.out, json.dumps(res, indent=2))     # what is done so far survives an interrupted run
            print(f'== {g} done: {res["groups"][g]}', flush=True)
    res['machine']['loadavg_end'] = os.getloadavg()
    res['verdict'], res['table'] = verdict(res), table(res)
    print('\n' + res['table'] + '\n')
    for t, v in res['verdict'].items():
        print(f"{t}: default {v['default_right']} right vs best other {v['best_rival']}; time vs lesson {v['default_vs_lesson_wall']:.2f}x wall, {v['default_vs_lesson_cpu']:.2f}x CPU")
    print(f"load average {res['machine']['loadavg_start'][0]:.1f} -> {res['machine']['loadavg_end'][0]:.1f} on {res['machine']['cpus']} cpus, {a.jobs} job(s)")
    print(f"wrote {atomic_write(a.out, json.dumps(res, indent=2))}", flush=True)

if __name__ == '__main__': main()

#!/usr/bin/env python
"""Benchmark: does the monitor cry wolf, and does it see a real shift? (issue 16)

Predicts every photo of ../shared/data/bears, bears_shift and ood ONCE with the starter model
(`Predictor.predict_batch`), then replays those answers many times as log rows through
`monitor.report_rows`, the very code `bear-monitor report` runs (one replay is also written into a
real `PredictionLog` and checked to give the same p-values through `shift_report`).

Three references, the three paths `monitor.report_rows` can take:
- `log baseline`: the starter's card has no validation figures, so the first 100 predictions of the
  stream are the reference. Stream: bears + bears_shift, shuffled.
- `card, shares only`: a card whose `validation` is `export.validation_summary` (what `bear-export`
  writes) of a random fifth of `bears` (a validation split), without `answer_counts`/`confidences`
  (an older card: counts rebuilt from shares, no confidence test); stream: the other bears +
  bears_shift, shuffled.
- `card with counts`: the card as `bear-export` writes it now, with `answer_counts` and the validation
  `confidences` (chi-square on exact counts, and the confidence test).

For each: REPLAYS in-domain streams (a false alarm = the report on the whole stream flags anything),
and REPLAYS streams that turn 30% out-of-domain after a random in-domain stretch (each later
prediction is an ood photo with probability 0.3), reported after every 10 shifted predictions; a
replay is flagged within 100 when a window holding shifted predictions raises an alert by then.
Nothing here sets the monitor's levels: they are the module's defaults.

Run from the repository root:
    python bench/monitor.py [--replays 200] [--seed 0] [--out bench/results/monitor.json]
Exits 1 when a requirement (false alarms <= 1%, flagged within 100 in >= 99%) is not met.
"""
import argparse, json, random, sys, tempfile, time
from datetime import datetime, timedelta, timezone
from pathlib import Path
import numpy as np
from scipy.stats import beta
from bear_classifier import monitor
from bear_classifier.files import atomic_write, utc_now
from bear_classifier.predlog import NONE_OF_THESE
from bear_classifier.testing import shared_data

ROOT = Path(__file__).resolve().parents[1]

SHIFT_SHARE, WITHIN, STEP, MAX_PREFIX, CARD_FRACTION = 0.3, 100, 10, 300, 0.2
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)

def predict_all(pred) -> tuple:
    "Every photo of the three sets predicted once: {set: [Prediction dict, ...]} (unreadable photos left out, counted)"
    out, bad = {}, 0
    for name in ('bears', 'bears_shift', 'ood'):
        files = sorted(p for p in shared_data(name).rglob('*') if p.suffix.lower() in ('.jpg', '.jpeg', '.png'))
        res = pred.predict_batch(files)
        out[name] = [dict(r.to_dict(), file=f'{name}/{f.relative_to(shared_data(name))}') for f, r in zip(files, res)
                     if not isinstance(r, Exception)]
        bad += len(files) - len(out[name])
    return out, bad

def as_rows(preds:list) -> list:
    "Log-like rows (what `PredictionLog.rows` returns, as far as the monitor reads it), one a minute"
    return [dict(label=p['label'], probability=p['probability'], in_domain=int(p['in_domain']), feedback=None, reviewer=None,
                 ts=utc_now(T0 + timedelta(minutes=i)), shifted=p.get('shifted', False)) for i, p in enumerate(preds)]

MODES = ('log baseline', 'card, shares only', 'card with counts')

def card_for(starter_card:dict, valid:list, counts:bool) -> dict:
    """The starter's card with the `validation` section `bear-export` writes for predictions `valid`: with `counts` as it
    is (`answer_counts` and `confidences` are filled in only for an export that predates them), else without those two"""
    from bear_classifier.export import validation_summary
    from bear_classifier.inference import Prediction
    fields = Prediction.__dataclass_fields__
    v = validation_summary([Prediction(**{k: p[k] for k in fields}) for p in valid])
    if counts:
        ans = [p['label'] if p['in_domain'] else NONE_OF_THESE for p in valid]
        v.setdefault('answer_counts', {k: ans.count(k) for k in [*starter_card['vocab'], NONE_OF_THESE]})
        v.setdefault('confidences', sorted(round(p['probability'], 4) for p in valid))
    else: v = {k: x for k, x in v.items() if k not in ('answer_counts', 'confidences')}
    return dict(starter_card, validation=v)

def setup(mode:str, preds:dict, card0:dict, rng) -> tuple:
    "(card, in-domain stream pool) of one replay"
    if mode == 'log baseline':
        pool = preds['bears'] + preds['bears_shift']; rng.shuffle(pool)
        return card0, pool
    bears = preds['bears'][:]; rng.shuffle(bears)
    k = round(len(bears) * CARD_FRACTION)
    pool = bears[k:] + preds['bears_shift']; rng.shuffle(pool)
    return card_for(card0, bears[:k], counts=mode == 'card with counts'), pool

def fired(rep) -> list:
    "Names of the tests that raised an alert in report `rep`"
    return sorted({k for *_, f, a in rep.windows if a for k, t in f['tests'].items() if t['p_adj'] <= rep.alpha})

def in_domain_replay(mode, preds, card0, rng) -> dict:
    card, pool = setup(mode, preds, card0, rng)
    rep = monitor.report_rows(as_rows(pool), card)
    return dict(flagged=rep.alert, tests=fired(rep), n_tests=rep.n_tests, windows=len(rep.windows),
                min_p_adj=min((t['p_adj'] for *_, f, _ in rep.windows for t in f['tests'].values()), default=1.0))

def shifted_stream(pool:list, ood:list, prefix:int, rng) -> list:
    "`prefix` in-domain predictions, then `WITHIN` of which each is an ood photo with probability `SHIFT_SHARE`"
    ood = ood[:]; rng.shuffle(ood)
    rest, o = iter(pool[prefix:]), iter(ood)
    return pool[:prefix] + [dict(next(o), shifted=True) if rng.random() < SHIFT_SHARE else next(rest) for _ in range(WITHIN)]

def shifted_replay(mode, preds, card0, rng) -> dict:
    "Report after every `STEP` shifted predictions; the delay is the first report where a window holding shifted rows alerts"
    card, pool = setup(mode, preds, card0, rng)
    lead = 0 if card.get('validation') else 100      # without validation figures the stream's first 100 are the reference
    prefix = lead + rng.randint(0, MAX_PREFIX)
    rows = as_rows(shifted_stream(pool, preds['ood'], prefix, rng))
    at = {r['ts']: i for i, r in enumerate(rows)}
    out = dict(delay=None, prefix=prefix - lead, ood_in_100=sum(r['shifted'] for r in rows), tests=[], stale_alarm=False)
    for k in range(STEP, WITHIN + 1, STEP):
        rep = monitor.report_rows(rows[:prefix + k], card)
        hit = [any(r['shifted'] for r in rows[at[s]:at[e] + 1]) for s, e, f, a in rep.windows if a]
        if any(hit): return dict(out, delay=k, tests=fired(rep), stale_alarm=not all(hit))
    return out

def same_through_the_log(preds:dict, card0:dict) -> bool:
    "One replay written into a real PredictionLog: `shift_report` gives the p-values `report_rows` gives"
    from bear_classifier.predlog import PredictionLog
    answers = (preds['bears'] + preds['bears_shift'])[:300] + preds['ood'][:60]
    rows = as_rows(answers)
    with tempfile.TemporaryDirectory() as d:
        log = PredictionLog(Path(d)/'log.sqlite')
        for r, p in zip(rows, answers): log.log(p, 'bench', ts=r['ts'])
        a, b = monitor.shift_report(log, card0), monitor.report_rows(rows, card0)
        log.close()
    ps = lambda rep: [round(t['p'], 12) for *_, f, _ in rep.windows for t in f['tests'].values()]
    return ps(a) == ps(b) and a.alert == b.alert

def upper95(k:int, n:int) -> float:
    "One-sided 95% Clopper-Pearson upper bound of a rate seen k times in n"
    return 1.0 if k == n else float(beta.ppf(.95, k + 1, n - k))

def lower95(k:int, n:int) -> float:
    "One-sided 95% Clopper-Pearson lower bound of a rate seen k times in n"
    return 0.0 if k == 0 else float(beta.ppf(.05, k, n - k + 1))

def run_mode(mode:str, preds:dict, card0:dict, replays:int, seed:int) -> dict:
    "The in-domain and the shifted replays of one reference mode, summarised"
    rng = random.Random(f'{seed}-{mode}')
    ind = [in_domain_replay(mode, preds, card0, rng) for _ in range(replays)]
    sh = [shifted_replay(mode, preds, card0, rng) for _ in range(replays)]
    fa, det = sum(r['flagged'] for r in ind), sum(r['delay'] is not None for r in sh)
    delays = [r['delay'] for r in sh if r['delay'] is not None]
    count = lambda rs: {t: sum(t in r['tests'] for r in rs) for t in sorted({t for r in rs for t in r['tests']})}
    return dict(mode=mode, replays=replays,
                in_domain=dict(false_alarms=fa, rate=fa / replays, upper95=upper95(fa, replays), by_test=count(ind),
                               tests_per_report=float(np.mean([r['n_tests'] for r in ind])),
                               median_min_p_adj=float(np.median([r['min_p_adj'] for r in ind]))),
                shifted=dict(flagged_within_100=det, rate=det / replays, lower95=lower95(det, replays), by_test=count(sh),
                             delay_median=float(np.median(delays)) if delays else None,
                             delay_p90=float(np.quantile(delays, .9)) if delays else None, delay_max=max(delays, default=None),
                             stale_alarms=sum(r['stale_alarm'] for r in sh),
                             ood_in_100_min=min(r['ood_in_100'] for r in sh), missed=[r for r in sh if r['delay'] is None]))

def table(res:dict) -> str:
    "The printed table"
    lines = [f"{'reference':<17} {'stream':<34} {'replays':>7} {'flagged':>7} {'rate':>7} {'95% bound':>10} {'delay med/p90/max':>18}  verdict"]
    for m in res['modes']:
        i, s = m['in_domain'], m['shifted']
        lines.append(f"{m['mode']:<17} {'in-domain, shuffled':<34} {m['replays']:>7} {i['false_alarms']:>7} {i['rate']:>7.1%} "
                     f"{'<= ' + format(i['upper95'], '.1%'):>10} {'':>18}  {'PASS' if i['rate'] <= .01 else 'FAIL'} (false alarms <= 1%)")
        d = f"{s['delay_median']:.0f}/{s['delay_p90']:.0f}/{s['delay_max']}" if s['delay_median'] is not None else '-'
        lines.append(f"{'':<17} {'turns 30% ood: flagged within 100':<34} {m['replays']:>7} {s['flagged_within_100']:>7} {s['rate']:>7.1%} "
                     f"{'>= ' + format(s['lower95'], '.1%'):>10} {d:>18}  {'PASS' if s['rate'] >= .99 else 'FAIL'} (>= 99%)")
    return '\n'.join(lines)

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--replays', type=int, default=200)
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--out', default=str(ROOT/'bench'/'results'/'monitor.json'))
    a = ap.parse_args(argv)
    missing = [n for n in ('bears', 'bears_shift', 'ood') if shared_data(n) is None]
    if missing: print(f"bench/monitor.py: skipped: ../shared/data/{', '.join(missing)} not found (reference photos are not part of a clone)"); return
    from bear_classifier.inference import Predictor
    from bear_classifier.testing import starter_bundle
    t = time.time()
    pred = Predictor.load(starter_bundle())
    preds, bad = predict_all(pred)
    t_pred = time.time() - t
    t = time.time()
    modes = [run_mode(m, preds, pred.card, a.replays, a.seed) for m in MODES]
    res = dict(model=dict(name=pred.name, kind=pred.kind, backend=pred.backend), photos={k: len(v) for k, v in preds.items()}, unreadable=bad,
               settings=dict(window=monitor.WINDOW, alpha=monitor.ALPHA, correction='Holm over all tests of a report',
                             min_window=monitor.MIN_WINDOW, min_expected=monitor.MIN_EXPECTED, baseline=100,
                             shift_share=SHIFT_SHARE, within=WITHIN, step=STEP, max_prefix=MAX_PREFIX, card_fraction=CARD_FRACTION,
                             seed=a.seed), same_through_the_log=same_through_the_log(preds, pred.card), modes=modes,
               seconds=dict(predict=round(t_pred, 1), replays=round(time.time() - t, 1)))
    print(f"monitor bench: {pred.name} ({pred.backend}); photos {res['photos']}; window {monitor.WINDOW}, "
          f"Holm at family level {monitor.ALPHA:g} per report, min expected count {monitor.MIN_EXPECTED}, min window {monitor.MIN_WINDOW}")
    print(table(res))
    print(f"same p-values through a real PredictionLog: {res['same_through_the_log']}; predicting {res['seconds']['predict']} s, "
          f"replays {res['seconds']['replays']} s")
    res['passed'] = all(m['in_domain']['rate'] <= .01 and m['shifted']['rate'] >= .99 for m in modes)
    atomic_write(Path(a.out), json.dumps(res, indent=1, default=str) + '\n')
    print(f'written: {a.out}')
    if not res['passed']: sys.exit('bench/monitor.py: a requirement of issue 16 is not met (see FAIL above)')

if __name__ == '__main__':
    main()

"""The domain-shift report: its statistics against known values, its false-alarm rate on stationary streams, its alarm on
shifted ones, the CLI's exit status, and a replay through the real predictor."""
import math, random, subprocess, sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
import pytest
from scipy import stats
from bear_classifier.files import utc_now
from bear_classifier.predlog import NONE_OF_THESE, PredictionLog, row_answer
from bear_classifier.monitor import (ALPHA, confidence_test, excess_test, holm, merge_sparse, mix_test, report_rows,
                                     shift_report)

LABELS = ['black', 'grizzly', 'teddy']
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)

def _row(label, p=.95, ind=True): return {'label': label, 'probability': p, 'probs': {label: p}, 'in_domain': ind}

def _draw(rng, n, nab=.02, mix=(.33, .33, .34), conf=(.9, 1.0)):
    "n log-like answers: a share `nab` out of domain (low confidence), the rest labels drawn from `mix`"
    out = []
    for _ in range(n):
        ood = rng.random() < nab
        out.append(dict(label=rng.choices(LABELS, mix)[0], in_domain=not ood,
                        probability=rng.uniform(.4, .8) if ood else rng.uniform(*conf)))
    return out

def _rows(answers, t0=0):
    return [dict(a, feedback=None, reviewer=None, ts=utc_now(T0 + timedelta(minutes=t0 + i))) for i, a in enumerate(answers)]

def _card(ref):
    "A card whose validation section holds the counts and confidences of answers `ref`"
    counts = {k: sum(r['in_domain'] and r['label'] == k for r in ref) for k in LABELS} | {NONE_OF_THESE: sum(not r['in_domain'] for r in ref)}
    return {'vocab': LABELS, 'validation': {'n': len(ref), 'answer_counts': counts,
                                            'confidences': sorted(round(r['probability'], 4) for r in ref)}}

# --- each statistic against a known value

def test_chi_square_of_the_answer_mix():
    t = mix_test({'a': 10, 'b': 20}, {'a': 20, 'b': 10})
    assert math.isclose(t['stat'], 20/3) and math.isclose(t['p'], math.erfc(math.sqrt(20/3/2)))   # chi2(1) tail
    ref, now = {'a': 40, 'b': 35, 'c': 25}, {'a': 20, 'b': 30, 'c': 50}
    chi2, p, dof, _ = stats.chi2_contingency([[40, 35, 25], [20, 30, 50]], correction=False)
    t = mix_test(ref, now)
    assert math.isclose(t['p'], p) and math.isclose(t['stat'], chi2) and t['dof'] == dof == 2
    assert t['what'] == 'c 50 of 100, expected 25.0'

def test_sparse_answers_are_merged_until_the_expected_count_is_reached():
    table = {'a': (60, 50), 'b': (38, 46), NONE_OF_THESE: (2, 4), 'c': (0, 0)}
    cols = merge_sparse(table)
    assert cols == {'a': (60, 50), f'{NONE_OF_THESE}+b': (40, 50)}     # 'c' never seen: dropped
    assert min(sum(v) for v in cols.values()) * 100 / 200 >= 5
    assert len(cols) == 2 and mix_test({k: v[0] for k, v in table.items()}, {k: v[1] for k, v in table.items()})['dof'] == 1

def test_exact_test_of_the_share_of_not_a_bear():
    t = excess_test(7, 100, 2, 100)
    assert math.isclose(t['p'], stats.hypergeom.sf(6, 200, 9, 100))     # upper tail of the hypergeometric
    assert math.isclose(t['p'], stats.fisher_exact([[7, 93], [2, 98]], alternative='greater')[1])
    assert (t['observed'], t['expected'], t['what']) == (7, 2.0, '7 of 100, expected 2.0')
    assert excess_test(0, 100, 5, 100)['p'] == 1.0
    # the false alarm: 7 "not a bear" in 100 against a reference of 2 in 100 is not evidence at this level
    assert t['p'] > ALPHA

def test_mann_whitney_of_the_confidences():
    t = confidence_test([.1, .2, .3], [.4, .5, .6])
    assert math.isclose(t['p'], stats.norm.cdf((0 - 4.5 + .5) / math.sqrt(3*3*7/12)))   # U=0, continuity-corrected
    rng = random.Random(0)
    x, y = [rng.random() for _ in range(80)], [rng.random() + .1 for _ in range(90)]
    assert math.isclose(confidence_test(x, y)['p'], stats.mannwhitneyu(x, y, alternative='less', method='asymptotic').pvalue)

def test_holm():
    assert holm([.01, .04, .03]) == pytest.approx([.03, .06, .06])
    assert holm([.5, .001]) == pytest.approx([.5, .002]) and holm([]) == []

# --- the false-alarm rate and the alarm

def test_stationary_streams_raise_no_alarm_and_shifted_ones_do():
    "100 stationary synthetic streams, each with its own reference: no alarm (the level is 1 in 1000 per report)"
    rng = random.Random(0)
    alarms, caught = 0, 0
    for _ in range(100):
        card = _card(_draw(rng, 100))
        stream = _rows(_draw(rng, 300))
        alarms += report_rows(stream, card).alert
        shifted = _rows(_draw(rng, 100, nab=.3), t0=300)
        rep = report_rows(stream + shifted, card)
        caught += rep.windows[-1][3] != [] and not any(a for *_, a in rep.windows[:-1])
    assert alarms == 0 and caught >= 99

def test_report_alarms_only_on_the_shifted_phase(tmp_path):
    log = PredictionLog(tmp_path/'log.sqlite')
    rng = random.Random(1)
    card = _card(_draw(rng, 150))
    t = T0
    for a in _draw(rng, 300): log.log(a | {'probs': {}}, 'replay', ts=utc_now(t)); t += timedelta(minutes=1)
    cut = utc_now(t)
    for a in _draw(rng, 300, nab=.5, mix=(.6, .1, .3), conf=(.5, .9)):
        log.log(a | {'probs': {}}, 'replay', ts=utc_now(t)); t += timedelta(minutes=1)
    rep = shift_report(log, card, window=100)
    assert [bool(a) for s, e, f, a in rep.windows] == [False]*3 + [True]*3, rep.summary()
    assert all(s >= cut for s, e, f, a in rep.windows if a)
    assert set(rep.windows[-1][2]['tests']) == {'answer mix', 'none of these', 'confidence'} and rep.n_tests == 18
    text = rep.summary()
    assert 'Holm over 18 tests at family level 0.001' in text and text.endswith('verdict: SHIFT in 3 of 6 windows')
    # feedback errors appear in the figures; with a baseline from the log they are tested too
    last = log.rows()[-10:]
    for r in last: log.feedback(r['id'], 'black')
    f = shift_report(log, card, window=100).windows[-1][2]
    assert (f['feedback_n'], f['feedback_errors']) == (10, sum(row_answer(r) != 'black' for r in last))
    assert 'feedback errors' not in f['tests']          # the card has no feedback to compare with

def test_a_card_with_shares_only_still_gives_a_reference():
    "Cards written before bear-export stored counts: counts rebuilt from n and the shares, no confidence test"
    rng = random.Random(2)
    card = {'vocab': LABELS, 'validation': {'n': 100, 'label_mix': dict(zip(LABELS, (.33, .33, .34))),
                                            'in_domain_rate': .98, 'mean_confidence': .95}}
    rep = report_rows(_rows(_draw(rng, 200)), card)
    assert not rep.alert and 'counts rebuilt from the shares' in rep.reference_source
    assert set(rep.windows[0][2]['tests']) == {'answer mix', 'none of these'}

# --- the command line

def _bear_monitor(*args, cwd):
    return subprocess.run([Path(sys.executable).parent/'bear-monitor', *map(str, args)], capture_output=True, text=True, cwd=cwd)

def test_bear_monitor_cli(tmp_path):
    r = _bear_monitor('report', '--db', tmp_path/'none.sqlite', cwd=tmp_path)
    assert r.returncode != 0 and r.stderr.strip().startswith('bear-monitor: no prediction log at')
    log = PredictionLog(tmp_path/'log.sqlite')
    for i in range(300): log.log(_row(LABELS[i % 3], .9 + (i % 7)/100), 'cli')
    args = ['report', '--db', log.path, '--model', tmp_path/'nomodel', '--out', tmp_path/'mon']
    r = _bear_monitor(*args, cwd=tmp_path)                  # stationary: no shift, status 0
    assert r.returncode == 0, r.stdout + r.stderr
    assert 'verdict: no shift: smallest adjusted p-value' in r.stdout and 'first 100 logged predictions' in r.stdout
    for i in range(100): log.log(_row('teddy', .5, False), 'cli')
    r = _bear_monitor(*args, cwd=tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr           # the shift is flagged by the exit status
    assert 'SHIFT' in r.stdout and (tmp_path/'mon'/'shift.png').exists()
    assert (tmp_path/'mon'/'summary.txt').read_text().splitlines()[-1] == 'verdict: SHIFT in 1 of 3 windows'
    r = _bear_monitor('report', '--db', log.path, '--window', 10, cwd=tmp_path)
    assert r.returncode != 0 and 'need --window >= 30' in r.stderr

# --- the real predictor

def test_replay_through_the_real_predictor(shared_data, tmp_path):
    "Replay the training photos, then second-source bears mixed with other things: the alert fires on the second phase only"
    from bear_classifier.inference import Predictor
    from bear_classifier.monitor import replay
    from bear_classifier.testing import starter_bundle
    pred = Predictor.load(starter_bundle())
    log = PredictionLog(tmp_path/'log.sqlite')
    rng = random.Random(0)
    phase1 = sorted((shared_data/'bears').rglob('*.jpg')); rng.shuffle(phase1)
    phase2 = sorted((shared_data/'bears_shift').rglob('*.jpg'))[:50] + sorted((shared_data/'ood').glob('*.jpg'))[:50]
    rng.shuffle(phase2)
    t = replay(log, pred, phase1[:150], T0)
    replay(log, pred, phase2, t)
    rep = shift_report(log, pred.card, window=50, baseline=50)      # the starter's card has no validation figures
    flags = [(s >= utc_now(t), bool(a)) for s, e, f, a in rep.windows]
    assert flags == [(False, False)]*2 + [(True, True)]*2, rep.summary()

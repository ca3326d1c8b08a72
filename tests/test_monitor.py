"The domain-shift report's alarm: on a synthetic log, through the CLI, and on a replay through the real predictor."
import random, subprocess, sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
import pytest
from bear_classifier.files import utc_now
from bear_classifier.predlog import PredictionLog
from bear_classifier.monitor import shift_report

def _row(label, p=.95, ind=True): return {'label': label, 'probability': p, 'probs': {label: p}, 'in_domain': ind}

def test_report_alarms_only_on_the_shifted_phase(tmp_path):
    log = PredictionLog(tmp_path/'log.sqlite')
    rng = random.Random(0)
    t = datetime(2026, 1, 1, tzinfo=timezone.utc)
    for i in range(300):   # like the validation set: balanced, confident, in domain
        log.log(_row(rng.choice(['grizzly', 'black', 'teddy']), .9 + .1*rng.random()), 'replay', ts=utc_now(t)); t += timedelta(minutes=1)
    cut = utc_now(t)
    for i in range(300):   # people start sending other things
        ood = rng.random() < .5
        log.log(_row(rng.choice(['grizzly', 'teddy']), .5 + .4*rng.random(), not ood), 'replay', ts=utc_now(t)); t += timedelta(minutes=1)
    card = {'vocab': ['black', 'grizzly', 'teddy'],
            'validation': {'label_mix': {'grizzly': .34, 'black': .33, 'teddy': .33, 'not_a_bear': 0.0},
                           'mean_confidence': .95, 'not_a_bear_share': 0.0}}
    rep = shift_report(log, card, window=100)
    assert [bool(a) for s, e, f, a in rep.windows] == [False]*3 + [True]*3
    assert all(s >= cut for s, e, f, a in rep.windows if a)
    # feedback errors and reviewer agreement appear in the figures
    ids = [r['id'] for r in log.rows()[-10:]]
    for i in ids: log.feedback(i, 'black')
    f = shift_report(log, card, window=100).windows[-1][2]
    assert f['feedback_n'] == 10 and f['feedback_error_rate'] == 1.0

def test_bear_monitor_cli(tmp_path):
    bin_ = Path(sys.executable).parent
    r = subprocess.run([bin_/'bear-monitor', 'report', '--db', str(tmp_path/'none.sqlite')], capture_output=True, text=True)
    assert r.returncode != 0 and r.stderr.strip().startswith('bear-monitor: no prediction log at')
    log = PredictionLog(tmp_path/'log.sqlite')
    for i in range(200): log.log(_row('grizzly'), 'cli')
    for i in range(100): log.log(_row('teddy', .5, False), 'cli')
    r = subprocess.run([bin_/'bear-monitor', 'report', '--db', str(log.path), '--model', str(tmp_path/'nomodel'),
                        '--out', str(tmp_path/'mon')], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr        # the shift is flagged by the exit status
    assert 'SHIFT' in r.stdout and (tmp_path/'mon'/'shift.png').exists() and (tmp_path/'mon'/'summary.txt').exists()

def test_replay_through_the_real_predictor(shared_data, tmp_path):
    "Replay the training photos, then second-source bears mixed with other things: the alert fires on the second phase only"
    from bear_classifier.inference import Predictor
    from bear_classifier.monitor import replay
    from bear_classifier.testing import starter_bundle
    pred = Predictor.load(starter_bundle())
    log = PredictionLog(tmp_path/'log.sqlite')
    rng = random.Random(0)
    phase1 = sorted((shared_data/'bears').rglob('*.jpg')); rng.shuffle(phase1)
    phase2 = sorted((shared_data/'bears_shift').rglob('*.jpg'))[:60] + sorted((shared_data/'ood').glob('*.jpg'))[:60]
    rng.shuffle(phase2)
    t = replay(log, pred, phase1[:150], datetime(2026, 1, 1, tzinfo=timezone.utc))
    replay(log, pred, phase2, t)
    rep = shift_report(log, pred.card, window=50, baseline=50)
    flags = [(s >= utc_now(t), bool(a)) for s, e, f, a in rep.windows]
    assert flags == [(False, False)]*2 + [(True, True)]*(len(flags)-2), rep.summary()

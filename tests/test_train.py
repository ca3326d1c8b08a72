"""A small real training run: the run folder is complete, metrics.json has its documented fields,
and the model learned the training classes (no ImageNet prior, so the head must be learned)."""
import json, shutil, subprocess, sys
from pathlib import Path
import pytest

def small_copy(src:Path, dest:Path, n:int) -> Path:
    "The first `n` images of each label folder of `src` copied to `dest`"
    for d in sorted(p for p in src.iterdir() if p.is_dir()):
        (dest/d.name).mkdir(parents=True)
        for f in sorted(d.glob('*.jpg'))[:n]: shutil.copy(f, dest/d.name/f.name)
    return dest

@pytest.fixture(scope='module')
def small_run(tmp_path_factory):
    from bear_classifier.testing import require_shared_data
    from bear_classifier.train import train_run
    shared_data = require_shared_data('bears').parent
    tmp = tmp_path_factory.mktemp('train')
    root = small_copy(shared_data/'bears', tmp/'bears', 10)
    test = small_copy(shared_data/'bears_shift', tmp/'shift', 5)
    (test/'panda').mkdir(); shutil.copy(next((shared_data/'ood').glob('*.jpg')), test/'panda'/'x.jpg')  # a label the model does not know
    out = tmp/'runs'/'small'
    # imagenet_map='none': no head starts from ImageNet rows, so accuracy above chance means the probe and fine-tuning learned
    metrics = train_run(root, out, recipe='default', test=test, imagenet_map='none', epochs=1, size=128, bs=8, show_progress=False)
    return out, metrics

def test_run_folder_is_complete(small_run):
    out, _ = small_run
    assert sorted(p.name for p in out.iterdir()) == ['export.pkl', 'model_config.json', 'report', 'split.csv']
    for name in ('metrics.json', 'per_class.csv', 'confusion_matrix.png', 'top_losses.png', 'show_batch.png', 'augmentation.png',
                 'confusion_matrix_test.png', 'top_losses_test.png'):
        assert (out/'report'/name).stat().st_size > 0, name
    assert not [p for p in out.parent.iterdir() if p.name.startswith('.')], 'temporary folders left behind'

def test_metrics_json_fields(small_run):
    out, metrics = small_run
    m = json.loads((out/'report'/'metrics.json').read_text())
    assert m == json.loads(json.dumps(metrics))
    for k in ('recipe', 'seed', 'epochs', 'seconds', 'cpu_seconds', 'valid', 'test', 'images', 'versions'):
        assert k in m, k
    assert m['recipe'] == 'default' and m['seed'] == 42 and m['epochs'] == 1 and m['seconds'] > 0
    for split in ('valid', 'test'):
        assert set(m[split]) >= {'accuracy', 'loss', 'n'} and 0 <= m[split]['accuracy'] <= 1 and m[split]['loss'] >= 0
    assert m['images']['train'] + m['images']['valid'] == 30 and m['images']['test'] == 15
    assert m['test']['skipped_labels'] == {'panda': 1}
    assert set(m['versions']) >= {'torch', 'fastai', 'timm', 'bear_classifier'}
    cfg = json.loads((out/'model_config.json').read_text())
    assert cfg['vocab'] == ['black', 'grizzly', 'teddy'] and cfg['n_out'] == 3 and cfg['imagenet_map'] == {} and cfg['imagenet_prior'] is False
    from bear_classifier.train import WISE_ALPHAS
    # the default recipe chose WiSE's alpha on its validation split; nothing maps to ImageNet, so nothing was merged
    assert cfg['wise_setting'] == 'auto' and cfg['wise_alpha'] in WISE_ALPHAS and cfg['merged_prior'] is False
    assert set(m['recipe_facts']['wise_losses']) == {str(a) for a in WISE_ALPHAS}
    rows = (out/'report'/'per_class.csv').read_text().splitlines()
    assert rows[0] == 'split,label,precision,recall,f1,support' and len(rows) == 1 + 3 + 3

def test_learned_above_chance(small_run):
    _, m = small_run
    # chance is 1/3; 15 second-source photos: 0.6 needs 9 right
    assert m['test']['accuracy'] >= 0.6, m['test']

def test_split_csv(small_run):
    import csv
    out, _ = small_run
    rows = list(csv.DictReader(open(out/'split.csv')))
    assert len(rows) == 30 and {r['is_valid'] for r in rows} == {'0', '1'}
    assert all(Path(r['file']).is_absolute() and Path(r['file']).parent.name == r['label'] for r in rows)

def test_cli_errors_are_one_line(tmp_path):
    exe = Path(sys.executable).with_name('bear-train')
    r = subprocess.run([str(exe), str(tmp_path/'missing')], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]    # earlier lines, if any, are library warnings at import
    assert last.startswith('bear-train: ') and 'is not a folder' in last and 'Traceback' not in r.stderr, r.stderr

def test_recipes():
    from bear_classifier.train import RECIPES, recipe_config
    assert set(RECIPES) == {'lesson', 'default', 'default-v1'}
    assert recipe_config('default-v1')['wise_alpha'] == 0.5 and recipe_config('default')['wise_alpha'] == 'auto'
    assert not recipe_config('default')['merge_prior']     # the zero-shot merge is a measured option, off until measured
    # default and default-v1 differ only in how they end (the bench shares one fine-tuning run between them)
    same = lambda r: {k: v for k, v in RECIPES[r].items() if k not in ('wise_alpha', 'merge_prior')}
    assert same('default') == same('default-v1')

def test_bad_wise_alpha_is_one_line(tmp_path):
    from bear_classifier.train import bear_train
    with pytest.raises(SystemExit, match='bear-train: --wise-alpha takes a number from 0 to 1 or auto'):
        bear_train(str(tmp_path), wise_alpha='half')

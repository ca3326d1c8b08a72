"The offline backbone from the command line, in a fresh process with an empty cache."
import os, subprocess, sys
from pathlib import Path
import pytest

BIN = Path(sys.executable).parent

def test_bear_backbone_converts_into_an_empty_cache(tmp_path):
    env = {**os.environ, 'BEAR_CACHE': str(tmp_path)}
    out = subprocess.run([BIN/'bear-backbone'], env=env, capture_output=True, text=True, check=True).stdout
    files = list(tmp_path.glob('tf_efficientnet_lite0-*.safetensors'))
    assert len(files) == 1 and str(files[0]) in out and 'sha256=' in out
    assert not list(tmp_path.glob('*.tmp')), 'no temporary file may be left behind'
    # a second run reuses the cached file
    again = subprocess.run([BIN/'bear-backbone'], env=env, capture_output=True, text=True, check=True).stdout
    assert again == out

def test_unknown_backbone_is_one_clear_line(tmp_path):
    r = subprocess.run([BIN/'bear-backbone', '--name', 'resnet9000'], capture_output=True, text=True,
                       env={**os.environ, 'BEAR_CACHE': str(tmp_path)})
    assert r.returncode != 0
    assert r.stderr.strip().splitlines() == ["bear-backbone: unknown backbone 'resnet9000'; choose one of lite0, lite1, lite2"]

def test_mapping_refuses_a_wrong_checkpoint():
    import torch
    from bear_classifier.core import map_checkpoint, BackboneError, create_backbone
    dst = create_backbone(pretrained=False).state_dict()
    src = {f'x.{k}': v.clone() for k, v in dst.items()}
    k = next(k for k in src if k.endswith('conv_head.weight'))
    src[k] = torch.zeros(10, 10, 1, 1)
    with pytest.raises(BackboneError, match='does not fit'): map_checkpoint(src, dst)

"""demo/image_demo.py on generated images with a checkpoint saved by the test."""
import importlib.util
import json
import os.path as osp

import cv2
import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmseg.registry import MODELS

from dtop.datasets import DEMO_CLASSES, DEMO_PALETTE
from dtop.datasets.demo_generator import generate_scene

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
PRUNE_CFG = osp.join(ROOT, 'configs/demo/dtop_segvit_vit-t16-8l_1xb8-500_demo-128x128.py')


def _load_demo_module():
    spec = importlib.util.spec_from_file_location('image_demo',
                                                  osp.join(ROOT, 'demo/image_demo.py'))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    """Randomly initialised demo model saved as an mmengine-style checkpoint."""
    torch.manual_seed(0)
    cfg = Config.fromfile(PRUNE_CFG)
    model = MODELS.build(cfg.model)
    model.init_weights()
    path = tmp_path_factory.mktemp('ckpt') / 'demo.pth'
    torch.save(dict(state_dict=model.state_dict(),
                    meta=dict(dataset_meta=dict(classes=DEMO_CLASSES,
                                                palette=[list(c) for c in DEMO_PALETTE]))),
               str(path))
    return str(path)


def _write_image(path, h, w, seed=0):
    img, _ = generate_scene(np.random.default_rng(seed), h, w)
    cv2.imwrite(str(path), img[..., ::-1])
    return str(path)


@pytest.mark.parametrize('h,w', [(150, 220), (96, 80)])
def test_image_demo_any_size(tmp_path, checkpoint, h, w):
    demo = _load_demo_module()
    img = _write_image(tmp_path / 'scene.jpg', h, w)
    out = tmp_path / 'out' / 'scene_dtop.png'
    # An untrained model is rarely confident: a low p0 makes tokens exit.
    res = demo.main([img, PRUNE_CFG, checkpoint, '--out-file', str(out), '--threshold', '0.2',
                     '--device', 'cpu', '--out-json', str(tmp_path / 'r.json')])
    drawn = cv2.imread(str(out))
    assert drawn is not None
    # prediction | gap | exit map, plus title and legend strips.
    assert drawn.shape[1] == 2 * w + 4 and drawn.shape[0] > h
    assert res['shape'] == [h, w]
    n_win_h = max(h - 128 + 95, 0) // 96 + 1
    n_win_w = max(w - 128 + 95, 0) // 96 + 1
    assert res['num_crops'] == n_win_h * n_win_w
    assert sum(res['exit_pct']) == pytest.approx(100.0)
    assert res['exit_pct'][0] > 0, 'p0 = 0.2 should let tokens exit early'
    assert res['gflops'] < res['gflops_dense_allheads']
    assert res['gflops_noaux'] < res['gflops_dense']
    assert res['reduction_pct'] == pytest.approx(100 * (1 - res['gflops'] / res['gflops_dense']))
    with open(tmp_path / 'r.json') as f:
        assert json.load(f)['num_crops'] == res['num_crops']


def test_image_demo_without_pruning_and_max_side(tmp_path, checkpoint, capsys):
    demo = _load_demo_module()
    img = _write_image(tmp_path / 'big.jpg', 300, 420, seed=3)
    out = tmp_path / 'big_dtop.png'
    res = demo.main([img, PRUNE_CFG, checkpoint, '--out-file', str(out), '--threshold', '1.0',
                     '--max-side', '200', '--device', 'cpu'])
    assert res['shape'] == [143, 200]
    assert res['exit_pct'][:-1] == [0.0, 0.0] and res['exit_pct'][-1] == pytest.approx(100)
    assert res['gflops'] == pytest.approx(res['gflops_dense_allheads'])
    assert 'GFLOPs:' in capsys.readouterr().out


def test_image_demo_errors(tmp_path, checkpoint):
    demo = _load_demo_module()
    with pytest.raises(FileNotFoundError, match='image not found'):
        demo.main([str(tmp_path / 'none.jpg'), PRUNE_CFG, checkpoint])
    img = _write_image(tmp_path / 'x.jpg', 64, 64)
    with pytest.raises(FileNotFoundError, match='checkpoint not found'):
        demo.main([img, PRUNE_CFG, str(tmp_path / 'none.pth')])

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
PRUNE_CFG = osp.join(ROOT, 'configs/demo/dtop_segvit_vit-t16-8l_1xb8-100_demo-128x128.py')


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
    k = demo.render_scale(h, w)  # small images are enlarged for a readable picture
    assert k == -(-demo.MIN_RENDER_SIDE // min(h, w))
    assert drawn.shape[1] == 2 * w * k + 4 and drawn.shape[0] > h * k
    assert res['shape'] == [h, w]
    # the demo config infers whole images: one forward per image
    assert Config.fromfile(PRUNE_CFG).model.test_cfg.mode == 'whole'
    assert res['num_crops'] == 1
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
    # p0 = 1: the idle auxiliary heads are skipped, so nothing is saved and nothing is
    # added (not "-5.0 % less", which counting the skipped heads would give)
    assert res['gflops'] == pytest.approx(res['gflops_dense'])
    assert res['reduction_pct'] == pytest.approx(0.0, abs=1e-9)
    out = capsys.readouterr().out
    assert 'GFLOPs:' in out and '-> 0.0% less' in out


def test_image_demo_errors(tmp_path, checkpoint):
    demo = _load_demo_module()
    with pytest.raises(FileNotFoundError, match='image not found'):
        demo.main([str(tmp_path / 'none.jpg'), PRUNE_CFG, checkpoint])
    img = _write_image(tmp_path / 'x.jpg', 64, 64)
    with pytest.raises(FileNotFoundError, match='checkpoint not found'):
        demo.main([img, PRUNE_CFG, str(tmp_path / 'none.pth')])


# ------------------------------------------- robustness (docs/robustness.md)
def _metric_gflops(model, sample):
    """What IoUFlopsMetric reports for this one sample (through process/compute)."""
    from dtop.evaluation import DToPCostDims, IoUFlopsMetric
    metric = IoUFlopsMetric(cost_dims=DToPCostDims.from_model(model), iou_metrics=['mIoU'])
    metric.dataset_meta = dict(classes=list(DEMO_CLASSES))
    ds = sample.to_dict()
    ds['gt_sem_seg'] = ds['pred_sem_seg']
    metric.process({}, [ds])
    return metric.compute_metrics(list(metric.results))


@pytest.mark.parametrize('threshold', ['1.0', '0.2'])
def test_image_demo_gflops_match_the_metric(tmp_path, checkpoint, threshold):
    demo = _load_demo_module()
    from dtop.apis import inference_model
    model, _ = demo.build_model(PRUNE_CFG, checkpoint, 'cpu', [float(threshold)])
    image = cv2.imread(_write_image(tmp_path / 's.jpg', 150, 220, seed=5))
    sample = inference_model(model, image)
    flops = demo.image_flops(model, sample.metainfo['dtop_stats'])
    metric = _metric_gflops(model, sample)
    assert flops['gflops'] == pytest.approx(metric['GFLOPs_img'], abs=1e-4)
    assert flops['gflops_noaux'] == pytest.approx(metric['GFLOPs_img_noaux'], abs=1e-4)
    assert flops['gflops_dense'] == pytest.approx(metric['GFLOPs_dense_img'], abs=1e-4)
    assert flops['reduction_pct'] == pytest.approx(metric['GFLOPs_reduction_pct'], abs=1e-3)
    if threshold == '1.0':
        assert metric['GFLOPs_reduction_pct'] == pytest.approx(0.0, abs=1e-3)


@pytest.mark.parametrize('h,w,factor', [(1, 1, 256), (20, 30, 13)])
def test_image_demo_tiny_images_give_a_readable_picture(tmp_path, checkpoint, h, w, factor):
    demo = _load_demo_module()
    img = tmp_path / 'tiny.png'
    rng = np.random.default_rng(h * w)
    cv2.imwrite(str(img), rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    out = tmp_path / 'tiny_dtop.png'
    res = demo.main([str(img), PRUNE_CFG, checkpoint, '--out-file', str(out),
                     '--device', 'cpu'])
    assert res['shape'] == [h, w]
    drawn = cv2.imread(str(out))
    assert demo.render_scale(h, w) == factor
    # prediction | gap | exit map, each enlarged so its shorter side is >= 256 px
    assert drawn.shape[1] == 2 * w * factor + 4
    assert drawn.shape[0] > h * factor >= demo.MIN_RENDER_SIDE


def test_image_demo_validates_options(tmp_path, checkpoint, capsys):
    demo = _load_demo_module()
    img = _write_image(tmp_path / 'x.jpg', 64, 64)
    for bad in ('5', '-0.1', 'nan', 'abc'):
        with pytest.raises(SystemExit) as info:
            demo.parse_args([img, PRUNE_CFG, checkpoint, '--opacity', bad])
        assert info.value.code == 2
        assert '--opacity must be' in capsys.readouterr().err
    from dtop.utils.errors import DToPUserError
    with pytest.raises(DToPUserError, match='--threshold: prune_threshold: got nan'):
        demo.main([img, PRUNE_CFG, checkpoint, '--threshold', 'nan'])
    with pytest.raises(DToPUserError, match='got 4 values'):
        demo.main([img, PRUNE_CFG, checkpoint, '--threshold', '0.5', '0.5', '0.5', '0.5'])
    with pytest.raises(SystemExit):
        demo.parse_args([img, PRUNE_CFG, checkpoint, '--threshold', 'abc'])
    assert "got 'abc'" in capsys.readouterr().err
    empty = tmp_path / 'empty.jpg'
    empty.write_bytes(b'')
    from dtop.utils.errors import DataError
    with pytest.raises(DataError, match=r'image .*empty.jpg is empty \(0 bytes\); pass a readable'):
        demo.main([str(empty), PRUNE_CFG, checkpoint])


def test_image_demo_refuses_a_checkpoint_of_another_config(tmp_path, checkpoint):
    from tests.utils.tiny_models import tiny_model_cfg
    from dtop.utils.errors import CheckpointMismatchError
    demo = _load_demo_module()
    torch.manual_seed(1)
    other = MODELS.build(tiny_model_cfg(num_classes=10, embed_dims=32))
    path = tmp_path / 'other.pth'
    torch.save(dict(state_dict=other.state_dict()), str(path))
    img = _write_image(tmp_path / 'x.jpg', 64, 64)
    with pytest.raises(CheckpointMismatchError, match=r'(?s)does not fit the model: .*'
                       r'shape mismatches \(checkpoint vs model\): backbone\.'):
        demo.main([img, PRUNE_CFG, str(path), '--out-file', str(tmp_path / 'o.png')])
    assert not (tmp_path / 'o.png').exists()

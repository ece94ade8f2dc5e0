"""IoUFlopsMetric never scores what it cannot score right, and DToPTTAModel hands it
the statistics of every augmented pass (GFLOPs per image = sum over passes)."""
import numpy as np
import pytest
import torch
from mmengine.registry import init_default_scope
from mmengine.structures import PixelData
from mmseg.structures import SegDataSample

import dtop  # noqa: F401
from dtop.models.decode_heads import ATMPruneHead
from dtop.evaluation import DToPCostDims, IoUFlopsMetric, flops_summary
from dtop.evaluation.flops import model_flops
from dtop.models.segmentors.tta import DToPTTAModel
from tests.utils.tiny_models import tiny_model_cfg
from dtop.utils.errors import DataError

NUM_CLASSES = 5
DIMS = DToPCostDims(embed_dims=32, ffn_channels=64, stage_layers=(2, 2, 2),
                    heads=tuple(ATMPruneHead.cost_of(32, 16, NUM_CLASSES, 2) for _ in range(3)),
                    patch_size=16, crop_size=(64, 64))


def _metric():
    m = IoUFlopsMetric(cost_dims=DIMS, iou_metrics=['mIoU'])
    m.dataset_meta = dict(classes=[f'c{i}' for i in range(NUM_CLASSES)])
    return m


def _sample(gt, pred=None, name='a.jpg'):
    pred = gt.clone() if pred is None else pred
    return dict(pred_sem_seg=dict(data=pred[None]), gt_sem_seg=dict(data=gt[None]),
                img_path=name, seg_map_path=name.replace('.jpg', '.png'))


def test_labels_out_of_range_are_reported_not_scored():
    g = torch.Generator().manual_seed(1)
    gt = torch.randint(0, NUM_CLASSES, (20, 30), generator=g)
    gt[:3] = 255  # ignore index: fine
    m = _metric()
    m.process({}, [_sample(gt)])
    bad = gt.clone()
    bad[5, 5], bad[6, 6] = NUM_CLASSES, 17
    with pytest.raises(DataError, match=r'b.jpg \(annotation b.png\): label values \[5, 17\] '
                                        r'are outside \[0, 5\)'):
        m.process({}, [_sample(bad, gt, name='b.jpg')])
    only_bad = torch.full((20, 30), 9)
    with pytest.raises(DataError, match=r'label values \[9\]'):
        m.process({}, [_sample(only_bad, gt, name='c.jpg')])


def test_size_mismatch_is_named():
    gt = torch.zeros(20, 30, dtype=torch.long)
    with pytest.raises(DataError, match=r'd.jpg .* annotation is \(20, 30\) .* prediction '
                                        r'for the image is \(21, 30\)'):
        _metric().process({}, [_sample(gt, torch.zeros(21, 30, dtype=torch.long), 'd.jpg')])


def _pass_sample(counts, crop_shape, seed):
    g = torch.Generator().manual_seed(seed)
    s = SegDataSample(metainfo=dict(img_path='x.jpg', ori_shape=(40, 50)))
    s.seg_logits = PixelData(data=torch.randn(NUM_CLASSES, 40, 50, generator=g))
    s.gt_sem_seg = PixelData(data=torch.randint(0, NUM_CLASSES, (1, 40, 50), generator=g))
    grid = (crop_shape[0] // 16) * (crop_shape[1] // 16)
    s.set_metainfo(dict(dtop_stats=dict(
        token_counts=torch.tensor(counts), grid_tokens=grid, crop_shape=crop_shape,
        heads_run=(True, True, True), exit_map=torch.zeros(40, 50, dtype=torch.uint8))))
    return s


def test_tta_model_keeps_every_pass_and_the_metric_sums_them():
    init_default_scope('mmseg')
    tta = DToPTTAModel(module=tiny_model_cfg(num_classes=NUM_CLASSES))
    passes = [([[16, 9, 4], [16, 16, 10]], (64, 64)),   # 2 crops at scale 1
              ([[4, 2, 1]], (32, 32))]                   # 1 smaller crop at scale 0.5
    samples = [_pass_sample(c, shape, i) for i, (c, shape) in enumerate(passes)]
    (merged,) = tta.merge_preds([samples])
    stats = merged.metainfo['dtop_stats']
    assert len(stats['passes']) == 2
    assert stats['passes'][1]['crop_shape'] == (32, 32)
    m = _metric()
    m.process({}, [merged.to_dict()])
    out = m.compute_metrics(list(m.results))
    expect = sum(model_flops(DIMS, np.array(c, float), shape,
                             grid_tokens=(shape[0] // 16) * (shape[1] // 16))
                 ['backbone_all_heads'].sum() for c, shape in passes) / 1e9
    # (compute_metrics rounds to 4 decimals; the tiny model costs ~1e-3 GFLOPs)
    assert flops_summary([m.results[0][1]], DIMS)['GFLOPs_img'] == pytest.approx(expect)
    assert out['GFLOPs_img'] == pytest.approx(expect, abs=1e-4)
    assert out['crops_per_img'] == 3 and out['tta_passes_per_img'] == 2
    # a pass without statistics would make the GFLOPs silently partial
    samples[1].set_metainfo(dict(dtop_stats=None))
    with pytest.raises(KeyError, match='only 1 of 2 augmented passes'):
        tta.merge_preds([samples])


def test_non_finite_logits_are_not_reported_as_a_number():
    from dtop.utils.errors import NonFiniteError
    g = torch.Generator().manual_seed(int(np.random.default_rng().integers(1 << 30)))
    gt = torch.randint(0, NUM_CLASSES, (20, 30), generator=g)
    m = _metric()
    good = _sample(gt)
    good['seg_logits'] = dict(data=torch.randn(NUM_CLASSES, 20, 30, generator=g))
    bad = _sample(gt, name='nan.jpg')
    logits = torch.randn(NUM_CLASSES, 20, 30, generator=g)
    logits[2, 3, 4] = float('nan')
    bad['seg_logits'] = dict(data=logits)
    m.process({}, [good, bad])
    with pytest.raises(NonFiniteError, match=r"the model's logits are NaN/Inf for 1 of 2 "
                                             r'images \(first: nan.jpg\), so no metric'):
        m.compute_metrics(list(m.results))
    ok = _metric()
    ok.process({}, [good])
    assert ok.compute_metrics(list(ok.results))['mIoU'] == 100.0


def test_split_without_labelled_pixels_says_so_instead_of_nan():
    g = torch.Generator().manual_seed(int(np.random.default_rng().integers(1 << 30)))
    m = _metric()
    for i in range(3):
        gt = torch.full((20, 30), 255)
        m.process({}, [_sample(gt, torch.randint(0, NUM_CLASSES, (20, 30), generator=g),
                               name=f'{i}.jpg')])
    with pytest.raises(DataError, match=r'the 3 images of the split have no labelled '
                                        r'pixels \(every annotation pixel is the ignore '
                                        r'index 255'):
        m.compute_metrics(list(m.results))

"""IoUFlopsMetric: GFLOPs statistics from fake dtop_stats, IoU unchanged, dims
plumbing (explicit, from a config, through the hook), multi-process collection."""
import pickle
import types

import numpy as np
import pytest
import torch
from mmengine.registry import init_default_scope
from mmseg.evaluation import IoUMetric
from mmseg.registry import METRICS, MODELS

import dtop  # noqa: F401
from dtop.models.decode_heads import ATMPruneHead
from dtop.evaluation import (DToPCostDims, FlopsMetricDimsHook, IoUFlopsMetric,
                             flops_summary)
from dtop.evaluation.flops import model_flops
from tests.utils.tiny_models import tiny_model_cfg

NUM_CLASSES = 4
DIMS = DToPCostDims(embed_dims=64, ffn_channels=256, stage_layers=(2, 1, 2),
                    heads=tuple(ATMPruneHead.cost_of(64, 32, NUM_CLASSES, 2) for _ in range(3)),
                    patch_size=16, crop_size=(64, 64))
N = 16  # 64x64 crop, patch 16


def fake_sample(counts, seed, crop_shape=(64, 64), with_stats=True):
    g = torch.Generator().manual_seed(seed)
    gt = torch.randint(0, NUM_CLASSES, (1, 40, 50), generator=g)
    pred = torch.where(torch.rand(1, 40, 50, generator=g) < 0.7, gt,
                       torch.randint(0, NUM_CLASSES, (1, 40, 50), generator=g))
    ds = dict(pred_sem_seg=dict(data=pred), gt_sem_seg=dict(data=gt), img_path=f'{seed}.jpg')
    if with_stats:
        grid = (crop_shape[0] // 16) * (crop_shape[1] // 16)
        ds['dtop_stats'] = dict(token_counts=torch.tensor(counts), grid_tokens=grid,
                                crop_shape=crop_shape,
                                exit_map=torch.zeros(40, 50, dtype=torch.uint8))
    return ds


SAMPLES = [  # per image: (num_crops, S) active counts
    [[16, 10, 4], [16, 16, 16]],
    [[16, 8, 8]],
    [[16, 12, 6], [16, 4, 2], [16, 16, 3]],
]


def expected():
    img, img_noaux, crops, crops_noaux, exits = [], [], [], [], []
    for c in SAMPLES:
        cost = model_flops(DIMS, np.array(c))
        img.append(cost['backbone_all_heads'].sum())
        img_noaux.append(cost['backbone_final_head'].sum())
        crops += cost['backbone_all_heads'].tolist()
        crops_noaux += cost['backbone_final_head'].tolist()
        c = np.array(c, float)
        exits += ((c[:, :-1] - c[:, 1:]) / N).tolist()
    dense = model_flops(DIMS, np.array([[N] * 3]))
    return dict(img=np.array(img) / 1e9, img_noaux=np.array(img_noaux) / 1e9,
                crop=np.array(crops) / 1e9, crop_noaux=np.array(crops_noaux) / 1e9,
                exits=np.array(exits), dense=dense['backbone_final_head'][0] / 1e9,
                dense_all=dense['backbone_all_heads'][0] / 1e9)


def test_flops_summary_means_stds_reductions():
    records = [dict(token_counts=np.array(c), grid_tokens=N, crop_shape=(64, 64))
               for c in SAMPLES]
    s = flops_summary(records, DIMS)
    e = expected()
    assert s['GFLOPs_img'] == pytest.approx(e['img'].mean())
    assert s['GFLOPs_img_std'] == pytest.approx(e['img'].std())
    assert s['GFLOPs_img_noaux'] == pytest.approx(e['img_noaux'].mean())
    assert s['GFLOPs_img_noaux_std'] == pytest.approx(e['img_noaux'].std())
    assert s['GFLOPs_crop'] == pytest.approx(e['crop'].mean())
    assert s['GFLOPs_crop_std'] == pytest.approx(e['crop'].std())
    assert s['GFLOPs_crop_noaux'] == pytest.approx(e['crop_noaux'].mean())
    assert s['GFLOPs_dense_crop'] == pytest.approx(e['dense'])
    assert s['GFLOPs_dense_crop_allheads'] == pytest.approx(e['dense_all'])
    assert s['GFLOPs_dense_img'] == pytest.approx(e['dense'] * 2)  # 6 crops / 3 images
    assert s['GFLOPs_dense_img_allheads'] == pytest.approx(e['dense_all'] * 2)
    assert s['GFLOPs_reduction_pct'] == pytest.approx(
        100 * (1 - e['crop'].sum() / (e['dense'] * 6)))
    assert s['GFLOPs_reduction_noaux_pct'] == pytest.approx(
        100 * (1 - e['crop_noaux'].sum() / (e['dense'] * 6)))
    # per image or per crop: the reduction is a ratio of totals, the same
    assert s['GFLOPs_reduction_pct'] == pytest.approx(
        100 * (1 - s['GFLOPs_img'] / s['GFLOPs_dense_img']))
    assert s['exit_frac_s0'] == pytest.approx(e['exits'][:, 0].mean())
    assert s['exit_frac_s1'] == pytest.approx(e['exits'][:, 1].mean())
    assert s['active_frac_final'] == pytest.approx(np.mean([4, 16, 8, 6, 2, 3]) / N)
    assert s['crops_per_img'] == 2.0
    # a dense run reports zero reduction without aux heads
    dense = flops_summary([dict(token_counts=np.full((2, 3), N), grid_tokens=N,
                                crop_shape=(64, 64))], DIMS)
    assert dense['GFLOPs_reduction_noaux_pct'] == pytest.approx(0.0)
    assert dense['GFLOPs_img'] == pytest.approx(2 * e['dense_all'])
    assert dense['exit_frac_s0'] == 0 and dense['active_frac_final'] == 1
    # a model that skipped its (non-pruning) auxiliary heads reports heads_run
    skipped = flops_summary([dict(token_counts=np.full((2, 3), N), grid_tokens=N,
                                  crop_shape=(64, 64), heads_run=(False, False, True))], DIMS)
    assert skipped['GFLOPs_img'] == pytest.approx(2 * e['dense'])
    assert skipped['GFLOPs_reduction_pct'] == pytest.approx(0.0)


def run_metric(metric, samples):
    metric.dataset_meta = dict(classes=[f'c{i}' for i in range(NUM_CLASSES)])
    for i in range(0, len(samples), 2):
        metric.process(dict(), samples[i:i + 2])
    return metric.evaluate(len(samples))


def test_metric_reports_iou_and_flops():
    samples = [fake_sample(c, i) for i, c in enumerate(SAMPLES)]
    metric = METRICS.build(dict(type='IoUFlopsMetric', iou_metrics=['mIoU'],
                                cost_dims=DIMS.to_dict()))
    res = run_metric(metric, samples)
    ref = run_metric(IoUMetric(iou_metrics=['mIoU']), samples)
    for k in ('aAcc', 'mIoU', 'mAcc'):
        assert res[k] == ref[k]
    e = expected()
    assert res['GFLOPs_img'] == pytest.approx(e['img'].mean(), abs=1e-4)
    assert res['GFLOPs_crop_std'] == pytest.approx(e['crop'].std(), abs=1e-4)
    assert 0 < res['exit_frac_s0'] < 1


def test_metric_keeps_per_sample_results_small():
    metric = IoUFlopsMetric(cost_dims=DIMS)
    metric.dataset_meta = dict(classes=[f'c{i}' for i in range(NUM_CLASSES)])
    metric.process(dict(), [fake_sample(SAMPLES[2], 0)])
    (iou, rec), = metric.results
    assert set(rec) == {'token_counts', 'grid_tokens', 'crop_shape'}  # no exit map
    assert rec['token_counts'].dtype == np.int32 and rec['token_counts'].shape == (3, 3)
    assert len(pickle.dumps(rec)) < 1000


def test_metric_without_stats_or_dims():
    metric = IoUFlopsMetric(cost_dims=DIMS)
    res = run_metric(metric, [fake_sample(SAMPLES[0], 0, with_stats=False)])
    assert 'mIoU' in res and 'GFLOPs_img' not in res
    # partial stats: averaged over the samples that have them
    res = run_metric(IoUFlopsMetric(cost_dims=DIMS),
                     [fake_sample(SAMPLES[1], 0), fake_sample(SAMPLES[0], 1, with_stats=False)])
    assert res['GFLOPs_img'] == pytest.approx(expected()['img'][1], abs=1e-4)
    with pytest.raises(KeyError, match='dtop_stats'):
        run_metric(IoUFlopsMetric(cost_dims=DIMS, require_stats=True),
                   [fake_sample(SAMPLES[0], 0, with_stats=False)])
    with pytest.raises(RuntimeError, match='FlopsMetricDimsHook'):
        run_metric(IoUFlopsMetric(), [fake_sample(SAMPLES[0], 0)])


def test_dims_from_model_cfg_and_hook():
    init_default_scope('mmseg')
    cfg = tiny_model_cfg(num_classes=NUM_CLASSES, img_size=(64, 64))
    from_cfg = IoUFlopsMetric(model_cfg=cfg).cost_dims
    model = MODELS.build(cfg)
    assert from_cfg == DToPCostDims.from_model(model)
    metric = IoUFlopsMetric()
    other = IoUMetric()
    runner = types.SimpleNamespace(
        model=types.SimpleNamespace(module=model),  # a DDP-like wrapper
        test_loop=types.SimpleNamespace(
            evaluator=types.SimpleNamespace(metrics=[other, metric])),
        val_loop=None)
    hook = FlopsMetricDimsHook()
    hook.before_val(runner)  # no val loop: nothing happens
    assert metric.cost_dims is None
    hook.before_test(runner)
    assert metric.cost_dims == from_cfg
    kept = IoUFlopsMetric(cost_dims=DIMS)
    runner.test_loop.evaluator.metrics = [kept]
    hook.before_test(runner)
    assert kept.cost_dims == DIMS
    FlopsMetricDimsHook(overwrite=True).before_test(runner)
    assert kept.cost_dims == from_cfg


def test_predict_output_feeds_the_metric():
    """The real model's predict() -> evaluator dicts -> metric, slide inference."""
    from mmengine.evaluator import Evaluator
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    init_default_scope('mmseg')
    cfg = tiny_model_cfg(num_classes=NUM_CLASSES, img_size=(64, 64), test_mode='slide',
                         prune_threshold=0.3)
    torch.manual_seed(0)
    model = MODELS.build(cfg).eval()
    x = torch.randn(2, 3, 64, 96)
    samples = []
    for _ in range(2):
        ds = SegDataSample()
        ds.set_metainfo(dict(ori_shape=(64, 96), img_shape=(64, 96), pad_shape=(64, 96),
                             padding_size=[0, 0, 0, 0]))
        ds.gt_sem_seg = PixelData(data=torch.randint(0, NUM_CLASSES, (1, 64, 96)))
        samples.append(ds)
    with torch.no_grad():
        out = model.predict(x, samples)
    evaluator = Evaluator(dict(type='IoUFlopsMetric', model_cfg=cfg))
    evaluator.dataset_meta = dict(classes=[f'c{i}' for i in range(NUM_CLASSES)])
    evaluator.process(out)
    res = evaluator.evaluate(2)
    counts = [o.dtop_stats['token_counts'] for o in out]
    assert counts[0].shape == (2, 3)  # two 64x64 windows over 96 px
    want = np.mean([model_flops(DToPCostDims.from_model(model), c)['backbone_all_heads'].sum()
                    for c in counts]) / 1e9
    assert res['GFLOPs_img'] == pytest.approx(want, abs=1e-4)
    assert res['crops_per_img'] == 2


def _dist_worker(rank, world, port, samples, queue):
    import os
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.distributed.init_process_group('gloo', rank=rank, world_size=world)
    try:
        metric = IoUFlopsMetric(cost_dims=DIMS)
        metric.dataset_meta = dict(classes=[f'c{i}' for i in range(NUM_CLASSES)])
        # the DefaultSampler splits a dataset rank-interleaved
        metric.process(dict(), samples[rank::world])
        res = metric.evaluate(len(samples))
        if rank == 0:
            queue.put(res)
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_metric_two_process_gloo():
    """Two gloo processes: results are gathered by mmengine and equal one process."""
    import socket
    import torch.multiprocessing as mp
    samples = [fake_sample(c, i) for i, c in enumerate(SAMPLES * 2)]
    single = run_metric(IoUFlopsMetric(cost_dims=DIMS), samples)
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    ctx = mp.get_context('spawn')
    queue = ctx.Queue()
    procs = [ctx.Process(target=_dist_worker, args=(r, 2, port, samples, queue))
             for r in range(2)]
    for p in procs:
        p.start()
    res = queue.get(timeout=120)
    for p in procs:
        p.join(60)
    assert all(p.exitcode == 0 for p in procs)
    for k in ('mIoU', 'GFLOPs_img', 'GFLOPs_img_std', 'GFLOPs_crop', 'exit_frac_s1'):
        assert res[k] == pytest.approx(single[k]), k

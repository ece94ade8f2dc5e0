"""The cost model for SETR-naive and Segmenter (cls token, final norm, SETR and
mask-transformer heads) against the library counter, ours and mmseg's dense model."""
import json
import os.path as osp

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmseg.registry import MODELS

import dtop  # noqa: F401
from dtop.evaluation.flops import (DToPCostDims, HeadCost, _DenseTrace, _run_analyzer,
                                   count_flops_library, count_flops_mmseg, dense_flops,
                                   mmseg_dense_flops, model_flops)
from dtop.evaluation.metrics import flops_summary
from dtop.models.decode_heads import DToPSegmenterMaskHead, DToPSETRUPHead
from dtop.models.pruning import ExitPolicy
from dtop.models.mmseg_dense import mmseg_dense_model_cfg
from tests.utils.flops_checks import assert_counts_match
from tests.utils.tiny_models import tiny_model_cfg

ROOT = osp.abspath(osp.join(osp.dirname(__file__), '..', '..'))
CFGS = dict(
    setr=lambda: tiny_model_cfg('setr', num_classes=7, embed_dims=48, num_layers=5,
                                out_indices=(0, 2, 3, 4), channels=24),
    segmenter=lambda: tiny_model_cfg('segmenter', num_classes=7, embed_dims=48,
                                     num_layers=5, out_indices=(1, 3, 4),
                                     head_layers=2, atm_channels=24))


@pytest.fixture(autouse=True)
def _scope():
    init_default_scope('mmseg')


@pytest.mark.parametrize('kind', list(CFGS))
@pytest.mark.parametrize('shape', [(64, 64), (72, 40)])
def test_library_counter_matches_analytic(kind, shape):
    """Ours and mmseg's dense model, each against its analytic count, per module."""
    cfg = CFGS[kind]()
    torch.manual_seed(0)
    model = MODELS.build(cfg)
    dims = DToPCostDims.from_model(model)
    assert dims.num_prefix_tokens == 1 and dims.final_norm
    lib = count_flops_library(model, shape)
    ana = dense_flops(dims, shape)
    assert_counts_match(lib, ana)

    mm_cfg, kept = mmseg_dense_model_cfg(cfg)
    mm = MODELS.build(mm_cfg)
    mm_lib = count_flops_mmseg(mm, shape)
    mm_ana = mmseg_dense_flops(dims, shape)
    assert_counts_match(mm_lib, mm_ana, heads=False,
                        keys=('backbone', 'upsample', 'final_head', 'backbone_final_head'))
    np.testing.assert_allclose(mm_lib['heads'], [mm_ana['heads'][s] for s in kept] +
                               [mm_ana['heads'][-1]], rtol=1e-9)
    # The backbones differ only by mmseg's final norm of the cls token.
    assert mm_lib['backbone'] - lib['backbone'] == pytest.approx(5 * 48)
    if kind == 'segmenter':  # same decode head computation
        assert mm_lib['final_head'] == pytest.approx(lib['final_head'], rel=1e-9)
    else:  # conv_seg on tokens + upsampled class maps instead of the other order
        assert lib['final_head'] < mm_lib['final_head']


@pytest.mark.parametrize('kind', list(CFGS))
def test_pruned_forward_counts_match_the_cost_model(kind):
    """Trace a pruned forward (batch 1, exits forced): the counter sees the smaller
    token sets (cls token always active) and agrees with model_flops."""
    model = MODELS.build(dict(CFGS[kind](), prune_threshold=0.5)).eval()
    S = model.backbone.num_stages
    keep = {0: 13, 1: 9, 2: 4}

    class KeepFirst(ExitPolicy):  # forced exits: the first keep[s] tokens stay

        def prunes_at(self, stage):
            return True

        def __call__(self, stage, scores, segments):
            exits = torch.zeros(scores.shape[0], dtype=torch.bool)
            exits[keep[stage]:] = True
            return exits

    model.set_exit_policy(KeepFirst())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        counts = model.run_stages(x).active_counts
    want = [16] + [keep[s] for s in range(S - 1)]
    assert counts.tolist() == [want]
    total, by_module, _ = _run_analyzer(_DenseTrace.build(model), x, 'mmengine')
    cost = model_flops(DToPCostDims.from_model(model), counts)
    assert total == pytest.approx(cost['backbone_all_heads'][0], rel=1e-9)
    assert by_module['model.decode_head'] == pytest.approx(cost['heads'][0, -1], rel=1e-9)
    # the metric's summary of such records
    rec = dict(token_counts=counts.numpy(), grid_tokens=16, crop_shape=(64, 64),
               heads_run=(True, ) * S)
    summary = flops_summary([rec], DToPCostDims.from_model(model))
    assert summary['GFLOPs_crop'] == pytest.approx(total / 1e9, rel=1e-9)
    assert summary['GFLOPs_reduction_pct'] > 0


def test_head_costs_round_trip_and_validation():
    dims = DToPCostDims.from_config(CFGS['setr']())
    assert DToPCostDims.from_dict(dims.to_dict()) == dims
    assert DToPCostDims.from_dict(json.loads(json.dumps(dims.to_dict()))) == dims
    assert dims.heads[0] == DToPSETRUPHead.cost_of(48, 24, 7, up_scale=4, with_norm=True)
    seg = DToPCostDims.from_config(CFGS['segmenter']())
    assert seg.heads[-1] == DToPSegmenterMaskHead.cost_of(48, 48, 7, 2, 192)
    with pytest.raises(ValueError, match='pixel step'):
        HeadCost(2, pixel_steps=((2, 'fcn'), ))


def test_vit_b_ade_gflops():
    """The ViT-B/16 ADE20K 512 configs: ours (analytic, verified against the counter
    above) next to mmseg's dense model of the same config."""
    out = {}
    for kind, path in (('setr', 'configs/setr/setr-naive_vit-b16_4xb4-160k_ade20k-512x512.py'),
                       ('segmenter', 'configs/segmenter/'
                                     'segmenter-mask_vit-b16_4xb4-160k_ade20k-512x512.py')):
        dims = DToPCostDims.from_config(Config.fromfile(osp.join(ROOT, path)).model)
        ours, mm = dense_flops(dims), mmseg_dense_flops(dims)
        out[kind] = (ours['backbone_final_head'] / 1e9, mm['backbone_final_head'] / 1e9)
        assert mm['backbone'] - ours['backbone'] == pytest.approx(5 * 768)
    # SETR: mmseg's head runs conv_seg on 128x128 upsampled pixels (150 x 256 MACs
    # each) after upsampling 256 channels; ours on the 32x32 tokens, upsampling 150.
    setr_gap = (128 * 128 - 32 * 32) * 256 * 150 + 4 * 128 * 128 * (256 - 150)
    assert (out['setr'][1] - out['setr'][0]) * 1e9 == pytest.approx(setr_gap + 5 * 768)
    assert out['segmenter'][1] * 1e9 - out['segmenter'][0] * 1e9 == pytest.approx(5 * 768)
    print(out)


@pytest.mark.parametrize('kind', ['setr'])  # Segmenter's path: test above + ViT-B run
def test_get_flops_tool_prints_mmseg_dense_next_to_ours(kind, tmp_path):
    """tools/analysis_tools/get_flops.py on a demo config: both models counted."""
    import importlib.util
    path = osp.join(ROOT, 'tools', 'analysis_tools', 'get_flops.py')
    spec = importlib.util.spec_from_file_location('tool_get_flops', path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    name = dict(setr='setr-naive', segmenter='segmenter-mask')[kind]
    config = osp.join(ROOT, 'configs', 'demo', f'{name}_vit-t16-8l_1xb8-1200_demo-128x128.py')
    res = tool.main([config, '--out', str(tmp_path / 'flops.json')])
    for k, v in res['analytic'].items():
        assert res['library'][k] == pytest.approx(v, rel=1e-9), k
    mm = json.loads((tmp_path / 'flops.json').read_text())['mmseg']
    for k, v in mm['analytic'].items():
        assert mm['library'][k] == pytest.approx(v, rel=1e-9), k
    key = 'backbone + final head  [inference at p0 = 1]'
    assert mm['ours'][key] == pytest.approx(
        res['library']['backbone + final head  [README BASE convention]'])
    if kind == 'segmenter':
        assert mm['ours'][key] == pytest.approx(mm['library'][key], abs=1e-5)
    else:
        assert mm['ours'][key] < mm['library'][key]
        assert len([k for k in mm['library'] if k.startswith('auxiliary_head')]) == 3

"""The analytic cost model (docs/benchmarks.md) against the README BASE numbers and
against a library FLOP counter on the real models, dense and pruned."""
import glob
import os.path as osp

import numpy as np
import pytest
import torch
from mmengine.registry import init_default_scope
from mmseg.registry import MODELS

import dtop  # noqa: F401
from dtop.evaluation.flops import (DToPCostDims, count_flops_library, dense_flops,
                                   model_flops, vit_layer_flops)
from dtop.models.decode_heads import ATMPruneHead
from tests.utils.flops_checks import (assert_counts_match, forced_exit_counts,
                                      pruned_flop_analyzer)
from tests.utils.tiny_models import tiny_model_cfg
from paper_models import README_ROWS, paper_model_cfg

ROOT = osp.abspath(osp.join(osp.dirname(__file__), '..', '..'))


@pytest.fixture(autouse=True)
def _scope():
    init_default_scope('mmseg')


def test_layer_formulas_spot_values():
    # 12·n·D² + 2·n²·D + 10·n·D: 8.87 G (ViT-B, n=1024) and 25.39 G (ViT-L, n=1600) per layer
    assert vit_layer_flops(1024, 768) / 1e9 == pytest.approx(8.87, abs=0.005)
    assert vit_layer_flops(1600, 1024) / 1e9 == pytest.approx(25.39, abs=0.005)
    # the prune-head formula: one ViT-B head at 1024 tokens ~2.55 G, one ADE ViT-L head
    # at 1600 tokens ~5.8 G
    assert ATMPruneHead.cost_of(768, 384, 150).flops(1024) / 1e9 == pytest.approx(
        2.55, abs=0.01)
    assert ATMPruneHead.cost_of(1024, 512, 150).flops(1600) / 1e9 == pytest.approx(
        5.82, abs=0.01)
    # arrays broadcast like numbers
    n = np.array([0, 10, 1024])
    np.testing.assert_allclose(vit_layer_flops(n, 768), [vit_layer_flops(int(v), 768)
                                                         for v in n])
    assert vit_layer_flops(0, 768) == 0


@pytest.mark.parametrize('row', list(README_ROWS))
def test_analytic_model_reproduces_readme_base_gflops(row):
    dims = DToPCostDims.from_config(paper_model_cfg(row))  # built on 'meta': instant
    readme = README_ROWS[row][-1]
    d = dense_flops(dims)
    assert d['backbone_final_head'] / 1e9 == pytest.approx(readme, rel=0.005)
    # the auxiliary heads are excluded from the README number (backbone + final head)
    assert d['backbone_all_heads'] / 1e9 > readme * 1.01


@pytest.mark.parametrize('row', list(README_ROWS))
def test_real_configs_have_the_paper_dims(row):
    """The real BASE and prune configs give the paper dims and the README GFLOPs."""
    arch, num_classes, crop, _, readme = README_ROWS[row]
    dataset = row.split('_')[0]
    pattern = osp.join(ROOT, 'configs', '*', f'*segvit_vit-{arch}16_*_{dataset}-{crop}x{crop}.py')
    paths = sorted(glob.glob(pattern))  # BASE (configs/segvit) and prune (configs/dtop)
    if not paths:
        pytest.skip(f'no config matches {pattern} yet')
    from mmengine.config import Config
    want = DToPCostDims.from_config(paper_model_cfg(row))
    for path in paths:
        got = DToPCostDims.from_config(Config.fromfile(path).model)
        assert got == want, path
        assert dense_flops(got)['backbone_final_head'] / 1e9 == pytest.approx(readme,
                                                                               rel=0.005)


def test_library_counter_matches_analytic_vit_b():
    """mmengine's counter on the real ADE ViT-B model, dense, 512x512, per module."""
    torch.manual_seed(0)
    model = MODELS.build(paper_model_cfg('ade20k_vit-b16'))
    lib = count_flops_library(model)
    ana = dense_flops(DToPCostDims.from_model(model))
    assert_counts_match(lib, ana, rel=0.005)
    assert lib['backbone_final_head'] / 1e9 == pytest.approx(109.9, rel=0.005)
    assert lib['total'] == pytest.approx(ana['backbone_all_heads'], rel=1e-9)


@pytest.mark.slow
@pytest.mark.parametrize('row', [r for r in README_ROWS if 'vit-l' in r])
def test_library_counter_matches_readme_vit_l(row):
    """ViT-L rows with the library counter (~25 s and ~5 GB each, hence slow)."""
    model = MODELS.build(paper_model_cfg(row))
    lib = count_flops_library(model)
    assert lib['backbone_final_head'] / 1e9 == pytest.approx(README_ROWS[row][-1],
                                                             rel=0.005)
    ana = dense_flops(DToPCostDims.from_model(model))
    assert lib['backbone_all_heads'] == pytest.approx(ana['backbone_all_heads'], rel=1e-6)


@pytest.mark.parametrize('backend', ['mmengine', 'fvcore'])
@pytest.mark.parametrize('shape', [(64, 64), (72, 40)])
def test_library_counter_matches_analytic_tiny(backend, shape):
    """Tiny dims, both counters, a crop that is not a multiple of the patch size."""
    model = MODELS.build(tiny_model_cfg(num_classes=7, embed_dims=48, num_layers=5,
                                        out_indices=(0, 2, 4), channels=24,
                                        head_layers=3, img_size=(64, 64)))
    lib = count_flops_library(model, shape, backend=backend)
    ana = dense_flops(DToPCostDims.from_model(model), shape)
    assert_counts_match(lib, ana, heads=False,
                        keys=('backbone', 'upsample', 'backbone_final_head',
                              'backbone_all_heads'))
    assert model.prune_threshold == [None, None]  # restored (the cfg's 1.0 -> None)


def test_cost_model_matches_library_counter_on_a_pruned_forward():
    """Trace a *pruned* forward (batch 1): the counter sees the smaller token sets,
    and must agree with model_flops at the active counts the model reports."""
    model = MODELS.build(tiny_model_cfg(num_classes=5, embed_dims=32, num_layers=6,
                                        img_size=(64, 64), prune_threshold=0.5)).eval()
    x = torch.randn(1, 3, 64, 64)
    counts = forced_exit_counts(model, {0: 11, 1: 5}, x)
    assert counts.tolist() == [[16, 11, 5]]
    fa = pruned_flop_analyzer(model, x)
    cost = model_flops(DToPCostDims.from_model(model), counts)
    assert fa.total() == pytest.approx(cost['backbone_all_heads'][0], rel=1e-9)
    by_module = fa.by_module()
    assert by_module['model.auxiliary_head.1'] == pytest.approx(cost['heads'][0, 1])
    assert by_module['model.decode_head'] == pytest.approx(cost['heads'][0, 2])


def test_model_flops_composition():
    dims = DToPCostDims(embed_dims=64, ffn_channels=256, stage_layers=(2, 1, 3),
                        heads=tuple(ATMPruneHead.cost_of(64, 32, 9, 2) for _ in range(3)),
                        patch_size=16, crop_size=(128, 96))
    N = dims.grid_tokens()
    assert N == 8 * 6
    counts = np.array([[N, 30, 10], [N, N, N], [N, 0, 0]])
    out = model_flops(dims, counts)
    D, F = 64, 256
    embed = N * D * 3 * 256
    for i, (a, b, c) in enumerate(counts):
        bb = embed + 2 * vit_layer_flops(a, D, F) + vit_layer_flops(b, D, F) + \
            3 * vit_layer_flops(c, D, F)
        heads = [ATMPruneHead.cost_of(64, 32, 9, 2).flops(v) for v in (a, b, c)]
        up = 4 * 9 * 128 * 96
        assert out['backbone'][i] == pytest.approx(bb)
        np.testing.assert_allclose(out['heads'][i], heads)
        assert out['backbone_final_head'][i] == pytest.approx(bb + heads[2] + up)
        assert out['backbone_all_heads'][i] == pytest.approx(bb + sum(heads) + up)
    dense = dense_flops(dims)
    assert out['backbone_all_heads'][1] == pytest.approx(dense['backbone_all_heads'])
    assert np.all(np.diff(out['backbone_all_heads'][[1, 0, 2]]) < 0)
    # round trip of the plain-dict form (used in configs)
    assert DToPCostDims.from_dict(dims.to_dict()) == dims
    with pytest.raises(ValueError, match='must be'):
        model_flops(dims, np.array([[N, N]]))
    with pytest.raises(ValueError, match=r'\[0, 48\]'):
        model_flops(dims, np.array([[N + 1, 1, 1]]))


def test_dims_from_model_and_config_agree():
    cfg = tiny_model_cfg(num_classes=5, embed_dims=32, num_layers=6,
                         out_indices=(1, 3, 5), img_size=(64, 64), test_mode='slide')
    a = DToPCostDims.from_config(cfg)
    b = DToPCostDims.from_model(MODELS.build(cfg))
    assert a == b
    assert a.stage_layers == (2, 2, 2) and a.ffn_channels == 64 and a.crop_size == (64, 64)
    assert a.heads[0] == ATMPruneHead.cost_of(32, 16, 5, 2, 64)

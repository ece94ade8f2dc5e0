"""The cost model of EoMT models (DINOv2 backbone with registers and layer scale, ATM
auxiliary heads, EoMT final head) against the library counters — dense and pruned —
and against an independent fvcore count of transformers' ``EomtForUniversalSegmentation``
with EoMT's semantic post-processing."""
import importlib.util
import json
import os.path as osp

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.registry import init_default_scope
from mmseg.registry import MODELS

import dtop  # noqa: F401
from dtop.evaluation.flops import (DToPCostDims, HeadCost, count_flops_library, dense_flops,
                                   model_flops)
from dtop.evaluation.flops.counter import _einsum_flop_jit
from dtop.models.decode_heads.eomt_head import EoMTHead
from tests.utils.flops_checks import (assert_counts_match, forced_exit_counts,
                                      pruned_flop_analyzer)
from tests.utils.tiny_models import tiny_model_cfg

ROOT = osp.abspath(osp.join(osp.dirname(__file__), '..', '..'))
K, C, Q, BLOCKS, LAYERS, REGISTERS = 5, 64, 8, 2, 6, 2


@pytest.fixture(autouse=True)
def _scope():
    init_default_scope('mmseg')


def _model(**overrides):
    torch.manual_seed(0)
    return MODELS.build(tiny_model_cfg('eomt', num_classes=K, embed_dims=C,
                                       num_layers=LAYERS, num_register_tokens=REGISTERS,
                                       num_blocks=BLOCKS, num_queries=Q, **overrides))


@pytest.mark.parametrize('backend,shape,variant', [
    ('mmengine', (64, 64), 'mlp'), ('fvcore', (72, 40), 'mlp'),
    ('mmengine', (72, 40), 'swiglu')])
def test_library_counter_matches_analytic(backend, shape, variant):
    """Dense, per module, exactly: SwiGLU FFNs and a final norm in the variant."""
    extra = dict(ffn_type='swiglu', final_norm=True) if variant == 'swiglu' else {}
    model = _model(**extra)
    dims = DToPCostDims.from_model(model)
    assert dims.num_prefix_tokens == 1 + REGISTERS and dims.ffn_type == variant
    assert torch.equal(model.decode_head.attn_mask_probs, torch.ones(BLOCKS))
    lib = count_flops_library(model, shape, backend=backend)
    # counted at inference (masked attention annealed off), the model left as it was
    assert torch.equal(model.decode_head.attn_mask_probs, torch.ones(BLOCKS))
    assert model.training
    assert_counts_match(lib, dense_flops(dims, shape))
    assert lib['total'] == pytest.approx(lib['backbone_all_heads'], rel=1e-12)


def test_pruned_forward_counts_match_the_cost_model():
    """Forced exits (batch 1): the query blocks see fewer tokens, the grid-level work
    stays, and the extra work of a final map with exited tokens is counted."""
    model = _model(prune_threshold=0.5).eval()
    model.decode_head.attn_mask_probs.zero_()
    dims = DToPCostDims.from_model(model)
    x = torch.randn(1, 3, 64, 64)
    counts = forced_exit_counts(model, {0: 11, 1: 5}, x)
    assert counts.tolist() == [[16, 11, 5]]
    fa = pruned_flop_analyzer(model, x)
    cost = model_flops(dims, counts)
    assert fa.total() == pytest.approx(cost['backbone_all_heads'][0], rel=1e-12)
    by_module = fa.by_module()
    assert by_module['model.decode_head'] == pytest.approx(cost['heads'][0, -1], rel=1e-12)
    assert by_module['model.auxiliary_head.1'] == pytest.approx(cost['heads'][0, 1])
    assert by_module['pixels'] == pytest.approx(cost['upsample'][0], rel=1e-12)
    dense = dense_flops(dims)
    head = dims.heads[-1]
    # exited tokens: the frozen states normalised on the whole grid, a nearest resize
    # of the active mask and the K canvas maps resized to the crop
    assert cost['upsample'][0] - dense['upsample'] == 64 * 64 * (1 + 4 * K)
    assert cost['heads'][0, -1] == head.flops(5 + 1 + REGISTERS, 0) + 16 * (
        head.per_grid_token + 5 * C)


def test_head_cost_declaration():
    model = _model()
    dims = DToPCostDims.from_model(model)
    head = dims.heads[-1]
    assert head == EoMTHead.cost_of(C, K, BLOCKS, Q, 4 * C)
    assert head.with_prefix_tokens and head.mmseg is None
    # the prefix tokens come from the backbone: n + P in the polynomial
    assert head.flops(16, 16, 3) == head.flops(19) - 3 * head.per_grid_token
    assert head.flops(np.array([16, 10]), 16, 3)[0] == head.flops(16, 16, 3)
    # one block on Q + m tokens, by hand: 12 C^2 + 2 (Q + m) C + 10 C per token
    m = 16 + 3
    block = (Q + m) * (12 * C * C + 10 * C) + 2 * (Q + m) ** 2 * C
    predict = 5 * C * (Q + m) + Q * C * (K + 1) + 3 * Q * C * C
    assert head.flops(m, 0) == BLOCKS * block + predict
    assert head.per_grid_token == (4 + 16) * (C * C + 14 * C) + 16 * Q * C + Q * K
    # plain data: dict / JSON round trip, nested if_exited included
    assert DToPCostDims.from_dict(json.loads(json.dumps(dims.to_dict()))) == dims
    assert DToPCostDims.from_config(tiny_model_cfg('eomt', num_classes=K, embed_dims=C,
                                                   num_register_tokens=REGISTERS,
                                                   num_blocks=BLOCKS,
                                                   num_queries=Q)) == dims
    swiglu = EoMTHead.cost_of(C, K, BLOCKS, Q, ffn_type='swiglu')
    assert swiglu.per_token - head.per_token == BLOCKS * (3 * C * 176 - 2 * C * 4 * C)
    assert isinstance(HeadCost(**head.to_dict()).if_exited, HeadCost)


def test_einsum_handle_is_exact():
    """The library's einsum handle keeps 4 significant digits; ours is exact."""
    from mmengine.analysis import FlopAnalyzer

    class Two(nn.Module):

        def forward(self, a, b, p):
            return (torch.einsum('bqc,bchw->bqhw', a, b),
                    torch.einsum('...qk,...qs->...ks', p, a))

    a, b, p = torch.randn(1, 7, 33), torch.randn(1, 33, 13, 11), torch.randn(1, 7, 5)
    fa = FlopAnalyzer(Two(), (a, b, p))
    fa.set_op_handle('aten::einsum', _einsum_flop_jit)
    assert fa.total() == 7 * 33 * 13 * 11 + 7 * 5 * 33


# ------------------------------------------------------ transformers' EoMT


def _hf_eomt(image_size, hidden, layers, heads, registers, queries, classes, blocks):
    transformers = pytest.importorskip('transformers')
    cfg = transformers.EomtConfig(
        hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        image_size=image_size, patch_size=16, num_queries=queries,
        num_register_tokens=registers, num_labels=classes, num_blocks=blocks,
        attn_implementation='eager')
    hf = transformers.EomtForUniversalSegmentation(cfg).eval()
    hf.attn_mask_probs.zero_()
    return hf


class _HFSemantic(nn.Module):
    """transformers' EoMT forward + its semantic post-processing on one crop (the mask
    logits resized to the crop, ``softmax(class)[:K]`` times ``sigmoid(masks)``)."""

    def __init__(self, hf: nn.Module) -> None:
        super().__init__()
        self.hf = hf

    def forward(self, x):
        out = self.hf(pixel_values=x)
        masks = F.interpolate(out.masks_queries_logits, size=x.shape[-2:], mode='bilinear')
        classes = out.class_queries_logits.softmax(-1)[..., :-1]
        return torch.einsum('bqc,bqhw->bchw', classes, masks.sigmoid())


def _fvcore_hf(hf, size, exact_einsum=False) -> float:
    from fvcore.nn import FlopCountAnalysis
    fa = FlopCountAnalysis(_HFSemantic(hf), (torch.randn(1, 3, size, size), ))
    if exact_einsum:
        fa.set_op_handle('aten::einsum', _einsum_flop_jit)
    fa.unsupported_ops_warnings(False)
    fa.uncalled_modules_warnings(False)
    with torch.no_grad():
        return float(fa.total())


def test_dense_gflops_match_fvcore_on_transformers_eomt(tmp_path):
    """Same dims as transformers' model (its layers = our backbone layers + query
    blocks): our analytic dense count (backbone + final head; the ATM auxiliary
    heads are ours only) and get_flops.py's numbers match fvcore's on the HF model.

    Differences, both tiny: (1) our head also scores every token for the canvas
    (``Q K`` per grid cell, the einsum on the 4x4-pooled mask logits), which
    transformers' model does not compute: ``Q K h w`` more FLOPs (5e-5 of the
    total here, 1e-6 at EoMT-L 512); (2) fvcore's einsum handle reads numpy's
    ``einsum_path`` printout (4 significant digits), so its count of the two
    einsums is off by a few 1e-5 of theirs; with an exact einsum handle the rest is
    equal. Transposed convs (``C^2`` per output pixel), the depthwise conv (``9 C``),
    LayerNorm2d and eager attention (two matmuls) are counted by fvcore as by our
    model. transformers' post-processing finally resizes the ``K`` maps to the
    original image; that is outside the per-crop count (as mmseg's resize to the
    original image after sliding-window inference).
    """
    hf = _hf_eomt(64, C, LAYERS + BLOCKS, 4, REGISTERS, Q, K, BLOCKS)
    ref = _fvcore_hf(hf, 64)
    exact = _fvcore_hf(hf, 64, exact_einsum=True)
    cfg = tiny_model_cfg('eomt', num_classes=K, embed_dims=C, num_layers=LAYERS,
                         num_register_tokens=REGISTERS, num_blocks=BLOCKS, num_queries=Q)
    ours = dense_flops(DToPCostDims.from_config(cfg))['backbone_final_head']
    scores = Q * K * 4 * 4  # the per-token scores of our head on the 4x4 grid
    assert ours == pytest.approx(ref, rel=0.005)
    assert ours - scores == pytest.approx(ref, rel=1e-5)
    assert ours - scores == exact
    # get_flops.py's numbers (library count and analytic) of a config file
    config = tmp_path / 'eomt_tiny.py'
    config.write_text(f'model = {cfg!r}\n')
    spec = importlib.util.spec_from_file_location(
        'tool_get_flops', osp.join(ROOT, 'tools', 'analysis_tools', 'get_flops.py'))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    res = tool.main([str(config), '--no-mmseg'])
    key = 'backbone + final head  [README BASE convention]'
    assert res['library'][key] * 1e9 == pytest.approx(exact + scores, rel=1e-9)
    assert res['analytic'][key] * 1e9 == pytest.approx(exact + scores, rel=1e-9)


@pytest.mark.slow
def test_eomt_l_512_matches_fvcore_on_transformers_eomt():
    """EoMT-L at 512x512 (ADE20K: 20 backbone layers + 4 query blocks, width 1024,
    16 heads, 4 registers, 100 queries, 150 classes; ~15 s on 2 cores): 398.49
    GFLOPs analytic; fvcore on transformers' model 398.474 (398.4736 with its own
    einsum handle, 4e-5 lower), the gap being our per-token scores ``Q K h w``."""
    cfg = tiny_model_cfg('eomt', num_classes=150, embed_dims=1024, num_layers=20,
                         out_indices=(19, ), num_heads=16, num_register_tokens=4,
                         num_blocks=4, num_queries=100, img_size=(512, 512))
    ours = dense_flops(DToPCostDims.from_config(cfg))['backbone_final_head']
    assert ours / 1e9 == pytest.approx(398.49, abs=0.005)
    hf = _hf_eomt(512, 1024, 24, 16, 4, 100, 150, 4)
    exact = _fvcore_hf(hf, 512, exact_einsum=True)
    assert ours - 100 * 150 * 32 * 32 == exact
    assert ours == pytest.approx(exact, rel=0.005)

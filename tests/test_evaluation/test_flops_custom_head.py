"""A stage head defined in this file only: the cost model counts it from the
``cost()`` it declares, with no edit in ``dtop/``, and agrees with the library
counter (mmengine's ``FlopAnalyzer``), dense and pruned."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.registry import init_default_scope
from mmseg.models.decode_heads.decode_head import BaseDecodeHead
from mmseg.registry import MODELS

import dtop  # noqa: F401
from dtop.evaluation.flops import DToPCostDims, count_flops_library, dense_flops, model_flops
from dtop.models.cost import PATCH, HeadCost, ResizeStep, layer_norm_flops
from dtop.models.decode_heads.stage_head import HeadOutput, StageHeadMixin
from tests.utils.flops_checks import (assert_counts_match, forced_exit_counts,
                                      pruned_flop_analyzer)
from tests.utils.tiny_models import tiny_model_cfg


class _ToyMLP(StageHeadMixin, BaseDecodeHead):
    """Per token: LayerNorm → Linear(D, h) → ReLU → ``conv_seg`` as a linear map."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)  # in_channels (D), channels (h), num_classes (Q)
        self.norm = nn.LayerNorm(self.in_channels)
        self.fc = nn.Linear(self.in_channels, self.channels)

    def forward(self, inputs):  # mmseg's dense form: not used by the stage loop
        raise NotImplementedError

    def forward_tokens(self, tokens, segments):
        x = F.relu(self.fc(self.norm(tokens)))
        w = self.conv_seg.weight  # a functional op on the head's weights: counted in
        # the head's scope only if the counter opens one around forward_tokens
        return HeadOutput(F.linear(x, w.view(w.shape[0], -1), self.conv_seg.bias))


@MODELS.register_module(name='TestFlopsToyMLPHead', force=True)
class ToyMLPHead(_ToyMLP):

    def cost(self) -> HeadCost:
        D, h, Q = self.in_channels, self.channels, self.num_classes
        return HeadCost(num_classes=Q, per_token=layer_norm_flops(1, D) + D * h + h * Q,
                        pixel_steps=(ResizeStep(Q, PATCH), ),  # the mixin's to_pixels
                        name=type(self).__name__)


@MODELS.register_module(name='TestFlopsToyNoCostHead', force=True)
class ToyNoCostHead(_ToyMLP):
    """Declares no cost."""


def toy_cfg(head_type='TestFlopsToyMLPHead', **kwargs):
    cfg = tiny_model_cfg(num_classes=6, embed_dims=32, num_layers=5, out_indices=(1, 3, 4),
                         img_size=(64, 64), **kwargs)
    head = dict(type=head_type, in_channels=32, channels=24, num_classes=6)
    cfg.update(decode_head=dict(head), auxiliary_head=[dict(head), dict(head)])
    return cfg


@pytest.fixture(autouse=True)
def _scope():
    init_default_scope('mmseg')


@pytest.mark.parametrize('shape', [(64, 64), (72, 40)])
def test_toy_head_cost_matches_library_counter(shape):
    torch.manual_seed(0)
    model = MODELS.build(toy_cfg())
    dims = DToPCostDims.from_model(model)
    assert dims == DToPCostDims.from_config(toy_cfg())  # the meta build reads it too
    assert dims.heads == (model.decode_head.cost(), ) * 3
    lib = count_flops_library(model, shape)
    ana = dense_flops(dims, shape)
    assert_counts_match(lib, ana)
    assert lib['total'] / 1e9 == pytest.approx(ana['backbone_all_heads'] / 1e9, rel=1e-9)


def test_toy_head_pruned_forward_matches_library_counter():
    model = MODELS.build(toy_cfg()).eval()
    x = torch.randn(1, 3, 64, 64)
    counts = forced_exit_counts(model, {0: 10, 1: 3}, x)
    assert counts.tolist() == [[16, 10, 3]]
    fa = pruned_flop_analyzer(model, x)
    cost = model_flops(DToPCostDims.from_model(model), counts)
    assert fa.total() / 1e9 == pytest.approx(cost['backbone_all_heads'][0] / 1e9, rel=1e-9)
    by_module = fa.by_module()
    for s, name in enumerate(['model.auxiliary_head.0', 'model.auxiliary_head.1',
                              'model.decode_head']):
        assert by_module[name] == pytest.approx(cost['heads'][0, s], rel=1e-9), name
    # the trace wrapped the heads; it did not patch them
    assert 'forward_tokens' not in vars(model.decode_head)
    assert 'forward' not in vars(model.decode_head)


def test_head_without_cost_is_named():
    model = MODELS.build(toy_cfg('TestFlopsToyNoCostHead'))
    with pytest.raises(NotImplementedError, match='ToyNoCostHead does not declare its cost'):
        DToPCostDims.from_model(model)

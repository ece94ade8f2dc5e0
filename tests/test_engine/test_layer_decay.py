"""Layer-wise lr decay over the ViT's blocks (backbone layers, then the EoMT head's
query blocks), EoMT's two-stage warm-up, and the head's blocks loaded from a DINOv2
checkpoint."""
import pytest
import torch
from mmengine.optim import build_optim_wrapper
from mmseg.registry import MODELS

from dtop.engine.layer_decay import TwoStageWarmupPolyLR, block_depth, two_stage_factor
from dtop.utils.errors import CheckpointMismatchError, OptionError
from tests.utils.tiny_models import tiny_model_cfg


def _model():
    model = MODELS.build(tiny_model_cfg('eomt', num_layers=4, out_indices=(1, 3),
                                        num_blocks=2))
    model.init_weights()
    return model


def _wrapper(model, decay=0.5, lr=1e-3, wd=0.05):
    return build_optim_wrapper(model, dict(
        type='OptimWrapper', optimizer=dict(type='AdamW', lr=lr, weight_decay=wd),
        constructor='ViTLayerDecayOptimWrapperConstructor',
        paramwise_cfg=dict(decay_rate=decay)))


def test_block_depth():
    assert block_depth('backbone.patch_embed.proj.weight', 4) == -1
    assert block_depth('backbone.register_tokens', 4) == -1
    assert block_depth('backbone.layers.3.mlp.fc1.weight', 4) == 3
    assert block_depth('decode_head.blocks.1.attn.qkv.weight', 4) == 5
    assert block_depth('decode_head.query.weight', 4) is None
    assert block_depth('auxiliary_head.0.input_proj.weight', 4) is None


def test_every_parameter_gets_its_block_lr_and_weight_decay():
    model = _model()
    wrapper = _wrapper(model)
    lr_of, wd_of = {}, {}
    for group in wrapper.optimizer.param_groups:
        for p in group['params']:
            lr_of[id(p)], wd_of[id(p)] = group['lr'], group['weight_decay']
    named = dict(model.named_parameters())
    assert set(lr_of) == {id(p) for p in named.values()}  # every parameter, once
    total = 4 + 2  # backbone layers + query blocks
    for name, p in named.items():
        depth = block_depth(name, 4)
        expected = 1e-3 * (1.0 if depth is None else 0.5 ** (total - 1 - depth))
        assert lr_of[id(p)] == pytest.approx(expected), name
        no_decay = p.ndim <= 1 or name.endswith(('cls_token', 'pos_embed', 'register_tokens'))
        assert wd_of[id(p)] == (0.0 if no_decay else 0.05), name
    # the last query block trains at the base lr, backbone block 0 at decay^5
    assert lr_of[id(named['decode_head.blocks.1.attn.qkv.weight'])] == pytest.approx(1e-3)
    assert lr_of[id(named['backbone.layers.0.attn.qkv.weight'])] == pytest.approx(1e-3 / 32)


@pytest.mark.parametrize('bad', [dict(), dict(decay_rate=0), dict(decay_rate=1.5),
                                 dict(decay_rate=0.8, custom_keys={})])
def test_bad_paramwise_cfg_is_one_option_error(bad):
    with pytest.raises(OptionError, match='paramwise_cfg'):
        build_optim_wrapper(_model(), dict(
            type='OptimWrapper', optimizer=dict(type='AdamW', lr=1e-3),
            constructor='ViTLayerDecayOptimWrapperConstructor', paramwise_cfg=bad))


def test_two_stage_factor_shape():
    w, total = (5, 10), 40
    head = [two_stage_factor(t, False, w, total) for t in range(total)]
    vit = [two_stage_factor(t, True, w, total) for t in range(total)]
    assert head[:6] == [t / 5 for t in range(6)] and vit[:6] == [0.0] * 6
    assert vit[5:16] == pytest.approx([t / 10 for t in range(11)])
    assert head[5:15] == [1.0] * 10
    assert head[15:] == vit[15:] == pytest.approx(
        [(1 - (t - 15) / 25) ** 0.9 for t in range(15, 40)])


def test_scheduler_drives_groups_of_the_constructor():
    model = _model()
    wrapper = _wrapper(model)
    sched = TwoStageWarmupPolyLR(wrapper, warmup_iters=(3, 4), end=20)
    seen = []
    for _ in range(20):
        seen.append({g['backbone']: g['lr'] / g['initial_lr']
                     for g in wrapper.optimizer.param_groups})
        wrapper.optimizer.step()
        sched.step()
    for t, ratios in enumerate(seen):
        assert ratios[True] == pytest.approx(two_stage_factor(t, True, (3, 4), 20))
        assert ratios[False] == pytest.approx(two_stage_factor(t, False, (3, 4), 20))


@pytest.mark.parametrize('kw', [dict(warmup_iters=(0, 4), end=20), dict(warmup_iters=(5, 10)),
                                dict(warmup_iters=(5, 10), end=12)])
def test_scheduler_rejects_bad_arguments(kw):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.randn(2))], lr=0.1)
    with pytest.raises(OptionError, match='TwoStageWarmupPolyLR'):
        TwoStageWarmupPolyLR(opt, **kw)


def test_head_blocks_come_from_the_vit_blocks_after_the_backbone(tmp_path):
    donor = MODELS.build(tiny_model_cfg('eomt', num_layers=6, out_indices=(1, 3, 5),
                                        final_norm=True))
    donor.init_weights()
    with torch.no_grad():
        for p in donor.backbone.parameters():
            p.add_(torch.randn_like(p))
    path = tmp_path / 'dinov2.pth'
    torch.save(dict(state_dict=donor.backbone.state_dict(), meta={}), path)
    cfg = tiny_model_cfg('eomt', num_layers=4, out_indices=(1, 3), num_blocks=2)
    cfg['decode_head']['init_cfg'] = dict(type='Pretrained', checkpoint=str(path),
                                          vit_block_offset=4)
    model = MODELS.build(cfg)
    model.init_weights()
    head = model.decode_head.state_dict()
    for j in range(2):
        for name, value in donor.backbone.layers[4 + j].state_dict().items():
            assert torch.equal(head[f'blocks.{j}.{name}'], value), name
    assert torch.equal(head['norm.weight'], donor.backbone.norm.weight)
    cfg['decode_head']['init_cfg']['vit_block_offset'] = 5  # block 6 does not exist
    with pytest.raises(CheckpointMismatchError, match='layers.6'):
        MODELS.build(cfg).init_weights()

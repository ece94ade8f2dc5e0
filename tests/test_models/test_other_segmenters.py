"""DToP on mmseg's SETR-naive and Segmenter models (docs/other_segmenters.md).

* p0 = 1: outputs (whole and slide) and losses equal mmseg's dense
  ``EncoderDecoder`` loaded from a checkpoint saved from it (strict loading);
* pruning on: a batch equals its images run one by one, and the packed fast path
  equals a per-image reference built from mmseg's own layers and heads;
* the configs (ViT-B and demo) resolve to the intended models.
"""
import copy
import os.path as osp

import pytest
import torch
from mmengine.config import Config, ConfigDict
from mmengine.runner import load_checkpoint
from mmseg.registry import MODELS

import dtop  # noqa: F401
from dtop.models.mmseg_dense import dtop_to_mmseg_state_dict, mmseg_dense_model_cfg
from tests.utils.tiny_models import tiny_model_cfg
from tests.utils.tiny_segmentor import images, samples_with_labels, sharpen_atm_head
from test_pruning_rule import reference_exits

ROOT = osp.abspath(osp.join(osp.dirname(__file__), '..', '..'))
NUM_CLASSES = 5
KINDS = ['setr', 'segmenter']


def model_cfg(kind, **kw):
    return tiny_model_cfg(kind, num_classes=NUM_CLASSES, **kw)


def perturb_mmseg(model, seed):
    """Non-trivial BN statistics / norms / logit scales on a freshly built model."""
    g = torch.Generator().manual_seed(seed + 50)
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g))
            elif isinstance(m, torch.nn.LayerNorm):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
            if name.endswith('conv_seg'):
                m.weight.copy_(0.5 * torch.randn(m.weight.shape, generator=g))


def sharpen(model, seed):
    """Confident, spread-out per-token predictions so that pruning happens."""
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for head in model.stage_heads:
            if hasattr(head, 'class_embed'):  # ATM auxiliary head
                # confident, but sigmoid(A) not saturated: exact ties would make
                # top-k order arbitrary
                sharpen_atm_head(head, g, q_scale=10, k_scale=10)
            elif hasattr(head, 'conv_seg'):  # SETR head: sharper softmax
                head.conv_seg.weight.copy_(
                    0.5 * torch.randn(head.conv_seg.weight.shape, generator=g))
                head.conv_seg.bias.copy_(torch.randn(head.conv_seg.bias.shape, generator=g))


def build_pair(kind, seed=0, **kw):
    """mmseg's dense model, saved as an mmseg checkpoint; ours loaded from it."""
    cfg = model_cfg(kind, **kw)
    mm_cfg, kept = mmseg_dense_model_cfg(cfg)
    torch.manual_seed(seed)
    mm = MODELS.build(mm_cfg)
    mm.init_weights()
    perturb_mmseg(mm, seed)
    ours = MODELS.build(cfg)
    ours.init_weights()
    return mm.eval(), ours.eval(), kept


def load_from_mmseg(kind, mm, ours, tmp_path):
    path = tmp_path / f'mmseg_{kind}.pth'
    torch.save(dict(meta=dict(), state_dict=mm.state_dict()), path)
    if kind == 'setr':
        load_checkpoint(ours, str(path), map_location='cpu', strict=True)
        return
    ckpt = torch.load(path, map_location='cpu')
    missing, unexpected = ours.load_state_dict(ckpt['state_dict'], strict=False)
    assert unexpected == []
    assert missing and all(k.startswith('auxiliary_head.') for k in missing)
    ours_keys = set(ours.state_dict())
    assert set(ckpt['state_dict']) == {k for k in ours_keys
                                       if not k.startswith('auxiliary_head.')}


def metas(n, h, w):
    return [dict(ori_shape=(h, w), img_shape=(h, w), pad_shape=(h, w))
            for _ in range(n)]


@pytest.mark.parametrize('kind', KINDS)
def test_mmseg_checkpoint_loads_and_p0_one_equals_mmseg(kind, tmp_path):
    mm, ours, kept = build_pair(kind, seed=1, img_size=(64, 64))
    load_from_mmseg(kind, mm, ours, tmp_path)
    assert kept == ([0, 1, 2] if kind == 'setr' else [])
    for mode, (h, w) in (('whole', (72, 88)), ('slide', (80, 112))):
        test_cfg = dict(mode=mode)
        if mode == 'slide':
            test_cfg.update(crop_size=(64, 64), stride=(32, 40))
        ours.test_cfg = ConfigDict(test_cfg)
        mm.test_cfg = ConfigDict(test_cfg)
        x = images(2, h, w, seed=1)
        with torch.no_grad():
            got = ours.inference(x, metas(2, h, w))
            ref = mm.inference(x, metas(2, h, w))
        assert got.shape == ref.shape == (2, NUM_CLASSES, h, w)
        torch.testing.assert_close(got.softmax(1), ref.softmax(1), rtol=0, atol=1e-5)
        # the per-pixel shift between log-probabilities and logits is all that differs
        torch.testing.assert_close(got.log_softmax(1), ref.log_softmax(1), rtol=0,
                                   atol=1e-4)


@pytest.mark.parametrize('kind', KINDS)
def test_p0_one_losses_equal_mmseg(kind):
    """Training at p0 = 1 is mmseg's training (BN statistics included)."""
    mm, ours, kept = build_pair(kind, seed=2)
    ours.load_state_dict(mm.state_dict(), strict=kind == 'setr')
    mm.train()
    ours.train()
    x, data = images(2, seed=2), samples_with_labels(2, 64, 64, seed=2, ignored=(5, 7))
    ref = mm.loss(x, copy.deepcopy(data))
    got = ours.loss(x, copy.deepcopy(data))
    assert ref
    for key, value in ref.items():
        torch.testing.assert_close(got[key], value, rtol=1e-5, atol=1e-5, msg=key)
    if kind == 'segmenter':
        assert {'aux_0.loss_ce', 'aux_1.loss_mask'} <= set(got)  # ATM auxiliary heads
    ours_buffers = dict(ours.named_buffers())
    for name, buf in mm.named_buffers():
        torch.testing.assert_close(ours_buffers[name], buf, msg=name)


def build_pruning(kind, seed, **kw):
    torch.manual_seed(seed)
    model = MODELS.build(model_cfg(kind, **kw))
    model.init_weights()
    perturb_mmseg(model, seed)
    sharpen(model, seed)
    return model.eval()


PRUNE_KW = dict(setr=dict(prune_threshold=[0.8, 0.7, 0.7]),
                segmenter=dict(prune_threshold=[0.85, 0.8]))


@pytest.mark.parametrize('kind', KINDS)
def test_batch_equals_images_one_by_one(kind):
    model = build_pruning(kind, 3, img_size=(96, 96), keep_topk_per_class=2,
                          **PRUNE_KW[kind])
    x = images(4, 96, 96, seed=3)
    with torch.no_grad():
        batched = model.run_stages(x)
        singles = [model.run_stages(x[i:i + 1]) for i in range(4)]
    counts = batched.active_counts
    assert (counts[:, -1] < 36).all(), f'pruning did not happen: {counts.tolist()}'
    assert len({tuple(c.tolist()) for c in counts}) > 1, 'images share a pattern'
    for i, single in enumerate(singles):
        assert torch.equal(counts[i], single.active_counts[0])
        assert torch.equal(batched.exit_stage[i], single.exit_stage[0])
        for b_out, s_out in zip(batched.head_outputs, single.head_outputs):
            torch.testing.assert_close(b_out[1][i], s_out[1][0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(batched.final_map[i], single.final_map[0],
                                   rtol=1e-5, atol=1e-5)


def _mmseg_setr_token_logits(head, tokens):
    """mmseg's SETRUPHead modules on a 1 x n grid, without the x4 upsample (which
    commutes with conv_seg; see test_setr_head.py)."""
    n, C = tokens.shape
    y = head.norm(tokens[None]).transpose(1, 2).reshape(1, C, 1, n)
    y = head.cls_seg(head.up_convs[0][0](y))
    return y[0, :, 0]  # (Q, n)


def reference_forward(model, mm, img):
    """One image, stage by stage on its gathered active tokens, with mmseg's own
    ViT layers, final norm and heads (ATM auxiliary heads: DToP's dense form)."""
    bb = model.backbone
    x, (h, w) = bb.embed(img)  # (1, 1 + N, C), cls token first
    N = h * w
    active = torch.arange(N)
    canvas = torch.zeros(1, NUM_CLASSES, N)
    counts = []
    for s, (start, end) in enumerate(bb.stage_ranges):
        final = s == bb.num_stages - 1
        idx = torch.cat([torch.zeros(1, dtype=torch.long), active + 1])
        xa = x[:, idx]
        for layer in mm.backbone.layers[start:end]:
            xa = layer(xa)  # mmseg's layer: nn.MultiheadAttention on cls + active
        x = x.clone()
        x[:, idx] = xa
        patches = xa[:, 1:]
        if final:
            patches = mm.backbone.ln1(patches)
        counts.append(len(active))
        head = model.stage_heads[s]
        if hasattr(head, 'class_embed'):  # ATM (Segmenter's auxiliary heads)
            cls, mask = head(patches)
            scores = cls.softmax(-1)[..., 0, None] * mask.sigmoid()  # (1, Q, n)
            log_probs = (scores.clamp_min(1e-12).log()
                         - scores.sum(1, keepdim=True).log())
        else:
            mm_head = mm.decode_head if final else mm.auxiliary_head[s]
            if hasattr(mm_head, 'cls_emb'):  # Segmenter: its whole forward
                grid = patches.transpose(1, 2).reshape(1, -1, 1, len(active))
                logits = mm_head([grid] * (mm_head.in_index + 1))  # reads its in_index
                logits = logits[:, :, 0]
            else:
                logits = _mmseg_setr_token_logits(mm_head, patches[0])[None]
            scores, log_probs = logits.softmax(1), logits.log_softmax(1)
        canvas = canvas.clone()
        canvas[:, :, active] = log_probs
        p0 = None if final else model.prune_threshold[s]
        if p0 is not None:
            exits = reference_exits(scores, p0, model.keep_topk_per_class)[0]
            active = active[~exits]
    return canvas.view(1, NUM_CLASSES, h, w), counts


@pytest.mark.parametrize('kind', KINDS)
def test_fast_path_equals_per_image_reference(kind):
    model = build_pruning(kind, 4, img_size=(80, 96), keep_topk_per_class=2,
                          **PRUNE_KW[kind])
    mm_cfg, kept = mmseg_dense_model_cfg(model_cfg(kind, img_size=(80, 96)))
    mm = MODELS.build(mm_cfg)
    mm.load_state_dict(dtop_to_mmseg_state_dict(model.state_dict(), kept), strict=True)
    mm.eval()
    x = images(3, 80, 96, seed=4)
    with torch.no_grad():
        fast = model.run_stages(x)
        for i in range(3):
            ref, counts = reference_forward(model, mm, x[i:i + 1])
            assert fast.active_counts[i].tolist() == counts
            torch.testing.assert_close(fast.final_map[i:i + 1], ref, rtol=1e-5, atol=1e-5)
    assert (fast.active_counts[:, -1] < 30).all(), 'pruning did not happen'


def test_mmseg_dense_cfg_refuses_atm_decode_head():
    with pytest.raises(ValueError, match='no mmseg counterpart'):
        mmseg_dense_model_cfg(tiny_model_cfg('segvit'))


# ----------------------------------------------------------------------- configs
VIT_B = {
    'setr': ('configs/setr/setr-naive_vit-b16_4xb4-160k_ade20k-512x512.py',
             'configs/dtop/dtop_setr-naive_vit-b16_4xb4-40k_ade20k-512x512.py'),
    'segmenter': ('configs/segmenter/segmenter-mask_vit-b16_4xb4-160k_ade20k-512x512.py',
                  'configs/dtop/dtop_segmenter-mask_vit-b16_4xb4-40k_ade20k-512x512.py'),
}
DEMO = {
    'setr': ('configs/demo/setr-naive_vit-t16-8l_1xb8-1200_demo-128x128.py',
             'configs/demo/dtop_setr-naive_vit-t16-8l_1xb8-100_demo-128x128.py'),
    'segmenter': ('configs/demo/segmenter-mask_vit-t16-8l_1xb8-1200_demo-128x128.py',
                  'configs/demo/dtop_segmenter-mask_vit-t16-8l_1xb8-100_demo-128x128.py'),
}


def _strip(model):
    model = copy.deepcopy(model.to_dict() if hasattr(model, 'to_dict') else model)
    model.pop('prune_threshold')
    return model


@pytest.mark.parametrize('kind', KINDS)
def test_vit_b_configs(kind):
    from dtop.evaluation.flops import DToPCostDims
    base, prune = (Config.fromfile(osp.join(ROOT, p)) for p in VIT_B[kind])
    assert base.model.prune_threshold == 1.0
    assert _strip(base.model) == _strip(prune.model)  # the BASE checkpoint loads exactly
    dims = DToPCostDims.from_config(base.model)
    bb = base.model.backbone
    assert bb.with_cls_token and bb.final_norm and not bb.patch_bias
    assert dims.num_prefix_tokens == 1 and dims.final_norm
    if kind == 'setr':
        assert bb.out_indices == [3, 6, 9, 11] and dims.stage_layers == (4, 3, 3, 2)
        assert [h.name for h in dims.heads] == ['DToPSETRUPHead'] * 4
        assert prune.model.prune_threshold == [0.95, 0.9, 0.9]
        mm_cfg, kept = mmseg_dense_model_cfg(base.model)
        assert kept == [0, 1, 2]
        assert [h['in_index'] for h in mm_cfg['auxiliary_head']] == [0, 1, 2]
        assert [h['loss_decode']['loss_weight'] for h in mm_cfg['auxiliary_head']] == [0.4] * 3
    else:
        assert bb.out_indices == [5, 7, 11] and dims.stage_layers == (6, 2, 4)
        assert [h.name for h in dims.heads] == ['ATMPruneHead', 'ATMPruneHead',
                                                'DToPSegmenterMaskHead']
        assert prune.model.prune_threshold == 0.9
    assert dims.heads[-1].num_classes == 150 and dims.crop_size == (512, 512)
    assert prune.train_cfg.max_iters == 40000 and base.train_cfg.max_iters == 160000


@pytest.mark.parametrize('kind', KINDS)
def test_demo_configs(kind):
    base, prune = (Config.fromfile(osp.join(ROOT, p)) for p in DEMO[kind])
    segvit = Config.fromfile(
        osp.join(ROOT, 'configs/demo/segvit_vit-t16-8l_1xb8-1200_demo-128x128.py'))
    segvit_prune = Config.fromfile(
        osp.join(ROOT, 'configs/demo/dtop_segvit_vit-t16-8l_1xb8-100_demo-128x128.py'))
    assert _strip(base.model) == _strip(prune.model)  # the two copies agree
    # everything but the model comes from the SegViT demo configs
    for mine, theirs in ((base, segvit), (prune, segvit_prune)):
        for key in ('train_dataloader', 'test_dataloader', 'optim_wrapper',
                    'param_scheduler', 'train_cfg', 'default_hooks', 'custom_hooks'):
            assert mine[key] == theirs[key], key
        assert mine.model.prune_threshold == theirs.model.prune_threshold
        assert mine.model.test_cfg == theirs.model.test_cfg
    model = MODELS.build(base.model)
    bb = model.backbone
    assert bb.with_cls_token and bb.final_norm
    if kind == 'setr':
        assert bb.out_indices == [1, 3, 5, 7]
        assert len(model.auxiliary_head) == 3
    else:
        assert bb.out_indices == segvit.model.backbone.out_indices
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        out = model.eval()._forward(x)
    assert out.shape == (1, segvit.num_classes, 128, 128)

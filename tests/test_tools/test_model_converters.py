"""Model converters: timm / AugReg / mmpretrain ViT -> DToP backbone, official layout."""
import math
import os.path as osp
import re
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import dtop  # noqa: F401  (registers DToPVisionTransformer)
from mmseg.registry import MODELS

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
C, HEADS, LAYERS, IMG = 64, 4, 4, 64          # 4x4 tokens + cls slot
OUT_INDICES = (1, 3)


# The converters are scripts; import them the way they import each other.
sys.path.insert(0, osp.join(ROOT, 'tools', 'model_converters'))
import mmpretrain2mmseg  # noqa: E402
import vit2mmseg  # noqa: E402


def build_backbone(**kwargs):
    cfg = dict(type='DToPVisionTransformer', img_size=(IMG, IMG), patch_size=16,
               embed_dims=C, num_layers=LAYERS, num_heads=HEADS, mlp_ratio=4,
               out_indices=list(OUT_INDICES), qkv_bias=True, patch_bias=True,
               drop_path_rate=0.0, norm_cfg=dict(type='LN', eps=1e-6),
               final_norm=False, interpolate_mode='bicubic')
    cfg.update(kwargs)
    model = MODELS.build(cfg)
    model.eval()  # mmseg's VisionTransformer.train() returns None, so no chaining
    return model


def load_strict(model, state_dict):
    result = model.load_state_dict(state_dict, strict=True)
    assert not result.missing_keys and not result.unexpected_keys


# ----------------------------------------------------------------------------- timm
def fake_timm_state_dict(seed=0, cls=True, qkv_bias=True, pos_cls_slot=True, head=True):
    """Random weights in timm ``VisionTransformer`` key layout (no timm needed)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=0.1, offset=0.0):
        return torch.randn(*shape, generator=g) * scale + offset

    n = (IMG // 16) ** 2
    sd = {}
    if cls:
        sd['cls_token'] = r(1, 1, C)
    sd['pos_embed'] = r(1, n + (1 if pos_cls_slot else 0), C)
    sd['patch_embed.proj.weight'] = r(C, 3, 16, 16, scale=0.02)
    sd['patch_embed.proj.bias'] = r(C)
    for i in range(LAYERS):
        p = f'blocks.{i}.'
        sd[p + 'norm1.weight'] = r(C, offset=1.0)
        sd[p + 'norm1.bias'] = r(C)
        sd[p + 'attn.qkv.weight'] = r(3 * C, C)
        if qkv_bias:
            sd[p + 'attn.qkv.bias'] = r(3 * C)
        sd[p + 'attn.proj.weight'] = r(C, C)
        sd[p + 'attn.proj.bias'] = r(C)
        sd[p + 'norm2.weight'] = r(C, offset=1.0)
        sd[p + 'norm2.bias'] = r(C)
        sd[p + 'mlp.fc1.weight'] = r(4 * C, C)
        sd[p + 'mlp.fc1.bias'] = r(4 * C)
        sd[p + 'mlp.fc2.weight'] = r(C, 4 * C)
        sd[p + 'mlp.fc2.bias'] = r(C)
    sd['norm.weight'] = r(C, offset=1.0)
    sd['norm.bias'] = r(C)
    if head:
        sd['head.weight'] = r(10, C)
        sd['head.bias'] = r(10)
    return sd


def timm_reference_features(sd, img, out_indices=OUT_INDICES):
    """Hand-written timm ViT forward over the patch tokens only (DToP drops cls).

    Returns ``(B, C, h, w)`` features after the layers in ``out_indices``.
    """
    x = F.conv2d(img, sd['patch_embed.proj.weight'], sd['patch_embed.proj.bias'], stride=16)
    B, _, h, w = x.shape
    x = x.flatten(2).transpose(1, 2)
    pos = sd['pos_embed']
    x = x + (pos[:, 1:] if pos.shape[1] == h * w + 1 else pos)
    outs = []
    for i in range(LAYERS):
        p = f'blocks.{i}.'
        y = F.layer_norm(x, (C,), sd[p + 'norm1.weight'], sd[p + 'norm1.bias'], 1e-6)
        qkv = F.linear(y, sd[p + 'attn.qkv.weight'], sd.get(p + 'attn.qkv.bias'))
        q, k, v = qkv.reshape(B, -1, 3, HEADS, C // HEADS).permute(2, 0, 3, 1, 4)
        attn = (q @ k.transpose(-2, -1) / math.sqrt(C // HEADS)).softmax(-1)
        y = (attn @ v).transpose(1, 2).reshape(B, -1, C)
        x = x + F.linear(y, sd[p + 'attn.proj.weight'], sd[p + 'attn.proj.bias'])
        y = F.layer_norm(x, (C,), sd[p + 'norm2.weight'], sd[p + 'norm2.bias'], 1e-6)
        y = F.linear(F.gelu(F.linear(y, sd[p + 'mlp.fc1.weight'], sd[p + 'mlp.fc1.bias'])),
                     sd[p + 'mlp.fc2.weight'], sd[p + 'mlp.fc2.bias'])
        x = x + y
        if i in out_indices:
            outs.append(x.transpose(1, 2).reshape(B, C, h, w))
    return outs


def assert_features_match(model, ref_outs, img):
    with torch.no_grad():
        outs = model(img)
    assert len(outs) == len(ref_outs)
    for o, r in zip(outs, ref_outs):
        assert o.shape == r.shape
        torch.testing.assert_close(o, r, rtol=1e-4, atol=1e-4)


def test_timm_pth_cli_converts_loads_strictly_and_matches_reference(tmp_path, capsys):
    sd = fake_timm_state_dict()
    src, dst = tmp_path / 'vit_timm.pth', tmp_path / 'out' / 'vit_mmseg.pth'
    torch.save({'model': sd, 'epoch': 3}, src)          # DeiT-style wrapper
    vit2mmseg.main([str(src), str(dst)])
    report = capsys.readouterr().out
    assert 'dropped 4 keys' in report and 'head.weight' in report and 'norm.weight' in report
    converted = torch.load(dst, map_location='cpu', weights_only=True)
    assert converted['pos_embed'].shape == (1, 17, C)     # cls slot kept
    assert not any(k.startswith(('head', 'norm', 'ln1.')) for k in converted)
    model = build_backbone()
    load_strict(model, converted)
    img = torch.randn(2, 3, IMG, IMG, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = timm_reference_features(sd, img)
    assert_features_match(model, ref, img)


def test_converted_file_initialises_backbone_via_pretrained_init_cfg(tmp_path):
    """The way configs use it: init_cfg=Pretrained, pos_embed resized to a new crop."""
    sd = fake_timm_state_dict(seed=9)
    dst = tmp_path / 'vit.pth'
    vit2mmseg.convert_file(_save(sd, tmp_path / 'timm.pth'), str(dst))
    model = build_backbone(img_size=(96, 96),
                           init_cfg=dict(type='Pretrained', checkpoint=str(dst)))
    model.init_weights()
    assert model.pos_embed.shape == (1, 1 + 36, C)
    torch.testing.assert_close(model.patch_embed.projection.bias.detach(),
                               sd['patch_embed.proj.bias'])
    torch.testing.assert_close(model.layers[3].ffn.layers[1].weight.detach(),
                               sd['blocks.3.mlp.fc2.weight'])


def _save(obj, path):
    torch.save(obj, path)
    return str(path)


def test_timm_variants_gap_no_qkv_bias_and_final_norm():
    """class_token=False (pos without cls slot), qkv_bias=False, --keep-final-norm."""
    sd = fake_timm_state_dict(seed=2, cls=False, qkv_bias=False, pos_cls_slot=False)
    sd['fc_norm.weight'], sd['fc_norm.bias'] = torch.ones(C), torch.zeros(C)
    out, dropped, notes = vit2mmseg.convert_timm_vit(sd, keep_final_norm=True)
    assert out['pos_embed'].shape == (1, 17, C) and out['pos_embed'][0, 0].abs().sum() == 0
    assert torch.equal(out['cls_token'], torch.zeros(1, 1, C))
    assert torch.equal(out['layers.0.attn.attn.in_proj_bias'], torch.zeros(3 * C))
    assert torch.equal(out['ln1.weight'], sd['norm.weight'])
    assert set(dropped) == {'head.weight', 'head.bias', 'fc_norm.weight', 'fc_norm.bias'}
    assert any('cls slot' in n for n in notes) and any('qkv' in n for n in notes)
    model = build_backbone()
    out.pop('ln1.weight'), out.pop('ln1.bias')  # DToP: final_norm=False
    load_strict(model, out)
    img = torch.randn(1, 3, IMG, IMG)
    with torch.no_grad():
        ref = timm_reference_features(sd, img)
    assert_features_match(model, ref, img)


def timm_to_jax(sd, scanned=False, prefix='', big_vision=False):
    """Inverse of the AugReg layout: timm weights -> jax arrays as in the .npz files."""
    mha, mlp, ln2 = (0, 0, 1) if big_vision else (1, 3, 2)
    hd = C // HEADS
    w = {'embedding/kernel': sd['patch_embed.proj.weight'].permute(2, 3, 1, 0).numpy(),
         'embedding/bias': sd['patch_embed.proj.bias'].numpy(),
         'cls': sd['cls_token'].numpy(),
         'Transformer/posembed_input/pos_embedding': sd['pos_embed'].numpy(),
         'Transformer/encoder_norm/scale': sd['norm.weight'].numpy(),
         'Transformer/encoder_norm/bias': sd['norm.bias'].numpy(),
         'head/kernel': sd['head.weight'].T.numpy(), 'head/bias': sd['head.bias'].numpy()}
    blocks = []
    for i in range(LAYERS):
        p = f'blocks.{i}.'
        a = f'MultiHeadDotProductAttention_{mha}/'
        qw = sd[p + 'attn.qkv.weight'].reshape(3, C, C)
        qb = sd[p + 'attn.qkv.bias'].reshape(3, HEADS, hd)
        b = {'LayerNorm_0/scale': sd[p + 'norm1.weight'], 'LayerNorm_0/bias': sd[p + 'norm1.bias'],
             f'LayerNorm_{ln2}/scale': sd[p + 'norm2.weight'],
             f'LayerNorm_{ln2}/bias': sd[p + 'norm2.bias'],
             a + 'out/kernel': sd[p + 'attn.proj.weight'].T.reshape(HEADS, hd, C),
             a + 'out/bias': sd[p + 'attn.proj.bias']}
        for j, n in enumerate(('query', 'key', 'value')):
            b[f'{a}{n}/kernel'] = qw[j].T.reshape(C, HEADS, hd)
            b[f'{a}{n}/bias'] = qb[j]
        for r in range(2):
            b[f'MlpBlock_{mlp}/Dense_{r}/kernel'] = sd[p + f'mlp.fc{r + 1}.weight'].T
            b[f'MlpBlock_{mlp}/Dense_{r}/bias'] = sd[p + f'mlp.fc{r + 1}.bias']
        blocks.append({k: v.numpy() for k, v in b.items()})
    if scanned:
        for k in blocks[0]:
            w[f'Transformer/encoderblock/{k}'] = np.stack([b[k] for b in blocks])
    else:
        for i, b in enumerate(blocks):
            w.update({f'Transformer/encoderblock_{i}/{k}': v for k, v in b.items()})
    return {prefix + k: np.ascontiguousarray(v) for k, v in w.items()}


@pytest.mark.parametrize('scanned,prefix,big_vision', [
    (False, '', False),                 # AugReg npz (timm's augreg_* files)
    (False, 'opt/target/', False),      # original vision_transformer release
    (True, 'params/', True),            # big_vision, scanned blocks
])
def test_augreg_npz_equals_timm_conversion(tmp_path, scanned, prefix, big_vision):
    sd = fake_timm_state_dict(seed=3)
    src = tmp_path / 'augreg.npz'
    np.savez(src, **timm_to_jax(sd, scanned, prefix, big_vision))
    out, dropped, _ = vit2mmseg.convert_file(str(src), str(tmp_path / 'o.pth'))
    expected, _, _ = vit2mmseg.convert_timm_vit(sd)
    assert list(out) == list(expected)
    for k in expected:
        torch.testing.assert_close(out[k], expected[k], rtol=0, atol=1e-6, msg=k)
    assert {'head.kernel', 'head.bias', 'norm.weight', 'norm.bias'} == set(dropped)
    load_strict(build_backbone(), torch.load(tmp_path / 'o.pth', weights_only=True))


@pytest.mark.parametrize('key,words', [
    ('blocks.0.ls1.gamma', 'LayerScale'),
    ('dist_token', 'distillation'),
    ('blocks.1.attn.q_norm.weight', 'QK-norm'),
    ('some_adapter.weight', 'unexpected key'),
])
def test_timm_unsupported_keys_raise_clear_errors(key, words):
    sd = fake_timm_state_dict()
    sd[key] = torch.zeros(C)
    with pytest.raises(vit2mmseg.ConversionError, match=words):
        vit2mmseg.convert_timm_vit(sd)


def test_wrong_converter_hints_at_the_right_one(tmp_path):
    mp = {'backbone.patch_embed.projection.weight': torch.zeros(C, 3, 16, 16),
          'backbone.pos_embed': torch.zeros(1, 17, C)}
    with pytest.raises(vit2mmseg.ConversionError, match='mmpretrain2mmseg'):
        vit2mmseg.convert_timm_vit(mp)
    with pytest.raises(vit2mmseg.ConversionError, match='vit2mmseg'):
        mmpretrain2mmseg.convert_mmpretrain_vit(fake_timm_state_dict())
    with pytest.raises(SystemExit, match='not found|no tensors|error'):
        vit2mmseg.main([str(tmp_path / 'missing.pth'), str(tmp_path / 'x.pth')])


# ----------------------------------------------------------------------------- mmpretrain
def build_mmpretrain_vit(seed, **kwargs):
    from mmpretrain.models.backbones import VisionTransformer as MMPretrainViT
    cfg = dict(arch=dict(embed_dims=C, num_layers=LAYERS, num_heads=HEADS,
                         feedforward_channels=4 * C),
               img_size=IMG, patch_size=16, out_indices=list(OUT_INDICES),
               drop_rate=0.0, drop_path_rate=0.0, norm_cfg=dict(type='LN', eps=1e-6),
               out_type='featmap', interpolate_mode='bicubic')
    cfg.update(kwargs)
    model = MMPretrainViT(**cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():                        # every parameter random, LN near 1
        for name, p in model.named_parameters():
            scale = 0.02 if 'patch_embed.projection.weight' in name else 0.1
            p.copy_(torch.randn(p.shape, generator=g) * scale
                    + (1.0 if re.search(r'(ln\d|pre_norm)\.weight$', name) else 0.0))
    model.eval()  # (its train() returns None too)
    return model


def save_mmpretrain_checkpoint(backbone, path):
    """A classifier checkpoint as mmpretrain writes it: meta + prefixed state_dict."""
    sd = {'backbone.' + k: v for k, v in backbone.state_dict().items()}
    sd['head.layers.head.weight'] = torch.randn(10, C)
    sd['head.layers.head.bias'] = torch.zeros(10)
    torch.save({'meta': {'mmpretrain_version': '1.2.0', 'epoch': 1}, 'state_dict': sd}, path)


def test_mmpretrain_with_cls_token_matches_its_layers(tmp_path, capsys):
    """Classifier-style ViT (cls token, final norm): converted weights reproduce
    mmpretrain's own modules run over the patch tokens (DToP drops the cls token)."""
    mp = build_mmpretrain_vit(seed=4, with_cls_token=True, final_norm=True)
    src, dst = tmp_path / 'mmpretrain_vit.pth', tmp_path / 'dtop_vit.pth'
    save_mmpretrain_checkpoint(mp, src)
    mmpretrain2mmseg.main([str(src), str(dst)])
    report = capsys.readouterr().out
    assert 'backbone.ln1.weight' in report and 'head.layers.head.weight' in report
    converted = torch.load(dst, map_location='cpu', weights_only=True)
    assert torch.equal(converted['pos_embed'], mp.pos_embed.detach())
    model = build_backbone()
    load_strict(model, converted)

    img = torch.randn(2, 3, IMG, IMG, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        x, (h, w) = mp.patch_embed(img)
        x = mp.pre_norm(x + mp.pos_embed[:, 1:])
        ref = []
        for i, layer in enumerate(mp.layers):
            x = layer(x)
            if i in OUT_INDICES:
                ref.append(x.transpose(1, 2).reshape(x.shape[0], C, h, w))
    assert_features_match(model, ref, img)


@pytest.mark.parametrize('pre_norm', [False, True])
def test_mmpretrain_without_cls_token_matches_full_forward(tmp_path, pre_norm):
    """with_cls_token=False (pos without cls slot), optionally CLIP-style pre_norm
    (patch conv without bias): our forward equals mmpretrain's forward."""
    mp = build_mmpretrain_vit(seed=6, with_cls_token=False, final_norm=False,
                              pre_norm=pre_norm)
    src = tmp_path / 'bare_backbone.pth'
    torch.save(mp.state_dict(), src)             # a bare backbone state dict
    out, dropped, notes = mmpretrain2mmseg.convert_file(str(src))
    assert out['pos_embed'].shape == (1, 17, C) and not dropped
    assert any('cls slot' in n for n in notes)
    assert ('ln_pre.weight' in out) == pre_norm
    model = build_backbone(pre_norm=pre_norm)
    load_strict(model, out)
    img = torch.randn(1, 3, IMG, IMG, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        ref = mp(img)
    assert_features_match(model, list(ref), img)


def test_mmpretrain_layer_scale_is_rejected():
    mp = build_mmpretrain_vit(seed=8, layer_scale_init_value=0.1)
    with pytest.raises(vit2mmseg.ConversionError, match='LayerScale'):
        mmpretrain2mmseg.convert_mmpretrain_vit(mp.state_dict())


# ----------------------------------------------------------------------------- official
# The official DToP state-dict layout (docs/model.md#checkpoint-layout), expanded for a
# tiny model: embed 64, 6 layers, heads after layers [1, 3, 5], channels 32, 5 classes,
# 3 decoder layers per head, 64x64 crop. {L} = backbone layer, {D} = decoder layer; every head prefix below.
OFFICIAL_BACKBONE = [
    ('backbone.cls_token', (1, 1, 64)),
    ('backbone.pos_embed', (1, 17, 64)),
    ('backbone.patch_embed.projection.weight', (64, 3, 16, 16)),
    ('backbone.patch_embed.projection.bias', (64,)),
    ('backbone.layers.{L}.ln1.weight', (64,)),
    ('backbone.layers.{L}.ln1.bias', (64,)),
    ('backbone.layers.{L}.attn.attn.in_proj_weight', (192, 64)),
    ('backbone.layers.{L}.attn.attn.in_proj_bias', (192,)),
    ('backbone.layers.{L}.attn.attn.out_proj.weight', (64, 64)),
    ('backbone.layers.{L}.attn.attn.out_proj.bias', (64,)),
    ('backbone.layers.{L}.ln2.weight', (64,)),
    ('backbone.layers.{L}.ln2.bias', (64,)),
    ('backbone.layers.{L}.ffn.layers.0.0.weight', (256, 64)),
    ('backbone.layers.{L}.ffn.layers.0.0.bias', (256,)),
    ('backbone.layers.{L}.ffn.layers.1.weight', (64, 256)),
    ('backbone.layers.{L}.ffn.layers.1.bias', (64,)),
]
OFFICIAL_HEAD = [
    ('loss_decode.criterion.empty_weight', (2,)),
    ('input_proj.weight', (32, 64)),
    ('input_proj.bias', (32,)),
    ('proj_norm.weight', (32,)),
    ('proj_norm.bias', (32,)),
    ('decoder.layers.{D}.self_attn.in_proj_weight', (96, 32)),
    ('decoder.layers.{D}.self_attn.in_proj_bias', (96,)),
    ('decoder.layers.{D}.self_attn.out_proj.weight', (32, 32)),
    ('decoder.layers.{D}.self_attn.out_proj.bias', (32,)),
    ('decoder.layers.{D}.linear1.weight', (128, 32)),
    ('decoder.layers.{D}.linear1.bias', (128,)),
    ('decoder.layers.{D}.linear2.weight', (32, 128)),
    ('decoder.layers.{D}.linear2.bias', (32,)),
    ('decoder.layers.{D}.norm1.weight', (32,)),
    ('decoder.layers.{D}.norm1.bias', (32,)),
    ('decoder.layers.{D}.norm2.weight', (32,)),
    ('decoder.layers.{D}.norm2.bias', (32,)),
    ('decoder.layers.{D}.norm3.weight', (32,)),
    ('decoder.layers.{D}.norm3.bias', (32,)),
    ('decoder.layers.{D}.multihead_attn.q.weight', (32, 32)),
    ('decoder.layers.{D}.multihead_attn.q.bias', (32,)),
    ('decoder.layers.{D}.multihead_attn.k.weight', (32, 32)),
    ('decoder.layers.{D}.multihead_attn.k.bias', (32,)),
    ('decoder.layers.{D}.multihead_attn.v.weight', (32, 32)),
    ('decoder.layers.{D}.multihead_attn.v.bias', (32,)),
    ('decoder.layers.{D}.multihead_attn.proj.weight', (32, 32)),
    ('decoder.layers.{D}.multihead_attn.proj.bias', (32,)),
    ('q.weight', (5, 32)),
    ('class_embed.weight', (2, 32)),
    ('class_embed.bias', (2,)),
]


def official_tiny_state_dict():
    keys = {}
    for name, shape in OFFICIAL_BACKBONE:
        for i in (range(6) if '{L}' in name else [None]):
            keys[name.format(L=i)] = shape
    for head in ('decode_head', 'auxiliary_head.0', 'auxiliary_head.1'):
        for name, shape in OFFICIAL_HEAD:
            for d in (range(3) if '{D}' in name else [None]):
                keys[f'{head}.{name.format(D=d)}'] = shape
    g = torch.Generator().manual_seed(0)
    sd = {k: torch.randn(s, generator=g) for k, s in keys.items()}
    for k in sd:
        if k.endswith('empty_weight'):
            sd[k] = torch.tensor([1.0, 0.1])
    return sd


def test_official_checkpoint_layout_loads_strictly():
    """The official implementation's keys/shapes load into our model with no converter.

    Needs ``patch_bias=True`` on the backbone: mmseg >= 1.1's VisionTransformer
    defaults to no patch-embedding bias, while the official checkpoints (and the
    Segmenter ImageNet checkpoints) have one.
    """
    from mmseg.utils import register_all_modules
    from tests.utils.tiny_models import tiny_model_cfg
    register_all_modules(init_default_scope=False)
    cfg = tiny_model_cfg(num_classes=5, embed_dims=64, num_layers=6, out_indices=(1, 3, 5),
                         channels=32, head_heads=2, head_layers=3, img_size=(64, 64))
    cfg['backbone'].update(mlp_ratio=4, patch_bias=True)
    model = MODELS.build(cfg)
    official = official_tiny_state_dict()
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert set(ours) == set(official), (sorted(set(ours) - set(official)),
                                        sorted(set(official) - set(ours)))
    assert all(ours[k] == tuple(official[k].shape) for k in ours)
    load_strict(model, official)
    assert torch.equal(model.state_dict()['backbone.layers.5.ffn.layers.1.bias'],
                       official['backbone.layers.5.ffn.layers.1.bias'])

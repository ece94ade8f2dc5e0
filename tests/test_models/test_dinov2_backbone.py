"""DToPDinov2: equals transformers' DINOv2 (with registers, SwiGLU, interpolated
position embedding) and timm's reg4 DINOv2 once converted; packed execution equals
dense per image; it runs in DToP's stage loop.

Tiny models built from configs with random weights: no download."""
import pytest
import torch

import dtop  # noqa: F401  (registers DToPDinov2)
from dtop.models.backbones.dinov2 import DToPDinov2, interpolate_pos_embed
from dtop.models.converters import convert_hf_dinov2, convert_timm_dinov2
from tests.utils.random_weights import randomize  # noqa: E402

C, LAYERS, HEADS, REGS, PATCH, IMG = 64, 4, 4, 4, 14, 56



def hf_model(seed=0, swiglu=False, registers=REGS):
    transformers = pytest.importorskip('transformers')
    if registers:
        cfg = transformers.Dinov2WithRegistersConfig(
            hidden_size=C, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
            num_register_tokens=registers, patch_size=PATCH, image_size=IMG,
            use_swiglu_ffn=swiglu)
        model = transformers.Dinov2WithRegistersModel(cfg)
    else:
        cfg = transformers.Dinov2Config(hidden_size=C, num_hidden_layers=LAYERS,
                                        num_attention_heads=HEADS, patch_size=PATCH,
                                        image_size=IMG, use_swiglu_ffn=swiglu)
        model = transformers.Dinov2Model(cfg)
    return randomize(model, seed)


def ours(state_dict, **kwargs):
    cfg = dict(img_size=IMG, patch_size=PATCH, embed_dims=C, num_layers=LAYERS,
               num_heads=HEADS, num_register_tokens=REGS, out_indices=(1, 3))
    cfg.update(kwargs)
    model = DToPDinov2(**cfg).eval()
    result = model.load_state_dict(state_dict, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    return model


def packed_tokens(model, img):
    """embed_packed → every layer via forward_layers_packed → norm, as (B, L, C)."""
    x, pos, segs, (h, w) = model.embed_packed(img)
    x = model.norm(model.forward_layers_packed(x, segs, 0, len(model.layers)))
    return x.view(img.shape[0], -1, C)


def images(n, h, w, seed=0):
    return torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize('swiglu', [False, True])
@pytest.mark.parametrize('size', [(IMG, IMG), (42, 84)])
def test_equals_transformers_with_registers(size, swiglu):
    """Native square grid (no interpolation) and a 3x6 grid (rows downsampled,
    columns upsampled); GELU MLP and SwiGLU FFN."""
    ref = hf_model(seed=1, swiglu=swiglu)
    model = ours(convert_hf_dinov2(ref.state_dict()),
                 ffn_type='swiglu' if swiglu else 'mlp')
    img = images(2, *size, seed=2)
    with torch.no_grad():
        expected = ref(pixel_values=img).last_hidden_state
        got = packed_tokens(model, img)
    assert got.shape == expected.shape == (2, 1 + REGS + size[0] * size[1] // PATCH ** 2, C)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_equals_plain_transformers_dinov2_without_antialias():
    """transformers' Dinov2Model (no registers) resizes without antialiasing."""
    ref = hf_model(seed=3, registers=0)
    model = ours(convert_hf_dinov2(ref.state_dict()), num_register_tokens=0,
                 interpolate_antialias=False)
    img = images(1, 70, 42, seed=4)
    with torch.no_grad():
        torch.testing.assert_close(packed_tokens(model, img),
                                   ref(pixel_values=img).last_hidden_state, rtol=0, atol=1e-5)


def test_batch_equals_images_alone_and_forward_matches_head_tokens():
    ref = hf_model(seed=5)
    model = ours(convert_hf_dinov2(ref.state_dict()))
    img = images(2, 42, 84, seed=6)
    h, w = 3, 6
    with torch.no_grad():
        batch = packed_tokens(model, img)
        for i in range(2):
            torch.testing.assert_close(batch[i:i + 1], packed_tokens(model, img[i:i + 1]),
                                       rtol=0, atol=1e-6)
        feats = model(img)
        x, pos, segs, grid = model.embed_packed(img)
        assert grid == (h, w) and model.prefix_mask(pos).sum() == 2 * (1 + REGS)
        assert pos.tolist()[:1 + REGS + 1] == list(range(-1 - REGS, 1))
        x1 = model.forward_layers_packed(x, segs, 0, 2)
        t1, p1, s1 = model.head_tokens(x1, pos, segs, final=False)
        t2, _, _ = model.head_tokens(model.forward_layers_packed(x1, segs, 2, 4), pos, segs,
                                     final=True)
    assert s1.lengths == [h * w] * 2 and (p1 >= 0).all()
    assert [f.shape for f in feats] == [(2, C, h, w)] * 2
    torch.testing.assert_close(feats[0], t1.view(2, h, w, C).permute(0, 3, 1, 2))
    torch.testing.assert_close(feats[1], t2.view(2, h, w, C).permute(0, 3, 1, 2))
    torch.testing.assert_close(feats[1].flatten(2).transpose(1, 2), batch[:, 1 + REGS:])


def test_ragged_packed_layers_equal_dense_blocks_per_image():
    """Pruned-like ragged packing: each image's kept tokens through the packed layers
    equal Dinov2Block.forward on that image alone (every attention backend)."""
    torch.manual_seed(0)
    model = randomize(DToPDinov2(img_size=IMG, patch_size=PATCH, embed_dims=C,
                                 num_layers=2, num_heads=HEADS, num_register_tokens=2,
                                 ffn_type='swiglu'), seed=7)
    img = images(3, IMG, IMG, seed=8)
    with torch.no_grad():
        x, pos, segs, _ = model.embed_packed(img)
        g = torch.Generator().manual_seed(9)
        keep = model.prefix_mask(pos) | (torch.rand(pos.shape, generator=g) < 0.5)
        ragged = segs.select(keep)
        assert len(set(ragged.lengths)) > 1
        expected = [xi[None] for xi in ragged.split(x[keep])]
        for layer in model.layers:
            expected = [layer(e) for e in expected]
        for backend in ('loop', 'padded'):
            model.attention_backend = backend
            got = model.forward_layers_packed(x[keep], ragged, 0, 2)
            torch.testing.assert_close(got, torch.cat(expected, 1)[0], rtol=0, atol=1e-5)


def test_with_cp_training_gives_same_output_and_gradients():
    model = randomize(DToPDinov2(img_size=IMG, patch_size=PATCH, embed_dims=C, num_layers=2,
                                 num_heads=HEADS, num_register_tokens=1), seed=10).train()
    img = images(2, IMG, IMG, seed=11)
    outs = []
    for with_cp in (False, True):
        model.with_cp = with_cp
        model.zero_grad()
        out = model(img)[-1]
        out.square().mean().backward()
        outs.append((out.detach(), model.layers[0].attn.qkv.weight.grad.clone()))
    torch.testing.assert_close(outs[0][0], outs[1][0])
    torch.testing.assert_close(outs[0][1], outs[1][1])


def test_equals_timm_reg4_dinov2():
    """timm's VisionTransformer configured like ``vit_*_patch14_reg4_dinov2`` (no cls
    position); timm resizes the position embedding like transformers' registers
    model (bicubic, antialias, float32), so a non-square grid matches too."""
    timm_vit = pytest.importorskip('timm.models.vision_transformer')
    ref = timm_vit.VisionTransformer(
        img_size=IMG, patch_size=PATCH, embed_dim=C, depth=LAYERS, num_heads=HEADS,
        init_values=1e-5, reg_tokens=REGS, no_embed_class=True, dynamic_img_size=True,
        num_classes=0)
    randomize(ref, seed=12)
    sd, pos_embed_cls = convert_timm_dinov2(ref.state_dict())
    assert not pos_embed_cls
    model = ours(sd, pos_embed_cls=False)
    for size in ((IMG, IMG), (84, 42)):
        img = images(2, *size, seed=13)
        with torch.no_grad():
            torch.testing.assert_close(packed_tokens(model, img), ref.forward_features(img),
                                       rtol=0, atol=1e-5)


def test_corner_padding_and_interpolation_no_op():
    model = DToPDinov2(img_size=IMG, patch_size=PATCH, embed_dims=C, num_layers=1,
                       num_heads=HEADS)
    model.init_weights()
    assert model.pos_embed.std() > 0 and model.register_tokens is None
    img = images(1, 50, 60, seed=14)
    padded = torch.nn.functional.pad(img, (0, 10, 0, 6))
    with torch.no_grad():
        a, hw = model.embed(img)
        b, _ = model.embed(padded)
    assert hw == (4, 5)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert interpolate_pos_embed(model.pos_embed, (4, 4), (4, 4), 1) is model.pos_embed


@pytest.mark.parametrize('bad', [dict(out_indices=(2, 1)), dict(out_indices=(0, )),
                                 dict(ffn_type='geglu'), dict(num_register_tokens=-1)])
def test_invalid_arguments(bad):
    cfg = dict(img_size=IMG, patch_size=PATCH, embed_dims=C, num_layers=3, num_heads=HEADS)
    with pytest.raises(ValueError):
        DToPDinov2(**dict(cfg, **bad))


def test_runs_in_the_stage_loop_with_pruning():
    """A tiny DToP segmentor on DToPDinov2 (registers, no cls position): a pruned
    batch equals its images one by one (the stage loop is unchanged)."""
    from tests.utils.tiny_models import tiny_model_cfg
    from tests.utils.tiny_segmentor import (NUM_CLASSES, check_batch_equals_images_one_by_one,
                                            sharpen)
    from mmseg.registry import MODELS
    cfg = tiny_model_cfg(num_classes=NUM_CLASSES, prune_threshold=[0.55, 0.5],
                         keep_topk_per_class=1, img_size=(64, 64))
    cfg['backbone'] = dict(type='DToPDinov2', img_size=64, patch_size=16, embed_dims=32,
                           num_layers=6, num_heads=2, mlp_ratio=2, num_register_tokens=2,
                           pos_embed_cls=False, out_indices=(1, 3, 5), final_norm=False)
    torch.manual_seed(1)
    model = MODELS.build(cfg)
    model.init_weights()
    randomize(model.backbone, seed=15)
    sharpen(model, 1)
    model.eval()
    assert isinstance(model.backbone, DToPDinov2)
    check_batch_equals_images_one_by_one(model, images(4, 64, 64, seed=16), rtol=1e-5,
                                         atol=1e-5, map_atol=1e-6)

"""DToPVisionTransformer: mmseg-identical parameters, checkpoints, stage-wise execution."""
import pytest
import torch
from mmseg.models.backbones import VisionTransformer
from mmseg.registry import MODELS

import dtop  # noqa: F401
from dtop.models.backbones import DToPVisionTransformer
from dtop.models.packing import Segments

VIT_B = dict(embed_dims=768, num_layers=12, num_heads=12, out_indices=[5, 7, 11],
             drop_path_rate=0.1)
VIT_L = dict(embed_dims=1024, num_layers=24, num_heads=16, out_indices=[7, 15, 23],
             drop_path_rate=0.3)


def _common(img_size):
    return dict(img_size=img_size, patch_size=16, mlp_ratio=4, qkv_bias=True,
                with_cls_token=False, norm_cfg=dict(type='LN', eps=1e-6),
                final_norm=False, patch_norm=False, patch_bias=True,
                interpolate_mode='bicubic')


@pytest.mark.parametrize('dims,img', [(VIT_B, (512, 512)), (VIT_L, (640, 640))],
                         ids=['vit-b16', 'vit-l16'])
def test_state_dict_equals_mmseg_vit(dims, img):
    ours = DToPVisionTransformer(**_common(img), **dims)
    ref = VisionTransformer(**_common(img), **dims)
    a = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    b = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    assert a == b
    print(f'{dims["embed_dims"]}-wide backbone parameters: '
          f'{sum(p.numel() for p in ours.parameters()) / 1e6:.2f} M')


def tiny(**kw):
    cfg = dict(_common((64, 48)), embed_dims=32, num_layers=4, num_heads=2,
               out_indices=[1, 3])
    cfg.update(kw)
    return cfg


def test_mmseg_checkpoint_loads_and_matches_forward(tmp_path):
    torch.manual_seed(0)
    ref = VisionTransformer(**tiny())
    ref.init_weights()
    ref.eval()
    path = tmp_path / 'vit.pth'
    torch.save({'state_dict': ref.state_dict()}, path)
    ours = MODELS.build(dict(type='DToPVisionTransformer', **tiny(),
                             init_cfg=dict(type='Pretrained', checkpoint=str(path))))
    ours.init_weights()
    ours.eval()
    sd = torch.load(path)['state_dict']
    missing, unexpected = ours.load_state_dict(sd, strict=True)
    assert not missing and not unexpected
    x = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        for a, b in zip(ours(x), ref(x)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        # Other input size: position embeddings are resized the same way.
        x2 = torch.randn(1, 3, 80, 112)
        for a, b in zip(ours(x2), ref(x2)):
            assert a.shape == (1, 32, 5, 7)
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_pretrained_pos_embed_is_resized(tmp_path):
    torch.manual_seed(1)
    src = VisionTransformer(**tiny(img_size=(48, 48)))  # 3x3 grid (+ cls slot)
    path = tmp_path / 'small.pth'
    torch.save(src.state_dict(), path)
    ours = DToPVisionTransformer(**tiny(img_size=(64, 64)),
                                 init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    ours.init_weights()
    assert ours.pos_embed.shape == (1, 17, 32)
    torch.testing.assert_close(ours.layers[0].ln1.weight, src.layers[0].ln1.weight)


@pytest.mark.parametrize('backend', ['auto', 'loop', 'padded'])
def test_packed_layers_equal_mmseg_layers_per_image(backend):
    """Packed ragged images (one empty) == mmseg's own layers on each image alone."""
    torch.manual_seed(2)
    bb = DToPVisionTransformer(**tiny(), attention_backend=backend)
    bb.eval()
    lengths = [9, 5, 0, 7]
    x = torch.randn(sum(lengths), 32)
    segs = Segments.from_lengths(lengths, 'cpu')
    with torch.no_grad():
        packed = bb.forward_layers_packed(x, segs, 0, 4)
        for xb, pb in zip(segs.split(x), segs.split(packed)):
            if len(xb) == 0:
                assert len(pb) == 0
                continue
            ref = xb[None]
            for layer in bb.layers:
                ref = layer(ref)  # mmcv MultiheadAttention + FFN
            torch.testing.assert_close(pb, ref[0], rtol=1e-5, atol=1e-5)


def test_cls_token_and_final_norm_match_mmseg_vit():
    """with_cls_token + final_norm (Segmenter/SETR): same features as mmseg's ViT."""
    torch.manual_seed(3)
    cfg = dict(tiny(), with_cls_token=True, final_norm=True)
    ref = VisionTransformer(**cfg)
    ref.init_weights()
    ref.eval()
    ours = DToPVisionTransformer(**cfg)
    ours.load_state_dict(ref.state_dict(), strict=True)
    ours.eval()
    x = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        for a, b in zip(ours(x), ref(x)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(4)
    plain = DToPVisionTransformer(**tiny(), drop_path_rate=0.0)
    plain.train()
    ckpt = DToPVisionTransformer(**tiny(), drop_path_rate=0.0, with_cp=True)
    ckpt.load_state_dict(plain.state_dict())
    ckpt.train()
    assert all(layer.with_cp for layer in ckpt.layers)
    x = torch.randn(2, 3, 64, 48)
    grads = []
    for model in (plain, ckpt):
        model.zero_grad()
        sum((f * f).sum() for f in model(x)).backward()
        grads.append({k: p.grad.clone() for k, p in model.named_parameters()})
    for k in grads[0]:
        torch.testing.assert_close(grads[1][k], grads[0][k], rtol=1e-5, atol=1e-6)


def test_stage_ranges_and_bad_out_indices():
    bb = DToPVisionTransformer(**tiny(out_indices=[0, 2, 3]))
    assert bb.stage_ranges == [(0, 1), (1, 3), (3, 4)]
    with pytest.raises(ValueError, match='out_indices'):
        DToPVisionTransformer(**tiny(out_indices=[1, 2]))
    with pytest.raises(ValueError, match='output_cls_token'):
        DToPVisionTransformer(**dict(tiny(), with_cls_token=True, output_cls_token=True))


def test_patch_bias_on_by_default_as_in_official_checkpoints():
    bb = DToPVisionTransformer(**{k: v for k, v in tiny().items() if k != 'patch_bias'})
    assert 'patch_embed.projection.bias' in bb.state_dict()

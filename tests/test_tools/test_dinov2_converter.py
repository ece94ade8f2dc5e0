"""tools/model_converters/dinov2_to_dtop.py and dtop.models.converters: transformers
``save_pretrained`` folders and timm checkpoints → DToPDinov2 weights that load
strictly through ``init_cfg=Pretrained`` and reproduce the source model; patch
resampling; EoMT layer naming; one ``error:`` line for bad input.

Tiny models built from configs with random weights: no download."""
import importlib.util
import os.path as osp

import pytest
import torch
import torch.nn.functional as F

import dtop  # noqa: F401  (registers DToPDinov2, the safe checkpoint loader)
from dtop.models.backbones.dinov2 import DToPDinov2
from dtop.models.converters import (ConversionError, MissingPackageError, convert_hf_dinov2,
                                    convert_hf_layer, resample_patch_embed)
from dtop.models.dinov2_layers import Dinov2Block
from dtop.utils.checkpoint import compare_state_dict
from dtop.utils.errors import CheckpointMismatchError, run_cli
from tests.utils.random_weights import randomize  # noqa: E402

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
C, LAYERS, HEADS, REGS, PATCH, IMG = 64, 4, 4, 4, 14, 56


def load_tool():
    path = osp.join(ROOT, 'tools', 'model_converters', 'dinov2_to_dtop.py')
    spec = importlib.util.spec_from_file_location('dinov2_to_dtop_tool', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TOOL = load_tool()



def hf_registers_model(seed=0, swiglu=False):
    transformers = pytest.importorskip('transformers')
    cfg = transformers.Dinov2WithRegistersConfig(
        hidden_size=C, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
        num_register_tokens=REGS, patch_size=PATCH, image_size=IMG, use_swiglu_ffn=swiglu)
    return randomize(transformers.Dinov2WithRegistersModel(cfg), seed)


def backbone(checkpoint=None, **kwargs):
    cfg = dict(img_size=IMG, patch_size=PATCH, embed_dims=C, num_layers=LAYERS,
               num_heads=HEADS, num_register_tokens=REGS, out_indices=(1, 3))
    cfg.update(kwargs)
    if checkpoint is not None:
        cfg['init_cfg'] = dict(type='Pretrained', checkpoint=str(checkpoint))
    model = DToPDinov2(**cfg)
    model.init_weights()
    return model.eval()


def tokens(model, img):
    x, _, segs, _ = model.embed_packed(img)
    x = model.norm(model.forward_layers_packed(x, segs, 0, len(model.layers)))
    return x.view(img.shape[0], -1, C)


def images(n, h, w, seed=0):
    return torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize('swiglu', [False, True])
def test_save_pretrained_folder_converts_loads_strictly_and_matches(tmp_path, capsys, swiglu):
    ref = hf_registers_model(seed=1, swiglu=swiglu)
    ref.save_pretrained(str(tmp_path / 'hf'))          # model.safetensors, on-disk names
    dst = tmp_path / 'out' / 'dinov2.pth'
    TOOL.main([str(tmp_path / 'hf'), str(dst)])
    report = capsys.readouterr().out
    assert 'converted' in report and 'embeddings.mask_token' in report
    assert f"ffn_type='{'swiglu' if swiglu else 'mlp'}'" in report
    ckpt = torch.load(dst, map_location='cpu', weights_only=True)
    assert ckpt['meta']['arch']['pos_embed_cls'] and ckpt['meta']['source'] == 'hf'
    ffn = dict(ffn_type='swiglu' if swiglu else 'mlp')
    diff = compare_state_dict(backbone(**ffn), ckpt['state_dict'])
    assert diff.ok, diff                               # no missing/unexpected/shape
    # loaded on the stored grid, and resized at load to a 6x6 grid (84 px)
    for size in (IMG, 84):
        model = backbone(dst, img_size=size, **ffn)
        img = images(2, size, size, seed=size)
        with torch.no_grad():
            torch.testing.assert_close(tokens(model, img),
                                       ref(pixel_values=img).last_hidden_state,
                                       rtol=0, atol=1e-5)


def test_patch_size_16_resamples_the_patch_embedding(tmp_path, capsys):
    pytest.importorskip('timm')
    ref = hf_registers_model(seed=2)
    ref.save_pretrained(str(tmp_path / 'hf'))
    dst = tmp_path / 'p16.pth'
    TOOL.main([str(tmp_path / 'hf'), str(dst), '--patch-size', '16'])
    assert 'from patch 14 to 16' in capsys.readouterr().out
    ckpt = torch.load(dst, map_location='cpu', weights_only=True)
    assert ckpt['meta']['resampled_patch_size'] == [14, 16]
    w14 = ref.state_dict()['embeddings.patch_embeddings.projection.weight']
    w16 = ckpt['state_dict']['patch_embed.proj.weight']
    assert w16.shape == (C, 3, 16, 16)
    # FlexiViT: a 14x14 patch upsampled to 16x16 embeds as before (exactly, up to fp)
    x = torch.randn(5, 3, 14, 14, generator=torch.Generator().manual_seed(3))
    up = F.interpolate(x, size=(16, 16), mode='bicubic', antialias=True, align_corners=False)
    torch.testing.assert_close(F.conv2d(up, w16), F.conv2d(x, w14), rtol=1e-4, atol=1e-4)
    model = backbone(dst, img_size=64, patch_size=16)
    with torch.no_grad():
        feats = model(images(1, 64, 80))
    assert feats[-1].shape == (1, C, 4, 5) and torch.isfinite(feats[-1]).all()
    with pytest.raises(CheckpointMismatchError, match='--patch-size 14'):
        backbone(tmp_path / 'p16.pth', img_size=56, patch_size=14)


def test_timm_reg4_checkpoint_through_the_tool(tmp_path, capsys):
    timm_vit = pytest.importorskip('timm.models.vision_transformer')
    ref = randomize(timm_vit.VisionTransformer(
        img_size=IMG, patch_size=PATCH, embed_dim=C, depth=LAYERS, num_heads=HEADS,
        init_values=1e-5, reg_tokens=REGS, no_embed_class=True, dynamic_img_size=True,
        num_classes=10), seed=4)
    torch.save({'model': ref.state_dict(), 'epoch': 1}, tmp_path / 'timm.pth')
    dst = tmp_path / 'timm_dtop.pth'
    TOOL.main([str(tmp_path / 'timm.pth'), str(dst)])
    report = capsys.readouterr().out
    assert 'timm layout' in report and 'head.weight' in report and 'pos_embed_cls=False' in report
    model = backbone(dst, pos_embed_cls=False)
    img = images(2, IMG, IMG, seed=5)
    with torch.no_grad():
        torch.testing.assert_close(tokens(model, img), ref.forward_features(img),
                                   rtol=0, atol=1e-5)


@pytest.mark.parametrize('src_cls', [True, False])
def test_pos_embed_cls_layouts_load_into_each_other(tmp_path, src_cls):
    """Also through init_cfg's ``prefix`` (the backbone of a segmentor checkpoint)."""
    src = backbone(pos_embed_cls=src_cls)
    torch.save({'state_dict': {f'backbone.{k}': v for k, v in src.state_dict().items()}},
               tmp_path / 'w.pth')
    dst = DToPDinov2(img_size=IMG, patch_size=PATCH, embed_dims=C, num_layers=LAYERS,
                     num_heads=HEADS, num_register_tokens=REGS, pos_embed_cls=not src_cls,
                     init_cfg=dict(type='Pretrained', checkpoint=str(tmp_path / 'w.pth'),
                                   prefix='backbone.'))
    dst.init_weights()
    torch.testing.assert_close(dst.register_tokens, src.register_tokens, rtol=0, atol=0)
    grid_src = src.pos_embed[:, 1:] if src_cls else src.pos_embed
    grid_dst = dst.pos_embed if src_cls else dst.pos_embed[:, 1:]
    torch.testing.assert_close(grid_dst, grid_src, rtol=0, atol=0)


@pytest.mark.parametrize('swiglu', [False, True])
def test_convert_hf_layer_understands_eomt_layers(swiglu):
    """transformers' EomtLayer (q/k/v_proj, out_proj) equals the converted block."""
    transformers = pytest.importorskip('transformers')
    from transformers.models.eomt.modeling_eomt import EomtLayer
    cfg = transformers.EomtConfig(hidden_size=C, num_attention_heads=HEADS,
                                  use_swiglu_ffn=swiglu)
    ref = randomize(EomtLayer(cfg), seed=6)
    sd = {f'layers.7.{k}': v for k, v in ref.state_dict().items()}
    sd['query.weight'] = torch.zeros(2, C)               # outside the prefix: ignored
    block = Dinov2Block(C, HEADS, cfg.mlp_ratio, 'swiglu' if swiglu else 'mlp').eval()
    converted = convert_hf_layer(sd, 'layers.7', 'blk')
    result = block.load_state_dict({k[len('blk.'):]: v for k, v in converted.items()})
    assert not result.missing_keys and not result.unexpected_keys
    x = torch.randn(2, 9, C, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        torch.testing.assert_close(block(x), ref(x), rtol=0, atol=1e-5)


def test_converter_errors_name_the_key():
    sd = hf_registers_model(seed=8).state_dict()
    with pytest.raises(ConversionError, match='encoder.layer.1.attention.bogus'):
        convert_hf_dinov2(dict(sd, **{'encoder.layer.1.attention.bogus.weight': torch.zeros(1)}))
    del sd['encoder.layer.2.norm2.bias']
    with pytest.raises(ConversionError, match='encoder.layer.2.norm2.bias'):
        convert_hf_dinov2(sd)
    with pytest.raises(ConversionError, match='not a transformers or timm'):
        TOOL.detect_source({'foo.weight': torch.zeros(1)})


def test_classifier_prefix_and_head_are_handled():
    """A ``Dinov2ForImageClassification``-style dict: ``dinov2.`` prefix, classifier."""
    sd = hf_registers_model(seed=9).state_dict()
    wrapped = {f'dinov2.{k}': v for k, v in sd.items()}
    wrapped['classifier.weight'] = torch.zeros(3, 2 * C)
    dropped = []
    out = convert_hf_dinov2(wrapped, dropped)
    assert sorted(dropped) == ['classifier.weight', 'dinov2.embeddings.mask_token']
    assert all(torch.equal(v, w) for v, w in zip(out.values(), convert_hf_dinov2(sd).values()))
    with pytest.raises(ConversionError, match='DToPDinov2 layout already'):
        TOOL.detect_source(out)


def test_resample_without_timm_names_the_install(monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, 'timm.layers', None)   # import raises ImportError
    with pytest.raises(MissingPackageError, match='pip install timm'):
        resample_patch_embed(torch.zeros(4, 3, 14, 14), 16)


def test_missing_source_is_one_error_line(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv('DTOP_TRACEBACK', raising=False)
    missing = tmp_path / 'nope.safetensors'
    with pytest.raises(SystemExit) as info:
        run_cli(TOOL.main, [str(missing), str(tmp_path / 'x.pth')])
    assert info.value.code == 1
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith('error:')]
    assert len(lines) == 1 and str(missing) in lines[0] and 'Traceback' not in err
    assert not (tmp_path / 'x.pth').exists()

"""The EoMT configs (configs/eomt/): EoMT's recipe, the same model in BASE and prune
configs, and models whose parameters are exactly transformers' EoMT plus DToP's
auxiliary heads."""
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmseg.registry import MODELS

ROOT = Path(__file__).resolve().parents[2]
DIMS = {'l': dict(width=1024, layers=24, heads=16, backbone=20, aux=[7, 15, 19]),
        'b': dict(width=768, layers=12, heads=12, backbone=8, aux=[5, 7]),
        's': dict(width=384, layers=12, heads=6, backbone=8, aux=[5, 7])}


def _cfg(size, kind):
    name = (f'eomt_vit-{size}16-dinov2-reg4_4xb4-39k_ade20k-512x512.py' if kind == 'base'
            else f'dtop_eomt_vit-{size}16-dinov2-reg4_4xb4-40k_ade20k-512x512.py')
    return Config.fromfile(str(ROOT / 'configs' / 'eomt' / name))


def test_every_eomt_config_is_covered():
    shipped = sorted(p.name for p in (ROOT / 'configs' / 'eomt').glob('*.py'))
    assert len(shipped) == 2 * len(DIMS)


@pytest.mark.parametrize('size', list(DIMS))
def test_base_config_follows_eomt_recipe(size):
    cfg, d = _cfg(size, 'base'), DIMS[size]
    bb, head = cfg.model.backbone, cfg.model.decode_head
    assert (bb.type, bb.embed_dims, bb.num_heads, bb.patch_size, bb.num_register_tokens) == \
        ('DToPDinov2', d['width'], d['heads'], 16, 4)
    assert bb.num_layers + head.num_blocks == d['layers'] and head.num_blocks == 4
    assert bb.out_indices == d['aux'] and not bb.pos_embed_cls and not bb.final_norm
    assert head.init_cfg.vit_block_offset == bb.num_layers
    assert (head.type, head.num_queries, head.loss_decode.type) == \
        ('EoMTHead', 100, 'MaskClassificationLoss')
    assert cfg.model.test_cfg.crop_size == (512, 512)
    assert cfg.train_dataloader.batch_size * 4 == 16
    opt = cfg.optim_wrapper
    assert (opt.optimizer.type, opt.optimizer.lr, opt.optimizer.weight_decay) == \
        ('AdamW', 1e-4, 0.05)
    assert opt.constructor == 'ViTLayerDecayOptimWrapperConstructor'
    assert opt.paramwise_cfg.decay_rate == 0.8
    (sched, ) = cfg.param_scheduler
    assert sched.type == 'TwoStageWarmupPolyLR' and tuple(sched.warmup_iters) == (500, 1000)
    assert sched.end == cfg.train_cfg.max_iters == 39120
    (anneal, ) = [h for h in cfg.custom_hooks if h.type == 'MaskAnnealingHook']
    assert anneal.start_iters == [6520, 13040, 19560, 26080]
    assert anneal.end_iters == [13040, 19560, 26080, 32600]
    assert max(anneal.end_iters) < cfg.train_cfg.max_iters  # the checkpoint is unmasked


@pytest.mark.parametrize('size', list(DIMS))
def test_prune_config_has_base_model_and_no_annealing(size):
    base, prune = _cfg(size, 'base'), _cfg(size, 'prune')
    bm, pm = base.model.to_dict(), prune.model.to_dict()
    assert bm.pop('prune_threshold') == 1.0 and pm.pop('prune_threshold') == 0.95
    assert bm == pm
    assert base.optim_wrapper == prune.optim_wrapper
    assert base.train_dataloader == prune.train_dataloader
    assert not [h for h in prune.custom_hooks if h.type == 'MaskAnnealingHook']
    assert prune.param_scheduler[0].end == prune.train_cfg.max_iters == 40000


@pytest.mark.parametrize('size', list(DIMS))
def test_parameters_are_transformers_eomt_plus_auxiliary_heads(size):
    transformers = pytest.importorskip('transformers')
    cfg, d = _cfg(size, 'base'), DIMS[size]
    ref_cfg = transformers.EomtConfig(
        hidden_size=d['width'], num_hidden_layers=d['layers'], num_attention_heads=d['heads'],
        image_size=512, patch_size=16, num_queries=100, num_register_tokens=4,
        num_labels=150, num_blocks=4, layerscale_value=1e-5)
    with torch.device('meta'):
        ref = transformers.EomtForUniversalSegmentation(ref_cfg)
        model = MODELS.build(cfg.model)
    ours = sum(p.numel() for p in [*model.backbone.parameters(),
                                   *model.decode_head.parameters()])
    assert ours == sum(p.numel() for p in ref.parameters())
    assert len(model.auxiliary_head) == len(d['aux']) - 1


def test_small_model_runs_with_real_dims():
    cfg = _cfg('s', 'prune')
    cfg.model.backbone.init_cfg = None
    cfg.model.decode_head.init_cfg = None
    model = MODELS.build(cfg.model)
    model.init_weights()
    model.eval()
    with torch.no_grad():
        probs = model(torch.randn(1, 3, 64, 96), mode='tensor')
    assert probs.shape == (1, 150, 64, 96)
    assert float(probs.min()) >= 0 and torch.isfinite(probs).all()


def test_metafile_and_readme_match_the_configs():
    import re

    import yaml
    folder = ROOT / 'configs' / 'eomt'
    meta = yaml.safe_load((folder / 'metafile.yaml').read_text())
    names = sorted(Path(m['Config']).name for m in meta['Models'])
    assert names == sorted(p.name for p in folder.glob('*.py'))
    readme = (folder / 'README.md').read_text()
    for m in meta['Models']:
        cfg = Config.fromfile(str(ROOT / m['Config']), import_custom_modules=False)
        md = m['Metadata']
        assert md['Iterations'] == cfg.train_cfg.max_iters
        assert md['Batch Size'] == 4 * cfg.train_dataloader.batch_size
        assert md['Crop Size'] == '({},{})'.format(*cfg.model.data_preprocessor.size)
        if 'Prune Threshold' in md:
            assert md['Prune Threshold'] == cfg.model.prune_threshold
        row = next(line for line in readme.splitlines()
                   if f'[config]({Path(m["Config"]).name})' in line)
        if 'FLOPs (G)' in md:
            assert str(md['FLOPs (G)']) in row
    for link in re.findall(r'\[config\]\(([^)]+)\)', readme):
        assert (folder / link).is_file(), link

"""Every shipped BASE/prune config: faithful to the recipe (docs/method.md §1, §2, §5), builds its
model with real dimensions, and builds/runs its data pipelines (no dataset needed).

Parameter counts are printed (``pytest -s``) and checked against the closed-form
count of the backbone and the heads (docs/method.md §1, §2).
"""
import gc
import os.path as osp
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmseg.registry import DATASETS, MODELS, TRANSFORMS

ROOT = Path(__file__).resolve().parents[2]
IMAGENET = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375])
JAX = dict(mean=[127.5] * 3, std=[127.5] * 3)
CKPT = 'https://download.openmmlab.com/mmsegmentation/v0.5/pretrain/segmenter/'
ARCH = {
    'b': dict(embed_dims=768, num_layers=12, num_heads=12, out_indices=[5, 7, 11],
              drop_path_rate=0.1, channels=384,
              checkpoint=CKPT + 'vit_base_p16_384_20220308-96dfe169.pth'),
    'l': dict(embed_dims=1024, num_layers=24, num_heads=16, out_indices=[7, 15, 23],
              drop_path_rate=0.3, channels=512,
              checkpoint=CKPT + 'vit_large_p16_384_20220308-d4efb41d.pth'),
}
ADE = dict(dataset='ADE20KDataset', classes=150,
           train=('images/training', 'annotations/training'),
           val=('images/validation', 'annotations/validation'))
PC = dict(dataset='PascalContextDataset59', classes=59,
          train=('JPEGImages', 'SegmentationClassContext'),
          val=('JPEGImages', 'SegmentationClassContext'))
COCO = dict(dataset='COCOStuffDataset', classes=171,
            train=('images/train2014', 'annotations/train2014'),
            val=('images/test2014', 'annotations/test2014'))

# The official recipe per results row (docs/differences.md): one BASE and one prune config.
ROWS = {
    'ade20k_b16': dict(arch='b', data=ADE, crop=512, stride=341, scale=(2048, 512),
                       head_heads=6, norm=IMAGENET, p0=0.9, prune_iters=40000,
                       base='segvit/segvit_vit-b16_4xb4-160k_ade20k-512x512.py',
                       prune='dtop/dtop_segvit_vit-b16_4xb4-40k_ade20k-512x512.py'),
    'ade20k_l16': dict(arch='l', data=ADE, crop=640, stride=320, scale=(2560, 640),
                       head_heads=8, norm=JAX, p0=0.95, prune_iters=40000,
                       base='segvit/segvit_vit-l16_4xb4-160k_ade20k-640x640.py',
                       prune='dtop/dtop_segvit_vit-l16_4xb4-40k_ade20k-640x640.py'),
    'pc59_l16': dict(arch='l', data=PC, crop=480, stride=320, scale=(2048, 520),
                     head_heads=16, norm=JAX, p0=0.95, prune_iters=40000,
                     base='segvit/segvit_vit-l16_4xb4-160k_pascal-context-59-480x480.py',
                     prune='dtop/dtop_segvit_vit-l16_4xb4-40k_pascal-context-59-480x480.py'),
    'coco10k_l16': dict(arch='l', data=COCO, crop=512, stride=341, scale=(2048, 512),
                        head_heads=16, norm=JAX, p0=0.95, prune_iters=20000,
                        base='segvit/segvit_vit-l16_4xb4-160k_coco-stuff10k-512x512.py',
                        prune='dtop/dtop_segvit_vit-l16_4xb4-20k_coco-stuff10k-512x512.py'),
}
BASE_ITERS = 160000
CASES = [(row, kind) for row in ROWS for kind in ('base', 'prune')]
CASE_IDS = [f'{row}-{kind}' for row, kind in CASES]


def _load(row, kind) -> Config:
    return Config.fromfile(str(ROOT / 'configs' / ROWS[row][kind]))


def test_every_shipped_config_is_covered():
    # `_base_*.py` files in segvit/ hold the model + data shared by a row's BASE and
    # prune configs; they are not configs of their own. The SETR-naive / Segmenter
    # prune configs in dtop/ are checked in tests/test_models/test_other_segmenters.py.
    shipped = sorted(str(p.relative_to(ROOT / 'configs'))
                     for d in ('segvit', 'dtop') for p in (ROOT / 'configs' / d).glob('*.py')
                     if not p.name.startswith('_base_') and 'segvit' in p.name)
    covered = sorted(r[k] for r in ROWS.values() for k in ('base', 'prune'))
    assert shipped == covered


@pytest.mark.parametrize('row,kind', CASES, ids=CASE_IDS)
def test_config_follows_the_recipe(row, kind):
    e = ROWS[row]
    a = ARCH[e['arch']]
    cfg = _load(row, kind)
    iters = BASE_ITERS if kind == 'base' else e['prune_iters']
    name = osp.basename(e[kind])
    assert f'_4xb4-{iters // 1000}k_' in name

    # model (docs/method.md §1-2)
    m = cfg.model
    assert m.type == 'DToPEncoderDecoder'
    bb = m.backbone
    assert bb.type == 'DToPVisionTransformer'
    for key in ('embed_dims', 'num_layers', 'num_heads', 'out_indices', 'drop_path_rate'):
        assert bb[key] == a[key], key
    assert tuple(bb.img_size) == (e['crop'], e['crop'])
    assert bb.patch_size == 16 and bb.mlp_ratio == 4 and bb.qkv_bias is True
    assert bb.with_cls_token is False and bb.patch_norm is False and bb.final_norm is False
    assert bb.norm_cfg == dict(type='LN', eps=1e-6)
    assert bb.drop_rate == 0 and bb.attn_drop_rate == 0
    assert bb.interpolate_mode == 'bicubic'
    # The ViT-L configs (COCO prune included) load the ViT-L checkpoint.
    assert bb.init_cfg == dict(type='Pretrained', checkpoint=a['checkpoint'])
    heads = [m.decode_head, *m.auxiliary_head]
    assert len(heads) == 3
    for h in heads:
        assert h.type == 'ATMPruneHead'
        assert (h.in_channels, h.channels) == (a['embed_dims'], a['channels'])
        assert h.num_classes == e['data']['classes']
        assert h.num_heads == e['head_heads'] and h.num_layers == 3 and h.dropout == 0.1
        loss = h.loss_decode
        assert loss.type == 'ATMLoss' and loss.num_classes == e['data']['classes']
        assert (loss.eos_coef, loss.mask_weight, loss.dice_weight, loss.loss_weight) == \
            (0.1, 20.0, 1.0, 1.0)
    assert m.prune_threshold == (1.0 if kind == 'base' else e['p0'])
    assert m.keep_topk_per_class == 5
    assert m.test_cfg.mode == 'slide'
    assert tuple(m.test_cfg.crop_size) == (e['crop'], e['crop'])
    assert tuple(m.test_cfg.stride) == (e['stride'], e['stride'])
    pre = m.data_preprocessor
    assert pre.mean == e['norm']['mean'] and pre.std == e['norm']['std']
    assert pre.bgr_to_rgb is True and (pre.pad_val, pre.seg_pad_val) == (0, 255)
    assert tuple(pre.size) == (e['crop'], e['crop'])
    assert 'test_cfg' not in pre  # no test-time padding (the official recipe, docs/differences.md)

    # data (the official recipe, docs/differences.md)
    tdl = cfg.train_dataloader
    assert tdl.batch_size == 4 and tdl.sampler.type == 'InfiniteSampler'
    for loader, split in ((tdl, 'train'), (cfg.val_dataloader, 'val')):
        ds = loader.dataset
        assert ds.type == e['data']['dataset'] and ds.reduce_zero_label is True
        assert (ds.data_prefix.img_path, ds.data_prefix.seg_map_path) == e['data'][split]
    if e['data'] is PC:
        assert tdl.dataset.ann_file.endswith('SegmentationContext/train.txt')
        assert cfg.val_dataloader.dataset.ann_file.endswith('SegmentationContext/val.txt')
    steps = {s.type: s for s in tdl.dataset.pipeline}
    assert list(steps) == ['LoadImageFromFile', 'LoadAnnotations', 'RandomResize',
                           'RandomCrop', 'RandomFlip', 'PhotoMetricDistortion',
                           'PackSegInputs']
    assert steps['LoadAnnotations'].reduce_zero_label is True
    assert tuple(steps['RandomResize'].scale) == e['scale']
    assert tuple(steps['RandomResize'].ratio_range) == (0.5, 2.0)
    assert steps['RandomResize'].keep_ratio is True
    assert tuple(steps['RandomCrop'].crop_size) == (e['crop'], e['crop'])
    assert steps['RandomCrop'].cat_max_ratio == 0.75
    assert steps['RandomFlip'].prob == 0.5
    test_steps = {s.type: s for s in cfg.test_dataloader.dataset.pipeline}
    assert tuple(test_steps['Resize'].scale) == e['scale'] and test_steps['Resize'].keep_ratio
    assert cfg.test_dataloader == cfg.val_dataloader
    assert cfg.val_evaluator.type == 'IoUFlopsMetric' and cfg.val_evaluator.iou_metrics == ['mIoU']
    assert {h.type for h in cfg.custom_hooks} >= {'FlopsMetricDimsHook', 'PruneStatsHook'}

    # optimisation (the official recipe, docs/differences.md)
    ow = cfg.optim_wrapper
    assert ow.type == 'OptimWrapper' and ow.clip_grad is None
    assert ow.optimizer == dict(type='AdamW', lr=2e-5, betas=(0.9, 0.999), weight_decay=0.01)
    assert ow.paramwise_cfg == dict(custom_keys={'head': dict(lr_mult=10.0)})
    assert 'optimizer_config' not in cfg  # the mmseg-0.x key mmengine ignores
    warmup, poly = cfg.param_scheduler
    assert warmup == dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0,
                          end=1500)
    assert poly == dict(type='PolyLR', power=0.9, eta_min=0.0, by_epoch=False, begin=1500,
                        end=iters)
    assert cfg.train_cfg == dict(type='IterBasedTrainLoop', max_iters=iters, val_interval=4000)
    assert cfg.find_unused_parameters is None  # DToPRunner decides it from the model
    assert cfg.custom_imports == dict(imports=['dtop'], allow_failed_imports=False)
    assert cfg.log_processor == dict(by_epoch=False)


@pytest.mark.parametrize('row', list(ROWS))
def test_prune_config_differs_from_its_base_only_in_pruning_and_schedule(row):
    base, prune = _load(row, 'base'), _load(row, 'prune')
    assert prune.model.prune_threshold < 1 and base.model.prune_threshold == 1.0
    bm, pm = base.model.to_dict(), prune.model.to_dict()
    bm.pop('prune_threshold'), pm.pop('prune_threshold')
    assert bm == pm  # same architecture: the BASE checkpoint loads exactly
    for key in ('train_dataloader', 'val_dataloader', 'test_dataloader', 'optim_wrapper',
                'val_evaluator', 'env_cfg'):
        assert base[key] == prune[key], key


def _expected_params(arch: str, crop: int, num_classes: int) -> dict:
    """Closed-form parameter counts (mmseg ViT + ATM prune head)."""
    a = ARCH[arch]
    D, L, d = a['embed_dims'], a['num_layers'], a['channels']
    n_tokens = (crop // 16) ** 2
    backbone = (3 * 16 * 16 * D + D      # patch embedding conv
                + (n_tokens + 1) * D + D  # position embedding + cls token
                + L * (12 * D * D + 13 * D))  # qkv, proj, MLP 4x, 2 LN
    layer = (4 * d * d + 4 * d           # query self-attention
             + 4 * (d * d + d)            # cross-attention q, k, v, proj
             + 8 * d * d + 5 * d          # FFN d -> 4d -> d
             + 3 * 2 * d)                 # 3 LayerNorms
    head = D * d + d + 2 * d + 3 * layer + num_classes * d + 2 * d + 2
    return dict(backbone=backbone, head=head, total=backbone + 3 * head)


@pytest.mark.parametrize('row,kind', CASES, ids=CASE_IDS)
def test_config_builds_real_model(row, kind):
    e = ROWS[row]
    cfg = _load(row, kind)
    cfg.model.backbone.init_cfg = None  # no download
    model = MODELS.build(cfg.model)
    try:
        counts = dict(
            backbone=sum(p.numel() for p in model.backbone.parameters()),
            head=sum(p.numel() for p in model.decode_head.parameters()),
            total=sum(p.numel() for p in model.parameters()))
        print(f"\n{ROWS[row][kind]}: total {counts['total'] / 1e6:.2f} M "
              f"(backbone {counts['backbone'] / 1e6:.2f} M, 3 heads x "
              f"{counts['head'] / 1e6:.2f} M)")
        assert counts == _expected_params(e['arch'], e['crop'], e['data']['classes'])
        assert [len(r) for r in [range(*s) for s in model.backbone.stage_ranges]] == \
            ([6, 2, 4] if e['arch'] == 'b' else [8, 8, 8])
        # a real-width forward on a small input (the pos-embed is resized)
        model.eval()
        with torch.no_grad():
            probs = model(torch.randn(1, 3, 64, 96), mode='tensor')
        assert probs.shape == (1, e['data']['classes'], 64, 96)
        assert float(probs.min()) >= 0 and float(probs.max()) <= 1
    finally:
        del model
        gc.collect()


@pytest.fixture(scope='module')
def sample_files(tmp_path_factory):
    """One 700x900 image and label map (values 0..20, 0 = ignored class)."""
    root = tmp_path_factory.mktemp('sample')
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (700, 900, 3), dtype=np.uint8)
    label = np.repeat(np.repeat(rng.integers(0, 21, (7, 9), dtype=np.uint8), 100, 0), 100, 1)
    cv2.imwrite(str(root / 'img.jpg'), img)
    cv2.imwrite(str(root / 'label.png'), label)
    return root


def _run(steps, results):
    for step in steps:
        results = step(results)
        assert results is not None
    return results


@pytest.mark.parametrize('row', list(ROWS))
def test_pipelines_build_and_run(row, sample_files):
    e = ROWS[row]
    cfg = _load(row, 'base')
    dataset_cls = DATASETS.get(cfg.train_dataloader.dataset.type)
    assert len(dataset_cls.METAINFO['classes']) == e['data']['classes']
    sample = dict(img_path=str(sample_files / 'img.jpg'),
                  seg_map_path=str(sample_files / 'label.png'), reduce_zero_label=True,
                  seg_fields=[], label_map=None)
    crop = e['crop']

    train = [TRANSFORMS.build(s) for s in cfg.train_dataloader.dataset.pipeline]
    out = _run(train, dict(sample))
    img, seg = out['inputs'], out['data_samples'].gt_sem_seg.data
    assert img.shape[0] == 3 and img.shape[1] <= crop and img.shape[2] <= crop
    assert seg.shape[-2:] == img.shape[-2:]
    values = set(seg.unique().tolist())
    assert values <= set(range(20)) | {255}  # 1..20 -> 0..19, 0 -> 255

    test = [TRANSFORMS.build(s) for s in cfg.test_dataloader.dataset.pipeline]
    out = _run(test, dict(sample))
    long_side, short_side = e['scale']
    h, w = out['inputs'].shape[-2:]
    assert min(h, w) == short_side or max(h, w) == long_side  # keep-ratio resize
    assert out['data_samples'].gt_sem_seg.data.shape[-2:] == (700, 900)  # original size

    tta = [TRANSFORMS.build(s) for s in cfg.tta_pipeline]
    out = _run(tta, dict(sample))
    assert len(out['inputs']) == 6 * 2  # 6 scales x (no flip, flip)

# Demo BASE model (no pruning) on the embedded synthetic dataset, sized for 2 CPU cores.
#
#   python -m dtop.datasets.demo_generator --out data/demo      # the data (seconds)
#   bash tools/dist_train.sh configs/demo/segvit_vit-t16-8l_1xb8-1200_demo-128x128.py \
#       work_dirs/demo/base
#
# DToP's 3-head SegViT, shrunk: a ViT with embed 192, 8 layers, 3 attention heads,
# patch 16, trained from scratch (no ImageNet weights can be downloaded here), and
# three ATM prune heads (d = 96, 3 attention heads, 2 decoder layers) after 0-based
# layers [2, 5, 7], i.e. stages of 3 / 3 / 2 layers (ViT-L's split is 8 / 8 / 8 of 24).
# Training: random 128x128 crops (an 8x8 token grid) of the 256x320 images rescaled
# by 1.5 x [0.75, 1.25]. Testing: whole-image inference of each image rescaled to
# 384x480, i.e. a 24x30 token grid (720 tokens; the position embeddings are
# interpolated, as mmseg does for any input size). Whole images give each forward
# enough tokens that the FLOPs pruning saves show up as time on a CPU; the 64-token
# crops of slide inference are dominated by per-operation overhead.
# `bash tools/run_demo.sh` runs BASE -> prune -> tests.
_base_ = ['../_base_/default_runtime.py']

# `import dtop` (custom_imports of the runtime base) registers DToPDemoDataset,
# IoUFlopsMetric, FlopsMetricDimsHook, PruneStatsHook and DToPVisualizer.

# ----------------------------------------------------------------------------- data
dataset_type = 'DToPDemoDataset'
data_root = 'data/demo'
crop_size = (128, 128)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),  # reduce_zero_label comes from the dataset (True)
    dict(type='RandomResize', scale=(480, 384), ratio_range=(0.75, 1.25), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.9),
    dict(type='RandomFlip', prob=0.5),
    # No PhotoMetricDistortion: colour is what separates most demo classes.
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(480, 384), keep_ratio=True),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(
    batch_size=8,
    num_workers=1,
    persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        data_prefix=dict(img_path='images/training', seg_map_path='annotations/training'),
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1,
    num_workers=1,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        data_prefix=dict(img_path='images/validation',
                         seg_map_path='annotations/validation'),
        pipeline=test_pipeline))
test_dataloader = val_dataloader
# mIoU plus the dynamic GFLOPs and token-exit statistics (FlopsMetricDimsHook below
# gives the metric the model's dimensions).
val_evaluator = dict(type='IoUFlopsMetric', iou_metrics=['mIoU'])
test_evaluator = val_evaluator

# ---------------------------------------------------------------------------- model
num_classes = 10
__head = dict(
    type='ATMPruneHead',
    in_channels=192,
    channels=96,
    num_classes=num_classes,
    num_heads=3,
    num_layers=2,
    dropout=0.1,
    align_corners=False,
    loss_decode=dict(type='ATMLoss', num_classes=num_classes, eos_coef=0.1,
                     mask_weight=20.0, dice_weight=1.0, loss_weight=1.0))
model = dict(
    type='DToPEncoderDecoder',
    data_preprocessor=dict(
        type='SegDataPreProcessor',
        mean=[127.5, 127.5, 127.5],
        std=[127.5, 127.5, 127.5],
        bgr_to_rgb=True,
        pad_val=0,
        seg_pad_val=255,
        size=crop_size),
    backbone=dict(
        type='DToPVisionTransformer',
        img_size=crop_size,
        patch_size=16,
        in_channels=3,
        embed_dims=192,
        num_layers=8,
        num_heads=3,
        mlp_ratio=4,
        out_indices=[2, 5, 7],
        qkv_bias=True,
        drop_rate=0.0,
        attn_drop_rate=0.0,
        drop_path_rate=0.0,
        with_cls_token=False,
        norm_cfg=dict(type='LN', eps=1e-6),
        act_cfg=dict(type='GELU'),
        patch_norm=False,
        final_norm=False,
        interpolate_mode='bicubic'),
    decode_head=__head,
    auxiliary_head=[__head, __head],
    prune_threshold=1.0,  # BASE: no pruning
    keep_topk_per_class=5,
    train_cfg=dict(),
    test_cfg=dict(mode='whole'))

# ------------------------------------------------------------------------- schedule
# From scratch, so a much larger lr than the paper's fine-tuning 2e-5 (heads x1).
__max_iters = 1200
__warmup_iters = 100
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=5e-4, betas=(0.9, 0.999), weight_decay=0.01),
    clip_grad=dict(max_norm=1.0, norm_type=2))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=__warmup_iters),
    dict(type='PolyLR', power=0.9, eta_min=0.0, by_epoch=False, begin=__warmup_iters,
         end=__max_iters),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=__max_iters,
                 val_interval=__max_iters + 1)  # no validation during the demo run
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=__max_iters,
                    max_keep_ckpts=1, save_last=True),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    # tools/test.py --show-dir paints every test image (GT | prediction | exit map).
    visualization=dict(type='SegVisualizationHook'))
custom_hooks = [dict(type='FlopsMetricDimsHook')]
visualizer = dict(
    type='DToPVisualizer', vis_backends=[dict(type='LocalVisBackend')], name='visualizer',
    alpha=0.6)
randomness = dict(seed=0)
env_cfg = dict(cudnn_benchmark=False)

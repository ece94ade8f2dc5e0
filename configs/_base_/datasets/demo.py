# The embedded synthetic demo dataset (10 classes, 256x320 images; made in seconds by
# `python -m dtop.datasets.demo_generator --out data/demo`), sized for 2 CPU cores.
#
# Training: random 128x128 crops (an 8x8 token grid) of the 256x320 images rescaled
# by 1.5 x [0.75, 1.25]. Testing: whole-image inference of each image rescaled to
# 384x480, i.e. a 24x30 token grid (720 tokens; the position embeddings are
# interpolated, as mmseg does for any input size). Whole images give each forward
# enough tokens that the FLOPs pruning saves show up as time on a CPU; the 64-token
# crops of slide inference are dominated by per-operation overhead.
#
# `import dtop` (custom_imports of the runtime base) registers DToPDemoDataset and
# IoUFlopsMetric.
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
# Validation and test: the training loader with one image per batch, in order, on
# the validation split with the test pipeline.
val_dataloader = dict(
    train_dataloader,
    batch_size=1,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        train_dataloader['dataset'],
        data_prefix=dict(img_path='images/validation', seg_map_path='annotations/validation'),
        pipeline=test_pipeline))
test_dataloader = val_dataloader
# mIoU plus the dynamic GFLOPs and token-exit statistics (FlopsMetricDimsHook of the
# demo schedules gives the metric the model's dimensions).
val_evaluator = dict(type='IoUFlopsMetric', iou_metrics=['mIoU'])
test_evaluator = val_evaluator

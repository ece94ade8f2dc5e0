# DToP optimisation recipe (Tang et al., ICCV 2023, Sec. 4), 160k iterations: the
# BASE schedule.
#
# AdamW lr 2e-5, betas (0.9, 0.999), weight decay 0.01, no decay-mult exclusions;
# every parameter whose name contains 'head' (decode_head.*, auxiliary_head.*)
# trains at 10x the lr. LinearLR warmup from 1e-6 x lr over 1500 iterations, then
# PolyLR (power 0.9, eta_min 0) to the last iteration.
#
# Gradient clipping is OFF (clip_grad=None), which is what the official runs did:
# their `optimizer_config=dict(grad_clip=...)` is an mmseg-0.x key that mmengine
# ignores (docs/differences.md). To clip, set
#   optim_wrapper = dict(clip_grad=dict(max_norm=35, norm_type=2))
# in a derived config. Helper names start with "__" (kept out of the merged config).
__max_iters = 160000
__warmup_iters = 1500
__optimizer = dict(
    type='AdamW', lr=2e-5, betas=(0.9, 0.999), weight_decay=0.01)
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=__optimizer,
    clip_grad=None,
    paramwise_cfg=dict(custom_keys={'head': dict(lr_mult=10.0)}))
param_scheduler = [
    dict(
        type='LinearLR',
        start_factor=1e-6,
        by_epoch=False,
        begin=0,
        end=__warmup_iters),
    dict(
        type='PolyLR',
        power=0.9,
        eta_min=0.0,
        by_epoch=False,
        begin=__warmup_iters,
        end=__max_iters),
]
train_cfg = dict(
    type='IterBasedTrainLoop', max_iters=__max_iters, val_interval=4000)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=16000),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='SegVisualizationHook'))

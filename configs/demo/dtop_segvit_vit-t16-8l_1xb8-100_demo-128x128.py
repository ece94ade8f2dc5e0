# Demo prune fine-tune (DToP) of the demo BASE model, sized for 2 CPU cores.
#
#   bash tools/dist_train_load.sh configs/demo/dtop_segvit_vit-t16-8l_1xb8-100_demo-128x128.py \
#       work_dirs/demo/dtop work_dirs/demo/base/iter_1200.pth
#
# Same model as the BASE config with pruning live (spec §2): after each auxiliary
# head, tokens whose confidence max_c P_c * sigmoid(A) is > p0 exit, except the
# k = 5 most confident of each class. p0 = 0.97: at 0.95 (the paper's ViT-L value)
# this minutes-old model already lets a third of the tokens exit after 3 of 8 layers,
# and the tokens that stay lose accuracy without that context (docs/benchmarks.md,
# "The demo"); 0.97 keeps the cut at ~20 % of the GFLOPs and the mIoU at the control's.
# A short fine-tune at a low lr (2e-5, the paper's fine-tuning lr) adapts the later
# stages to the pruned token sets without training the model further, so that the
# fair control (the same fine-tune, p0 = 1) measures pruning and not extra training;
# PruneStatsHook logs the exit fractions while it runs.
_base_ = ['./segvit_vit-t16-8l_1xb8-1200_demo-128x128.py']

model = dict(prune_threshold=0.97, keep_topk_per_class=5)

__max_iters = 100
__warmup_iters = 10
optim_wrapper = dict(optimizer=dict(lr=2e-5))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=__warmup_iters),
    dict(type='PolyLR', power=0.9, eta_min=0.0, by_epoch=False, begin=__warmup_iters,
         end=__max_iters),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=__max_iters,
                 val_interval=__max_iters + 1)
default_hooks = dict(
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=__max_iters,
                    max_keep_ckpts=1, save_last=True))
custom_hooks = [
    dict(type='FlopsMetricDimsHook'),
    dict(type='PruneStatsHook', interval=50),
]

# Demo prune fine-tune schedule: demo_1200.py shortened to 100 iterations at the
# paper's fine-tuning lr 2e-5 (Tang et al., ICCV 2023, Sec. 4), with a 10-iteration
# warmup, and PruneStatsHook logging the token exit fractions while it runs.
#
# A short fine-tune at a low lr adapts the later stages to the pruned token sets
# without training the model further, so that the fair control (the same fine-tune,
# p0 = 1) measures pruning and not extra training. The BASE checkpoint comes in as
# weights only, with a fresh optimizer and schedule: `load_from` stays None here and
# tools/dist_train_load.sh sets it (`--cfg-options load_from=BASE_CKPT`):
#
#   bash tools/dist_train_load.sh PRUNE_CONFIG WORK_DIR BASE_WORK_DIR/iter_1200.pth
#
# The prune configs compose this file with their BASE model and data, and set p0.
_base_ = ['./demo_1200.py']
__max_iters = 100
__warmup_iters = 10
optim_wrapper = dict(optimizer=dict(lr=2e-5))
param_scheduler = [
    dict(_base_.param_scheduler[0], end=__warmup_iters),
    dict(_base_.param_scheduler[1], begin=__warmup_iters, end=__max_iters),
]
train_cfg = dict(max_iters=__max_iters, val_interval=__max_iters + 1)
default_hooks = dict(checkpoint=dict(interval=__max_iters))
custom_hooks = [*_base_.custom_hooks, dict(type='PruneStatsHook', interval=50)]

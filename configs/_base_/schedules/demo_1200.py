# Demo BASE schedule and runtime, sized for 2 CPU cores: 1200 iterations from scratch.
#
# The DToP recipe of schedule_160k.py (AdamW, betas (0.9, 0.999), weight decay 0.01;
# LinearLR warmup, then PolyLR power 0.9 to 0), changed where training from scratch
# in minutes needs it: lr 5e-4 (a much larger lr than the paper's fine-tuning 2e-5)
# with the heads at the same lr (no paramwise_cfg), gradient clipping at norm 1,
# a 100-iteration warmup from 1e-3 x lr, no validation during the run, and only the
# last checkpoint kept.
#
# Runtime: _base_/default_runtime.py, with a fixed seed, cudnn benchmarking off, the
# exit-map panel at alpha 0.6 (tools/test.py --show-dir paints every test image:
# GT | prediction | exit map), and FlopsMetricDimsHook only (nothing is pruned, so no
# PruneStatsHook; demo_prune.py adds it back).
_base_ = ['./schedule_160k.py', '../default_runtime.py']
__max_iters = 1200
__warmup_iters = 100
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(_base_.optim_wrapper.optimizer, lr=5e-4),
    clip_grad=dict(max_norm=1.0, norm_type=2))
param_scheduler = [
    dict(_base_.param_scheduler[0], start_factor=1e-3, end=__warmup_iters),
    dict(_base_.param_scheduler[1], begin=__warmup_iters, end=__max_iters),
]
train_cfg = dict(max_iters=__max_iters, val_interval=__max_iters + 1)  # no validation
default_hooks = dict(
    checkpoint=dict(interval=__max_iters, max_keep_ckpts=1, save_last=True))

custom_hooks = [dict(type='FlopsMetricDimsHook')]
visualizer = dict(alpha=0.6)
randomness = dict(seed=0)
env_cfg = dict(cudnn_benchmark=False)

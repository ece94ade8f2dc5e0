# DToP optimisation recipe, 40k iterations: the prune fine-tune schedule of the
# ADE20K and PASCAL-Context-59 rows.
#
# Everything comes from schedule_160k.py (AdamW lr 2e-5, heads at 10x lr, no
# gradient clipping, 1500-iteration LinearLR warmup, then PolyLR power 0.9 to 0);
# only the length and the checkpoint interval differ: PolyLR ends at 40k and a
# checkpoint is kept every 4k iterations (validation every 4k, as in the 160k run).
_base_ = ['./schedule_160k.py']
__max_iters = 40000
train_cfg = dict(max_iters=__max_iters)
# [LinearLR warmup (unchanged), PolyLR ending at the new last iteration]
param_scheduler = [_base_.param_scheduler[0], dict(_base_.param_scheduler[1], end=__max_iters)]
default_hooks = dict(checkpoint=dict(interval=4000))

# DToP optimisation recipe, 20k iterations: the prune fine-tune schedule of the
# COCO-Stuff-10K row (the official COCO prune config fine-tunes for 20k).
#
# schedule_40k.py (the 160k recipe shortened, a checkpoint every 4k iterations) with
# PolyLR ending at 20k.
_base_ = ['./schedule_40k.py']
__max_iters = 20000
train_cfg = dict(max_iters=__max_iters)
param_scheduler = [_base_.param_scheduler[0], dict(_base_.param_scheduler[1], end=__max_iters)]

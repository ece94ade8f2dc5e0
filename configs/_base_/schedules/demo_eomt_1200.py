# Demo BASE schedule of the EoMT demo: demo_1200.py (1200 iterations from scratch,
# AdamW lr 5e-4, warmup then poly decay) plus EoMT's mask annealing.
#
# EoMT trains its query blocks with masked attention at first and anneals it away
# block by block (MaskAnnealingHook, power 0.9): on ADE20K the 4 blocks decay over
# consecutive sixths of training (sixths 2-5) and the last sixth runs unmasked. Here,
# with 2 query blocks, the same phases of 1200 iterations: all masked for the first
# sixth (0-200), block 0 annealed over 200-600, block 1 over 600-1000, the last sixth
# (1000-1200) unmasked. The probabilities are 0 well before the BASE checkpoint is
# saved, so the checkpoint carries 0s and every later use of the model (test, the
# prune fine-tune, which has no annealing hook) runs without masks.
_base_ = ['./demo_1200.py']
__max_iters = _base_.train_cfg.max_iters  # 1200
__sixth = __max_iters // 6
custom_hooks = [
    *_base_.custom_hooks,
    dict(type='MaskAnnealingHook', start_iters=[__sixth, 3 * __sixth],
         end_iters=[3 * __sixth, 5 * __sixth], power=0.9),
]

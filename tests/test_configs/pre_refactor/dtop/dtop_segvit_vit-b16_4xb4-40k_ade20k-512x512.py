# Prune fine-tune (+DToP), ADE20K ViT-B/16 row.
# Starts from the BASE checkpoint of the `_base_` config and fine-tunes with
# pruning live in training and test: p0 = 0.9 at both auxiliary heads, k = 5
# tokens kept per class, 40k iterations.
#
#   bash tools/dist_train_load.sh THIS_CONFIG WORK_DIR BASE_CKPT
#
# The BASE checkpoint is loaded with `load_from` (weights only: optimizer and
# iteration start fresh). There is no final-head threshold: nothing follows the
# final head, so the official 0.95/1.0 final-head values have no counterpart
# (docs/differences.md).
_base_ = ['../segvit/segvit_vit-b16_4xb4-160k_ade20k-512x512.py']
model = dict(prune_threshold=0.9, keep_topk_per_class=5)

__max_iters = 40000
train_cfg = dict(max_iters=__max_iters)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(
        type='PolyLR',
        power=0.9,
        eta_min=0.0,
        by_epoch=False,
        begin=1500,
        end=__max_iters),
]
default_hooks = dict(
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=4000))

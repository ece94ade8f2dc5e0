# Prune fine-tune (+DToP), PASCAL-Context-59 ViT-L/16 row.
# Fine-tunes the BASE model of configs/segvit/segvit_vit-l16_4xb4-160k_pascal-context-59-480x480.py
# with pruning live in training and test: p0 = 0.95 at both auxiliary heads, k = 5
# tokens kept per class, 40k iterations.
#
#   bash tools/dist_train_load.sh THIS_CONFIG WORK_DIR BASE_CKPT
#
# Same model and data as the BASE config (same `_base_` files, so the BASE
# checkpoint loads exactly); the schedule is _base_/schedules/schedule_40k.py (the
# BASE recipe, shorter). The BASE checkpoint is loaded with `load_from` (weights
# only: optimizer and iteration start fresh). There is no final-head threshold:
# nothing follows the final head, so the official 0.95/1.0 final-head values have
# no counterpart (docs/differences.md).
_base_ = [
    '../segvit/_base_segvit_vit-l16_pascal-context-59-480x480.py',
    '../_base_/schedules/schedule_40k.py'
]
model = dict(prune_threshold=0.95, keep_topk_per_class=5)

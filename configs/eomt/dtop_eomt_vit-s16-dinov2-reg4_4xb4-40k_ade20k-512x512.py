# Prune fine-tune (+DToP) of the EoMT-S BASE model, ADE20K 512x512: p0 = 0.95 at the
# auxiliary heads (DToP's ViT-L value), k = 5 tokens kept per class; exited tokens
# leave every later block, the query blocks included (docs/eomt.md).
#
#   bash tools/dist_train_load.sh THIS_CONFIG WORK_DIR BASE_CKPT
#
# Same model and data as eomt_vit-s16-dinov2-reg4_4xb4-39k_ade20k-512x512.py (same
# `_base_` files, so the BASE checkpoint loads exactly); schedule
# _base_/schedules/eomt_prune_40k.py (EoMT's optimiser, no annealing).
_base_ = [
    '../_base_/models/eomt_vit-s16-dinov2-reg4.py', '../_base_/datasets/ade20k.py',
    '../_base_/schedules/eomt_prune_40k.py'
]
model = dict(prune_threshold=0.95, keep_topk_per_class=5)

# Prune fine-tune (+DToP), Segmenter (mask transformer) ViT-B/16 on ADE20K 512x512.
#
#   bash tools/dist_train_load.sh THIS_CONFIG WORK_DIR BASE_CKPT
#
# Fine-tunes the BASE model of
# configs/segmenter/segmenter-mask_vit-b16_4xb4-160k_ade20k-512x512.py with pruning
# live in training and test: after each auxiliary ATM head, tokens whose score
# max_c P_c * sigmoid(A) is > p0 = 0.9 exit, except the k = 5 most confident per
# class (DToP's ADE20K ViT-B values: same head type at the same layers 5 / 7). The
# mask transformer then decodes only the tokens still active (+ its class
# embeddings); exited tokens keep their auxiliary head's prediction
# (docs/other_segmenters.md). Schedule: the BASE recipe for 40k iterations with a
# 1500-iteration warmup.
_base_ = [
    '../_base_/models/dtop_segmenter-mask_vit-b16.py', '../_base_/datasets/ade20k.py',
    '../_base_/default_runtime.py', '../_base_/schedules/schedule_40k.py'
]
model = dict(prune_threshold=0.9, keep_topk_per_class=5)
optim_wrapper = dict(
    optimizer=dict(_delete_=True, type='SGD', lr=0.001, momentum=0.9, weight_decay=0.0),
    paramwise_cfg=dict(custom_keys={'auxiliary_head': dict(lr_mult=10.0)}, _delete_=True))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', power=0.9, eta_min=1e-4, by_epoch=False, begin=1500, end=40000)
]

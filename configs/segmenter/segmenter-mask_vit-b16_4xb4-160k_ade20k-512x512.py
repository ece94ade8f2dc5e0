# BASE model, Segmenter (mask transformer) ViT-B/16 on ADE20K 512x512: mmseg's
# Segmenter-B plus DToP's two auxiliary ATM heads after layers 5 / 7,
# trained densely (prune_threshold = 1.0). Recipe: mmseg's Segmenter ADE20K one —
# SGD lr 0.001, momentum 0.9, no weight decay, PolyLR (power 0.9, eta_min 1e-4) over
# 160k iterations — at batch 16 (4 GPUs x 4; mmseg uses 8 x 1), with the auxiliary
# heads (new, randomly initialised) at 10x lr as every head in DToP's recipe.
# Then prune with configs/dtop/dtop_segmenter-mask_vit-b16_4xb4-40k_ade20k-512x512.py.
_base_ = [
    '../_base_/models/dtop_segmenter-mask_vit-b16.py', '../_base_/datasets/ade20k.py',
    '../_base_/default_runtime.py', '../_base_/schedules/schedule_160k.py'
]
model = dict(prune_threshold=1.0)
optim_wrapper = dict(
    optimizer=dict(_delete_=True, type='SGD', lr=0.001, momentum=0.9, weight_decay=0.0),
    paramwise_cfg=dict(custom_keys={'auxiliary_head': dict(lr_mult=10.0)}, _delete_=True))
param_scheduler = [
    dict(type='PolyLR', power=0.9, eta_min=1e-4, by_epoch=False, begin=0,
         end=160000)
]

# BASE model, SETR-naive ViT-B/16 on ADE20K 512x512: mmseg's setr_naive layout at
# ViT-B size with three auxiliary heads after layers 3 / 6 / 9, trained densely
# (prune_threshold = 1.0) with mmseg's SETR ADE20K recipe: SGD lr 0.01, momentum 0.9,
# no weight decay, heads at 10x lr (the `head` lr_mult of schedule_160k.py), PolyLR
# (power 0.9, eta_min 1e-4) over 160k iterations, batch 16 (mmseg: 8 GPUs x 2; here
# 4 x 4). An mmseg-trained SETR-naive ViT-B checkpoint of this layout can replace
# this step (it loads strictly). Then prune with
# configs/dtop/dtop_setr-naive_vit-b16_4xb4-40k_ade20k-512x512.py.
_base_ = [
    '../_base_/models/dtop_setr-naive_vit-b16.py', '../_base_/datasets/ade20k.py',
    '../_base_/default_runtime.py', '../_base_/schedules/schedule_160k.py'
]
model = dict(prune_threshold=1.0)
optim_wrapper = dict(
    optimizer=dict(_delete_=True, type='SGD', lr=0.01, momentum=0.9, weight_decay=0.0))
param_scheduler = [
    dict(type='PolyLR', power=0.9, eta_min=1e-4, by_epoch=False, begin=0,
         end=160000)
]

# Prune fine-tune (+DToP), SETR-naive ViT-B/16 on ADE20K 512x512.
#
#   bash tools/dist_train_load.sh THIS_CONFIG WORK_DIR BASE_CKPT
#
# Fine-tunes the BASE model of configs/setr/setr-naive_vit-b16_4xb4-160k_ade20k-512x512.py
# (or any mmseg SETR-naive ViT-B checkpoint of that layout: it loads strictly) with
# pruning live in training and test. After each auxiliary SETR head, tokens whose
# softmax confidence max_c p(c) is > p0 exit, except the k = 5 most confident per
# class. p0 = 0.95 after layer 3 (a 4-layer stage: only very sure tokens may freeze
# there) and 0.9 after layers 6 and 9 (DToP's ViT-B value); docs/other_segmenters.md
# gives the reasoning and the sweep to confirm it on a trained model.
# Schedule: the BASE recipe (SGD lr 0.01, heads x10 as in schedule_160k.py) for 40k
# iterations, with a 1500-iteration warmup: the restart from a converged model, and
# the BN statistics of the later heads adapting to the hard tokens, go smoothly.
_base_ = [
    '../_base_/models/dtop_setr-naive_vit-b16.py', '../_base_/datasets/ade20k.py',
    '../_base_/default_runtime.py', '../_base_/schedules/schedule_40k.py'
]
model = dict(prune_threshold=[0.95, 0.9, 0.9], keep_topk_per_class=5)
optim_wrapper = dict(
    optimizer=dict(_delete_=True, type='SGD', lr=0.01, momentum=0.9, weight_decay=0.0))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', power=0.9, eta_min=1e-4, by_epoch=False, begin=1500, end=40000)
]

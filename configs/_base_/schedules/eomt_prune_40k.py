# DToP prune fine-tune of an EoMT BASE model: EoMT's optimiser and lr schedule
# (eomt_39k.py: AdamW 1e-4, layer-wise decay 0.8, two-stage warm-up, poly 0.9), 40k
# iterations as DToP's ADE20K fine-tunes, and no masked-attention annealing: the BASE
# checkpoint carries attn_mask_probs = 0 and the fine-tune keeps the query blocks
# unmasked, as at inference. The BASE weights come in with `load_from`
# (tools/dist_train_load.sh).
_base_ = ['./eomt_39k.py']
__max_iters = 40000
param_scheduler = [dict(_base_.param_scheduler[0], end=__max_iters)]
train_cfg = dict(max_iters=__max_iters, val_interval=4000)
default_hooks = dict(checkpoint=dict(interval=4000))
custom_hooks = [h for h in _base_.custom_hooks if h['type'] != 'MaskAnnealingHook']

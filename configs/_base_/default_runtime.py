# Runtime shared by every DToP config (mmengine / mmseg 1.x).
#
# `custom_imports` registers the DToP modules (backbone, heads, loss, segmentor)
# into mmseg's registries before anything is built.
custom_imports = dict(imports=['dtop'], allow_failed_imports=False)
default_scope = 'mmseg'

# `dist_cfg.backend` is 'nccl' for GPU runs; tools/train.py and tools/test.py switch
# it to 'gloo' (and build DDP without device_ids) when no CUDA device is visible.
env_cfg = dict(
    cudnn_benchmark=True,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    dist_cfg=dict(backend='nccl'),
)

# DDP's find_unused_parameters. None: decided from the built model by DToPRunner
# (False when every trainable parameter takes part in the loss, as in every DToP
# model; the official configs' True costs a graph traversal per step and makes
# torch warn that nothing was unused). True/False: an explicit override.
find_unused_parameters = None

vis_backends = [dict(type='LocalVisBackend')]
# DToPVisualizer = mmseg's SegLocalVisualizer + the token exit-map panel
# (drawn by `tools/test.py --show-dir`).
visualizer = dict(
    type='DToPVisualizer', vis_backends=vis_backends, name='visualizer')
# FlopsMetricDimsHook hands the model's dimensions to IoUFlopsMetric (dynamic GFLOPs);
# PruneStatsHook logs per-stage keep ratios while training with pruning live;
# NonFiniteGuardHook stops training at the first NaN/Inf loss or gradient norm (that
# step is not applied; max_skips=N skips N bad steps first, as AMP's scaler does).
# DToPRunner adds a NonFiniteGuardHook(max_skips=0) to configs whose custom_hooks
# list has none.
custom_hooks = [
    dict(type='FlopsMetricDimsHook'),
    dict(type='PruneStatsHook', interval=50),
    dict(type='NonFiniteGuardHook', max_skips=0),
]
log_processor = dict(by_epoch=False)
log_level = 'INFO'
load_from = None
resume = False

# DToPRunner (dtop/engine/runner.py) = mmengine's Runner + strict checkpoint loading
# (a key/shape mismatch stops before any work; `load_strict = False`, or
# --allow-partial-load in the tools, allows a deliberate partial load), atomic
# checkpoint saves (CheckpointHook -> AtomicCheckpointHook) and data checks that
# name a bad image/annotation file. See docs/robustness.md.
runner_type = 'DToPRunner'
load_strict = True
# Checkpoints are loaded by a restricted unpickler that rebuilds tensors and plain data
# and runs nothing a file carries. True (--trust-checkpoint in the tools) unpickles
# them fully, which can run code: only for files you trust (docs/robustness.md).
trust_checkpoint = False

# Test-time augmentation (tools/test.py --tta): mmseg's SegTTAModel merging, plus
# the pruning statistics of every augmented pass for IoUFlopsMetric.
tta_model = dict(type='DToPTTAModel')

"""Evaluation: the analytic GFLOPs model and the mIoU + GFLOPs metric.

Importing this package registers ``IoUFlopsMetric`` (``mmseg.registry.METRICS``) and
``FlopsMetricDimsHook`` (``mmseg.registry.HOOKS``).
"""
from .flops import (DToPCostDims, count_flops_library, count_flops_mmseg, dense_flops,
                    mmseg_dense_flops, model_flops, patch_embed_flops, upsample_flops,
                    vit_layer_flops)
from .metrics import FlopsMetricDimsHook, IoUFlopsMetric, flops_summary

__all__ = ['DToPCostDims', 'count_flops_library', 'count_flops_mmseg',
           'dense_flops', 'mmseg_dense_flops', 'model_flops', 'patch_embed_flops',
           'upsample_flops',
           'vit_layer_flops', 'FlopsMetricDimsHook', 'IoUFlopsMetric', 'flops_summary']

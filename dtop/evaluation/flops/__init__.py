"""FLOPs of DToP models: the analytic cost model and a library counter.

* :mod:`dtop.models.cost` — counting conventions, per-layer formulas and
  :class:`HeadCost`, the cost each stage head declares (``head.cost()``);
* :mod:`.model_cost` — :class:`DToPCostDims` (backbone dims + each head's cost,
  read from a built model or a config) and the sums over active-token counts:
  :func:`model_flops`, :func:`dense_flops`, :func:`mmseg_dense_flops`,
  :func:`gflops_table`;
* :mod:`.counter` — :func:`count_flops_library` / :func:`count_flops_mmseg`, the
  same counts by mmengine's or fvcore's counter on the real model, per module.
"""
from dtop.models.cost import (CROP, PATCH, HeadCost, ResizeStep, layer_norm_flops,
                              patch_embed_flops, upsample_flops, vit_layer_coeffs,
                              vit_layer_flops)
from dtop.models.decode_heads.atm_prune_head import ATMPruneHead

from .counter import (StageHeadScope, _DenseTrace, _run_analyzer, _sdpa_flop_jit,
                      count_flops_library, count_flops_mmseg)
from .model_cost import (DToPCostDims, dense_flops, gflops_table, mmseg_dense_flops,
                         model_flops)


__all__ = ['CROP', 'PATCH', 'HeadCost', 'ResizeStep', 'layer_norm_flops',
           'patch_embed_flops', 'upsample_flops', 'vit_layer_coeffs', 'vit_layer_flops',
           'StageHeadScope', 'count_flops_library', 'count_flops_mmseg', 'DToPCostDims',
           'dense_flops', 'gflops_table', 'mmseg_dense_flops', 'model_flops']

"""Checks of the analytic cost model against the library FLOP counter, shared by the
tests in tests/test_evaluation/test_flops*.py."""
import numpy as np
import pytest
import torch
from mmengine.analysis import FlopAnalyzer

from dtop.evaluation.flops import _DenseTrace, _sdpa_flop_jit
from dtop.evaluation.flops.counter import _einsum_flop_jit
from dtop.models.pruning import ExitPolicy

#: every per-module entry of ``count_flops_library`` / ``dense_flops`` but ``heads``
MODULE_KEYS = ('backbone', 'upsample', 'final_head', 'aux_heads', 'backbone_final_head',
               'backbone_all_heads')


def assert_counts_match(lib, ana, keys=MODULE_KEYS, rel=1e-9, heads=True) -> None:
    """The counter's ``lib`` equals the analytic ``ana`` at each of ``keys`` (and per
    head, unless ``heads`` is False), within ``rel``."""
    for key in keys:
        assert lib[key] == pytest.approx(ana[key], rel=rel), key
    if heads:
        np.testing.assert_allclose(lib['heads'], ana['heads'], rtol=rel)


class KeepFirst(ExitPolicy):
    """Forced exits: after stage ``s`` only the first ``keep[s]`` tokens of an image stay."""

    def __init__(self, keep):
        self.keep = keep

    def prunes_at(self, stage):
        return True

    def __call__(self, stage, scores, segments):
        return segments.slot >= self.keep[stage]


def forced_exit_counts(model, keep, x):
    """Install :class:`KeepFirst` (``keep``) and run ``x`` through the stage loop.

    Returns:
        Tensor: the active token counts ``(B, num_stages)``.
    """
    model.set_exit_policy(KeepFirst(keep))
    with torch.no_grad():
        return model.run_stages(x).active_counts


def pruned_flop_analyzer(model, x) -> FlopAnalyzer:
    """mmengine's ``FlopAnalyzer`` on the model's pruned forward of ``x`` (the dense
    trace wrapper, the SDPA and einsum handles of :mod:`dtop.evaluation.flops`), quiet."""
    fa = FlopAnalyzer(_DenseTrace.build(model), (x, ))
    fa.set_op_handle('aten::scaled_dot_product_attention', _sdpa_flop_jit)
    fa.set_op_handle('aten::einsum', _einsum_flop_jit)
    fa.unsupported_ops_warnings(False)
    fa.uncalled_modules_warnings(False)
    return fa

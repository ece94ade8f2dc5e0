"""Library FLOP counts (mmengine's ``FlopAnalyzer`` or fvcore) of a built model, per module.

What the analytic model (:mod:`.model_cost`) is checked against. The DToP model is
traced through its stage loop (:func:`~dtop.models.segmentors.stage_loop.run_stage_loop`)
with every head seen through a :class:`StageHeadScope`, a thin module whose
``forward`` is the head's ``forward_tokens``: the tracer attributes all of a head's
ops — functional ones included, e.g. ``F.linear`` on its conv weights or the packed
attention of its layers — to that module's scope; the final head's
``final_pixels`` runs in a scope of its own (``pixels``), the pixel side of the
count. The heads themselves are not touched.
"""
import math
from contextlib import contextmanager
from typing import Dict, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

from dtop.models.pruning.policies import ConfidenceThreshold
from dtop.models.segmentors.stage_loop import run_stage_loop

from .model_cost import DToPCostDims

#: Ops that carry real FLOPs; if a trace meets one without a handle the count is wrong.
#: (``upsample_bicubic2d``, used to resize the position embedding for a crop other than
#: the training one, is free under fvcore conventions and not listed.)
_COSTLY_OPS = ('conv', 'linear', 'matmul', 'mm', 'bmm', 'einsum', 'attention', 'norm',
               'upsample_bilinear', 'upsample_nearest')
#: Unhandled ops that match :data:`_COSTLY_OPS` by name but are free under fvcore
#: conventions (the L2 normalisation of Segmenter's head is a reduction + division,
#: which fvcore does not count for mmseg's dense model either).
_FREE_OPS = ('aten::linalg_vector_norm', 'aten::norm', 'aten::frobenius_norm')


def _sdpa_flop_jit(inputs, outputs):
    """``aten::scaled_dot_product_attention``: ``QK^T`` plus ``AV`` (fvcore style).

    For query ``(..., L, E)``, key ``(..., S, E)`` and value ``(..., S, Ev)`` this
    is ``prod(...) * L * S * (E + Ev)``; the softmax, scale and mask are free.
    """
    from mmengine.analysis.jit_handles import get_shape
    q, k, v = (get_shape(t) for t in inputs[:3])
    batch = int(np.prod(q[:-2])) if len(q) > 2 else 1
    return batch * q[-2] * k[-2] * (q[-1] + v[-1])


def _einsum_flop_jit(inputs, outputs):
    """``aten::einsum`` of two operands, exactly: one multiply-add per term, i.e. the
    product of the sizes of all its indices (broadcast ``...`` dims included).

    The library handles read the count from numpy's ``einsum_path`` printout, which
    keeps 4 significant digits (and, with ``...``, may add a few FLOPs); other
    forms (more operands) still go to the library's handle.
    """
    from mmengine.analysis.jit_handles import einsum_flop_jit, get_shape
    equation = inputs[0].toIValue().replace(' ', '')
    shapes = [get_shape(v) for v in inputs[1].node().inputs()]
    operands = equation.split('->')[0].split(',')
    if len(operands) != 2 or any(s is None for s in shapes):
        return einsum_flop_jit(inputs, outputs)
    sizes, ellipsis = {}, []
    for term, shape in zip(operands, shapes):
        letters = term.replace('...', '')
        lead = len(shape) - len(letters)  # dims the ``...`` stands for
        start = term.find('...')
        dims = list(shape[:start]) + list(shape[start + lead:]) if start >= 0 else shape
        for letter, size in zip(letters, dims):
            sizes[letter] = max(sizes.get(letter, 1), int(size))
        if start >= 0:
            extra = [int(d) for d in shape[start:start + lead]]
            width = max(len(extra), len(ellipsis))  # right-aligned broadcasting
            extra = [1] * (width - len(extra)) + extra
            ellipsis = [1] * (width - len(ellipsis)) + ellipsis
            ellipsis = [max(a, b) for a, b in zip(ellipsis, extra)]
    return math.prod(sizes.values()) * math.prod(ellipsis)


@contextmanager
def _inference_state(model):
    """Eval mode, and the masked-attention probabilities of heads that anneal them
    (EoMT's ``attn_mask_probs``) at their inference value 0: the counted model is
    the one that serves predictions. Everything is restored afterwards."""
    was_training = model.training
    saved = [(m.attn_mask_probs, m.attn_mask_probs.clone()) for m in model.modules()
             if isinstance(getattr(m, 'attn_mask_probs', None), torch.Tensor)]
    model.eval()
    try:
        for buf, _ in saved:
            buf.zero_()
        yield model
    finally:
        for buf, value in saved:
            buf.copy_(value)
        model.train(was_training)


class StageHeadScope(nn.Module):
    """A stage head seen as a module whose ``forward`` is its ``forward_tokens``.

    ``forward_tokens`` goes through ``nn.Module.__call__`` (so a tracer opens this
    module's scope around all of the head's ops), keyword arguments included (the
    stage loop passes ``grid=`` to heads that read the token grid); every other
    attribute (``reads_grid`` included) and contract method is the head's own.

    Args:
        head: a stage head (:mod:`dtop.models.decode_heads.stage_head`).
    """

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, tokens, segments, **kwargs):
        return self.head.forward_tokens(tokens, segments, **kwargs)

    def forward_tokens(self, tokens, segments, **kwargs):
        return self(tokens, segments, **kwargs)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__('head'), name)


class _FinalPixels(nn.Module):
    """The final head's ``final_pixels`` in a module scope of its own (the head is
    held outside the module tree, so its parameters are not listed twice)."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self._head = [head]

    def forward(self, out, final_map, size, patch_size):
        return self._head[0].final_pixels(out, final_map, size, patch_size)


class _DenseTrace(object):
    """Factory of the traced wrappers (what the analyzers run)."""

    @staticmethod
    def build(model, exit_policy=None) -> nn.Module:
        """The segmentor's stage loop with every head's output kept alive (no head
        is dead code for the tracer) and the final ``final_pixels``.

        Module names are the segmentor's: ``model.backbone``,
        ``model.auxiliary_head.{s}``, ``model.decode_head``; ``pixels`` is the
        final head's ``final_pixels``.

        Args:
            model (DToPEncoderDecoder): the segmentor.
            exit_policy (ExitPolicy, optional): default the model's own.
        """
        model = getattr(model, 'module', model)
        heads = [StageHeadScope(h) for h in model.stage_heads]
        policy = model.exit_policy if exit_policy is None else exit_policy

        class Segmentor(nn.Module):

            def __init__(self):
                super().__init__()
                self.backbone = model.backbone
                self.auxiliary_head = nn.ModuleList(heads[:-1])
                self.decode_head = heads[-1]

        class DenseForward(nn.Module):

            def __init__(self):
                super().__init__()
                self.model = Segmentor()
                self.pixels = _FinalPixels(heads[-1])

            def forward(self, inputs):
                m = self.model
                out = run_stage_loop(m.backbone, [*m.auxiliary_head, m.decode_head],
                                     policy, inputs, all_heads=True)
                seg = self.pixels(out.head_outputs[-1][0], out.final_map,
                                  inputs.shape[-2:], m.backbone.patch_size)
                return (seg, ) + tuple(t for item in out.head_outputs if item is not None
                                       for ho, canvas in [item]
                                       for t in (ho.token_values, ho.image_values, canvas)
                                       if t is not None)

        return DenseForward()

    @staticmethod
    def build_mmseg(model) -> nn.Module:
        """mmseg's dense ``EncoderDecoder``: backbone, every head's ``forward`` and
        the decode head's ``predict_by_feat`` resize."""
        from mmseg.models.utils import resize

        class MMSegDenseForward(nn.Module):

            def __init__(self, segmentor):
                super().__init__()
                self.model = segmentor

            def forward(self, inputs):
                feats = self.model.extract_feat(inputs)
                seg = self.model.decode_head(feats)
                seg = resize(seg, size=inputs.shape[-2:], mode='bilinear',
                             align_corners=self.model.align_corners)
                aux = []
                if self.model.with_auxiliary_head:
                    aux = [head(feats) for head in self.model.auxiliary_head]
                return (seg, *aux)

        return MMSegDenseForward(model)


def _run_analyzer(wrapper, inputs, backend: str):
    if backend == 'mmengine':
        from mmengine.analysis import FlopAnalyzer as Analyzer
    elif backend == 'fvcore':
        from fvcore.nn import FlopCountAnalysis as Analyzer
    else:
        raise ValueError(f'backend must be "mmengine" or "fvcore", got {backend!r}')
    with torch.enable_grad():  # keep nn.MultiheadAttention off its fused fast path
        analyzer = Analyzer(wrapper, (inputs, ))
        analyzer.set_op_handle('aten::scaled_dot_product_attention', _sdpa_flop_jit)
        analyzer.set_op_handle('aten::einsum', _einsum_flop_jit)
        analyzer.unsupported_ops_warnings(False)
        analyzer.uncalled_modules_warnings(False)
        total = float(analyzer.total())
        by_module = analyzer.by_module()
        by_operator = analyzer.by_operator()
        unsupported = analyzer.unsupported_ops()
    costly = sorted(op for op in unsupported
                    if op not in _FREE_OPS and any(c in op for c in _COSTLY_OPS))
    if costly:
        raise RuntimeError(f'the FLOP counter met ops it cannot count: {costly}')
    return total, by_module, by_operator


def _summary(total: float, backbone: float, heads, up: float, by_operator) -> dict:
    final = heads[-1] + up
    aux = sum(heads[:-1])
    return dict(total=total, backbone=backbone, heads=heads, upsample=up,
                final_head=final, aux_heads=aux, backbone_final_head=backbone + final,
                backbone_all_heads=backbone + final + aux, by_operator=by_operator)


def count_flops_library(model, crop_shape: Optional[Sequence[int]] = None,
                        backend: str = 'mmengine') -> Dict[str, object]:
    """Count the dense model's FLOPs with a library counter, per module.

    The segmentor's stage loop is traced with an exit policy that never prunes on
    one random crop, batch 1, with every head's output kept alive. Each head's
    ``forward_tokens`` is counted in the head's scope (:class:`StageHeadScope`);
    the final head's ``final_pixels`` (resizing to the crop, and whatever the head
    computes there) is ``upsample``; the backbone is the rest.
    ``aten::scaled_dot_product_attention`` (unknown to the counters) gets a
    fvcore-style handle, two-operand ``aten::einsum`` an exact one
    (:func:`_einsum_flop_jit`). Any other unhandled op that would carry FLOPs
    raises. The model is counted at inference (eval mode, EoMT's masked attention
    annealed off) and left as it was.

    Args:
        model (DToPEncoderDecoder): a built model (weights need not be trained).
        crop_shape (tuple, optional): ``(H, W)``; default the training crop.
        backend (str): ``'mmengine'`` (``mmengine.analysis.FlopAnalyzer``) or
            ``'fvcore'`` (``fvcore.nn.FlopCountAnalysis``).

    Returns:
        dict: ``total`` (everything traced), ``backbone``, ``heads`` (list),
        ``upsample``, ``final_head``, ``aux_heads``, ``backbone_final_head``,
        ``backbone_all_heads`` and ``by_operator`` (Counter).
    """
    model = getattr(model, 'module', model)
    dims = DToPCostDims.from_model(model)
    H, W = crop_shape or dims.crop_size
    param = next(model.parameters())
    inputs = torch.randn(1, dims.in_channels, H, W, device=param.device, dtype=param.dtype)
    dense = ConfidenceThreshold(None).bind(dims.num_stages)  # nothing exits
    with _inference_state(model):
        total, by_module, by_operator = _run_analyzer(_DenseTrace.build(model, dense),
                                                      inputs, backend)
    S = dims.num_stages
    names = [f'model.auxiliary_head.{s}' for s in range(S - 1)] + ['model.decode_head']
    heads = [float(by_module[n]) for n in names]
    up = float(by_module['pixels'])
    return _summary(total, total - sum(heads) - up, heads, up, by_operator)


def count_flops_mmseg(model, crop_shape: Sequence[int],
                      backend: str = 'mmengine') -> Dict[str, object]:
    """Count mmseg's dense ``EncoderDecoder`` (e.g. built from
    :func:`dtop.models.mmseg_dense.mmseg_dense_model_cfg`) the same way.

    Every auxiliary head's ``forward`` is counted (as in training); the decode head
    is ``forward`` + ``predict_by_feat``'s resize to the crop.

    Args:
        model (EncoderDecoder): mmseg's model.
        crop_shape (tuple): ``(H, W)``.
        backend (str): ``'mmengine'`` or ``'fvcore'``.

    Returns:
        dict: as :func:`count_flops_library` (``heads`` lists the auxiliary heads
        the mmseg model has, then the decode head).
    """
    model = getattr(model, 'module', model)
    H, W = crop_shape
    param = next(model.parameters())
    inputs = torch.randn(1, 3, H, W, device=param.device, dtype=param.dtype)
    was_training = model.training
    model.eval()
    try:
        total, by_module, by_operator = _run_analyzer(_DenseTrace.build_mmseg(model),
                                                      inputs, backend)
    finally:
        model.train(was_training)
    num_aux = len(model.auxiliary_head) if model.with_auxiliary_head else 0
    names = [f'model.auxiliary_head.{s}' for s in range(num_aux)] + ['model.decode_head']
    heads = [float(by_module[n]) for n in names]
    # Upsampling inside a head (SETR's x4) is the head's; the final resize is the
    # only op outside the backbone and the heads.
    backbone = float(by_module['model.backbone'])
    return _summary(total, backbone, heads, total - backbone - sum(heads), by_operator)

"""Layer-wise learning-rate decay over a ViT's blocks, and EoMT's two-stage warm-up.

EoMT (Kerssies et al., CVPR 2025) fine-tunes its DINOv2 encoder with layer-wise lr
decay (block ``i`` of ``L`` at ``lr * decay ** (L - 1 - i)``) and a two-stage
warm-up: the new modules warm up first while the encoder waits, then the encoder
warms up, then a polynomial decay runs to the end for all. mmseg's
``LearningRateDecayOptimizerConstructor`` knows BEiT/MAE/ConvNeXt backbones by
class name only, and neither it nor mmengine has the two-stage warm-up, so both
live here, as small registered components:

* :class:`ViTLayerDecayOptimWrapperConstructor` — one parameter group per block
  depth. The blocks are ``backbone.layers.*`` and then, for a head that holds the
  ViT's last blocks (EoMT's query blocks), ``decode_head.blocks.*``; the embedding
  parameters sit one step below block 0; everything else (heads, the final norm)
  trains at the base lr. Groups of the ViT carry ``backbone=True`` (read by the
  scheduler below);
* :class:`TwoStageWarmupPolyLR` — per group: non-backbone groups rise linearly over
  ``warmup_iters[0]``; backbone groups stay at 0 for ``warmup_iters[0]``, then rise
  over ``warmup_iters[1]``; after both warm-ups every group decays as
  ``(1 - progress) ** power`` to 0 at ``end``.

No weight decay on 1-D parameters (norms, biases, layer scales) and on the cls /
register / position tokens.
"""
from typing import List, Optional, Sequence

import torch.nn as nn
from mmengine.optim import DefaultOptimWrapperConstructor
from mmengine.optim.scheduler.lr_scheduler import LRSchedulerMixin
from mmengine.optim.scheduler.param_scheduler import INF, _ParamScheduler
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS, PARAM_SCHEDULERS

from dtop.utils.errors import OptionError

_EMBEDDINGS = ('backbone.patch_embed.', 'backbone.cls_token', 'backbone.pos_embed',
               'backbone.register_tokens')
_NO_DECAY_TOKENS = ('cls_token', 'pos_embed', 'register_tokens')


def block_depth(name: str, num_backbone_layers: int) -> Optional[int]:
    """Depth of a parameter in the ViT: ``-1`` for the embeddings, ``i`` for block
    ``i`` (``decode_head.blocks.j`` continues after the backbone's layers), ``None``
    for everything else."""
    if name.startswith(_EMBEDDINGS):
        return -1
    for prefix, offset in (('backbone.layers.', 0), ('decode_head.blocks.', num_backbone_layers)):
        if name.startswith(prefix):
            return offset + int(name[len(prefix):].split('.', 1)[0])
    return None


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class ViTLayerDecayOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """Parameter groups with layer-wise lr decay (see the module docstring).

    ``paramwise_cfg``: ``decay_rate`` (float in ``(0, 1]``, required).
    """

    def __init__(self, optim_wrapper_cfg: dict, paramwise_cfg: Optional[dict] = None) -> None:
        paramwise_cfg = dict(paramwise_cfg or {})
        self.decay_rate = paramwise_cfg.pop('decay_rate', None)
        if not isinstance(self.decay_rate, (int, float)) or not 0 < self.decay_rate <= 1:
            raise OptionError('optim_wrapper.paramwise_cfg.decay_rate must be a number in '
                              f'(0, 1], got {self.decay_rate!r}')
        if paramwise_cfg:
            raise OptionError(f'optim_wrapper.paramwise_cfg: {sorted(paramwise_cfg)} are not '
                              'supported with ViTLayerDecayOptimWrapperConstructor (only '
                              'decay_rate)')
        # a non-empty paramwise_cfg makes the default constructor call add_params
        super().__init__(optim_wrapper_cfg, dict(decay_rate=self.decay_rate))

    def add_params(self, params: List[dict], module: nn.Module, **kwargs) -> None:
        model = getattr(module, 'module', module)
        num_backbone = len(model.backbone.layers)
        head_blocks = getattr(model.decode_head, 'blocks', None)
        total = num_backbone + (len(head_blocks) if isinstance(head_blocks, nn.ModuleList)
                                else 0)
        groups = {}
        for name, param in model.named_parameters():
            if not param.requires_grad:
                continue
            depth = block_depth(name, num_backbone)
            scale = 1.0 if depth is None else self.decay_rate ** (total - 1 - depth)
            no_decay = param.ndim <= 1 or name.endswith(_NO_DECAY_TOKENS)
            key = (depth, no_decay)
            if key not in groups:
                groups[key] = dict(params=[], lr=self.base_lr * scale, lr_scale=scale,
                                   weight_decay=0.0 if no_decay else self.base_wd,
                                   backbone=depth is not None)
            groups[key]['params'].append(param)
        params.extend(groups[k] for k in sorted(groups, key=lambda k: (
            -2 if k[0] is None else k[0], k[1])))


def two_stage_factor(step: int, backbone: bool, warmup_iters: Sequence[int], total: int,
                     power: float = 0.9) -> float:
    """The lr factor of a group at ``step`` (see :class:`TwoStageWarmupPolyLR`)."""
    first, second = warmup_iters
    if backbone:
        if step < first:
            return 0.0
        if step < first + second:
            return (step - first) / second
    elif step < first:
        return step / first
    warm = first + second
    if step < warm:
        return 1.0
    progress = min(1.0, (step - warm) / max(1, total - warm))
    return (1.0 - progress) ** power


@PARAM_SCHEDULERS.register_module()
class TwoStageWarmupPolyLR(LRSchedulerMixin, _ParamScheduler):
    """EoMT's lr schedule: two warm-ups (new modules, then the ViT), then poly decay.

    Groups built by :class:`ViTLayerDecayOptimWrapperConstructor` carry
    ``backbone``; groups without the key count as non-backbone.

    Args:
        optimizer: the optimizer (wrapper).
        warmup_iters (Sequence[int]): ``(non-backbone warm-up, backbone warm-up)``
            iterations (EoMT: ``(500, 1000)``).
        power (float): poly power. Default 0.9.
        begin (int): first iteration. Default 0.
        end (int): last iteration (the schedule reaches 0 there).
        by_epoch (bool): must be False (iteration-based).
    """

    def __init__(self, optimizer, warmup_iters: Sequence[int] = (500, 1000),
                 power: float = 0.9, begin: int = 0, end: int = INF, by_epoch: bool = False,
                 last_step: int = -1, verbose: bool = False) -> None:
        if by_epoch:
            raise OptionError('TwoStageWarmupPolyLR is iteration-based: by_epoch=False')
        if len(warmup_iters) != 2 or min(warmup_iters) < 1:
            raise OptionError(f'TwoStageWarmupPolyLR.warmup_iters must be two positive '
                              f'iteration counts, got {warmup_iters!r}')
        if end == INF or end - begin <= sum(warmup_iters):
            raise OptionError(f'TwoStageWarmupPolyLR needs end (the last iteration) after '
                              f'both warm-ups ({sum(warmup_iters)} iterations); got '
                              f'begin={begin}, end={end}')
        self.warmup_iters = tuple(int(w) for w in warmup_iters)
        self.power = power
        self.total = end - begin
        super().__init__(optimizer, begin=begin, end=end, by_epoch=False,
                         last_step=last_step, verbose=verbose)

    def _get_value(self) -> List[float]:
        step = self.last_step
        return [base * two_stage_factor(step, bool(group.get('backbone', False)),
                                        self.warmup_iters, self.total, self.power)
                for base, group in zip(self.base_values, self.optimizer.param_groups)]

"""Anneal EoMT's masked attention away during training (mask annealing).

An EoMT head holds ``attn_mask_probs`` (one float per query block): the
probability that a query of that block attends through the mask predicted by
the previous block. EoMT starts with masked attention everywhere (probability 1)
and, block after block, decays it to 0, so the final model needs no mask at
inference. Each block ``i`` follows :func:`mask_prob`::

    p_i(t) = 1                                        t <  start_i
    p_i(t) = (1 - (t - start_i) / (end_i - start_i)) ** power
    p_i(t) = 0                                        t >= end_i

with ``power = 0.9`` (the learning-rate polynomial's power). ``t`` is the number
of finished training iterations: iteration ``t`` (0-based) trains with
``p_i(t)``; after it the buffer holds ``p_i(t + 1)``, so a validation or
checkpoint after ``t + 1`` iterations sees exactly what EoMT's
``on_train_batch_end`` leaves there (it sets the probabilities from the
optimizer-step count after each step). Once ``t >= end_i`` the value is exactly 0.

EoMT's ADE20K semantic EoMT-L 512 recipe anneals the 4 query blocks over
``start_iters=[6520, 13040, 19560, 26080]``, ``end_iters=[13040, 19560, 26080,
32600]`` of about 39k iterations (31 epochs at batch size 16), so the last
sixth of training runs without masks. The original model applies the current
probability in evaluation mode too, so a validation in the middle of training
uses masked attention the way training does at that point.

The hook sets the buffer before every training iteration, after it (for the
next one), and at ``before_train``, so a resumed run continues from the
restored iteration. Iterations are runner iterations (optimizer steps unless
gradients are accumulated).
"""
import math
import numbers
from typing import List, Optional, Sequence

import torch
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmseg.registry import HOOKS

from dtop.utils.errors import OptionError

__all__ = ['MaskAnnealingHook', 'mask_prob']

BUFFER = 'attn_mask_probs'


def mask_prob(iteration: int, start: int, end: int, power: float = 0.9) -> float:
    """Masked-attention probability of one block after ``iteration`` iterations.

    Args:
        iteration (int): finished training iterations.
        start (int): last iteration at probability 1.
        end (int): first iteration at probability 0; ``end > start``.
        power (float): exponent of the polynomial decay. Default 0.9.

    Returns:
        float: 1 before ``start``, ``(1 - (iteration - start) / (end - start))
        ** power`` in between, exactly 0 from ``end`` on.
    """
    if end <= start:
        raise ValueError(f'mask_prob: end ({end}) must be greater than start ({start})')
    if iteration < start:
        return 1.0
    if iteration >= end:
        return 0.0
    return (1.0 - (iteration - start) / (end - start)) ** power


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_steps(name: str, steps) -> List[int]:
    if isinstance(steps, (str, bytes)) or not isinstance(steps, Sequence) or not steps:
        raise OptionError(f'MaskAnnealingHook: {name} must be a non-empty list of '
                          f'iterations (one per query block), got {steps!r}.')
    bad = [s for s in steps if not _is_int(s) or s < 0]
    if bad:
        raise OptionError(f'MaskAnnealingHook: {name} must hold integers >= 0, got '
                          f'{list(steps)!r} ({bad[0]!r} is not).')
    return [int(s) for s in steps]


@HOOKS.register_module()
class MaskAnnealingHook(Hook):
    """Decay the decode head's ``attn_mask_probs`` block by block (module doc).

    Args:
        start_iters (Sequence[int]): per query block, the iteration where its
            probability starts to decay.
        end_iters (Sequence[int]): per query block, the iteration from which it
            is 0; ``end_iters[i] > start_iters[i]``.
        power (float): exponent of the polynomial decay. Default 0.9 (EoMT).

    Raises:
        OptionError: invalid arguments (at construction), or a model whose
            decode head has no ``attn_mask_probs`` buffer of
            ``len(start_iters)`` entries (at ``before_train``).
    """

    priority = 'NORMAL'  # after_train_iter runs before the checkpoint hook

    def __init__(self, start_iters: Sequence[int], end_iters: Sequence[int],
                 power: float = 0.9) -> None:
        starts = _check_steps('start_iters', start_iters)
        ends = _check_steps('end_iters', end_iters)
        if len(starts) != len(ends):
            raise OptionError(f'MaskAnnealingHook: start_iters and end_iters must have '
                              f'the same length (one entry per query block), got '
                              f'{len(starts)} and {len(ends)}.')
        for i, (s, e) in enumerate(zip(starts, ends)):
            if e <= s:
                raise OptionError(f'MaskAnnealingHook: end_iters[{i}]={e} must be greater '
                                  f'than start_iters[{i}]={s}.')
        if isinstance(power, bool) or not isinstance(power, numbers.Real) \
                or not math.isfinite(power) or power <= 0:
            raise OptionError(f'MaskAnnealingHook: power must be a finite number > 0, '
                              f'got {power!r}.')
        self.start_iters = starts
        self.end_iters = ends
        self.power = float(power)

    def probs(self, iteration: int) -> List[float]:
        """Every block's probability after ``iteration`` finished iterations."""
        return [mask_prob(iteration, s, e, self.power)
                for s, e in zip(self.start_iters, self.end_iters)]

    def _buffer(self, runner) -> torch.Tensor:
        model = runner.model
        while not hasattr(model, 'decode_head') and hasattr(model, 'module'):
            model = model.module  # DDP / FSDP / TTA wrappers
        head = getattr(model, 'decode_head', None)
        if head is None:
            raise OptionError(f'MaskAnnealingHook (custom_hooks) needs a model with a '
                              f'decode_head; {type(model).__name__} has none. Remove the '
                              'hook or use an EoMT head.')
        probs = getattr(head, BUFFER, None)
        if not isinstance(probs, torch.Tensor):
            raise OptionError(f'MaskAnnealingHook (custom_hooks) needs a decode head with '
                              f'an {BUFFER} buffer (an EoMT head); model.decode_head '
                              f'({type(head).__name__}) has none. Remove the hook or use '
                              'an EoMT head.')
        if probs.dim() != 1 or probs.numel() != len(self.start_iters):
            raise OptionError(f'MaskAnnealingHook: start_iters/end_iters have '
                              f'{len(self.start_iters)} entries but model.decode_head.'
                              f'{BUFFER} has shape {tuple(probs.shape)} (one entry per '
                              'query block); give one start and end iteration per block.')
        return probs

    def _set(self, runner, iteration: int, log: bool = False) -> None:
        probs = self._buffer(runner)
        values = self.probs(iteration)
        with torch.no_grad():
            probs.copy_(torch.tensor(values, dtype=probs.dtype, device=probs.device))
        hub = getattr(runner, 'message_hub', None)
        if log and hub is not None:
            for i, v in enumerate(values):
                hub.update_scalar(f'train/attn_mask_prob_{i}', v)

    def before_train(self, runner) -> None:
        self._set(runner, runner.iter)
        max_iters: Optional[int] = getattr(runner, 'max_iters', None)
        if _is_int(max_iters) and max(self.end_iters) > max_iters:
            print_log(f'MaskAnnealingHook: end_iters reach {max(self.end_iters)} but '
                      f'training stops at {max_iters} iterations; masked attention will '
                      f'still be on at the end ({BUFFER} = '
                      f'{[round(p, 3) for p in self.probs(max_iters)]}).',
                      logger='current', level=30)

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        self._set(runner, runner.iter, log=True)

    def after_train_iter(self, runner, batch_idx: int, data_batch=None,
                         outputs=None) -> None:
        self._set(runner, runner.iter + 1)

"""Stop training at the first non-finite loss or gradient, and never save NaN weights.

:class:`NonFiniteGuardHook` (in ``custom_hooks`` of the runtime base; DToPRunner
adds one when a config has none) reads what the guarded optimizer wrapper
(:mod:`dtop.engine.optim_wrappers`) recorded: a step whose loss or gradient norm
was NaN/Inf was *not applied*. After ``max_skips`` such steps (default 0) the
next one stops training with one line::

    error: training stopped at iteration 3: non-finite loss terms decode.loss_ce=nan,
    ... (loss nan), gradient norm nan. The step was not applied ... Last good
    checkpoint: WORK/iter_2.pth. Fix: ...

:func:`check_finite_before_save` refuses to write a checkpoint whose weights are
not finite (the checkpoint hook and ``DToPRunner.save_checkpoint`` call it).
"""
import math
import os.path as osp
from typing import Dict, List, Optional

import torch
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmseg.registry import HOOKS

from dtop.utils.errors import NonFiniteError, OptionError
from dtop.utils.nonfinite import describe_non_finite, non_finite_tensors

__all__ = ['NonFiniteGuardHook', 'check_finite_before_save', 'last_good_checkpoint']


def last_good_checkpoint(work_dir: str) -> Optional[str]:
    """The complete checkpoint ``WORK_DIR/last_checkpoint`` names, or None."""
    from dtop.utils.checkpoint_read import diagnose_checkpoint_file
    from dtop.utils.checkpoint_resume import _read_pointer
    pointer = osp.join(work_dir, 'last_checkpoint')
    if not osp.isfile(pointer):
        return None
    named, _ = _read_pointer(pointer)
    return named if named and diagnose_checkpoint_file(named) is None else None


def _last_good_text(work_dir: str) -> str:
    good = last_good_checkpoint(work_dir)
    return f'the last good checkpoint is {good}' if good else \
        'no checkpoint was saved before'


def check_finite_before_save(model, target: str, work_dir: str) -> None:
    """Raise instead of saving a model whose weights hold NaN or Inf.

    Args:
        model (nn.Module): the model (wrappers are looked through).
        target (str): the checkpoint that would be written, for the message.
        work_dir (str): the run's work dir (names the last good checkpoint).

    Raises:
        NonFiniteError: naming the first non-finite tensors.
    """
    from dtop.utils.checkpoint_fit import _unwrap
    state = _unwrap(model).state_dict()
    bad = non_finite_tensors(state)
    if bad:
        raise NonFiniteError(
            f'not saving checkpoint {target}: the model\'s weights are not finite: '
            f'{describe_non_finite(bad, len(state))}. Training diverged; '
            f'{_last_good_text(work_dir)}. Fix: lower optim_wrapper.optimizer.lr or set '
            'optim_wrapper.clip_grad, and keep NonFiniteGuardHook in custom_hooks (it '
            'stops at the first non-finite step, before the weights are spoiled).')


def _fmt(value) -> str:
    return f'{value:.4g}' if isinstance(value, float) and math.isfinite(value) else str(value)


def _non_finite_terms(outputs) -> Dict[str, float]:
    """The loss terms of a train step's log variables that are NaN/Inf."""
    bad = {}
    if not isinstance(outputs, dict):
        return bad
    for key, value in outputs.items():
        if 'loss' not in key or key == 'loss':  # the terms; the total is reported apart
            continue
        try:
            v = torch.as_tensor(value).detach().float()
        except (TypeError, ValueError, RuntimeError):
            continue
        if v.numel() and not bool(torch.isfinite(v).all()):
            bad[key] = float(v.reshape(-1)[~torch.isfinite(v.reshape(-1))][0])
    return bad


@HOOKS.register_module()
class NonFiniteGuardHook(Hook):
    """Stop training at the first non-finite loss or gradient norm (module doc).

    Args:
        max_skips (int): bad steps that are skipped (not applied, with a warning)
            before the next one stops training, as AMP's loss scaler skips steps.
            Default 0: stop at the first.
    """

    priority = 'ABOVE_NORMAL'  # before the logger and the checkpoint hook

    def __init__(self, max_skips: int = 0) -> None:
        if isinstance(max_skips, bool) or not isinstance(max_skips, int) or max_skips < 0:
            raise OptionError(f'NonFiniteGuardHook: max_skips must be an integer >= 0, '
                              f'got {max_skips!r}.')
        self.max_skips = max_skips
        self.skipped = 0
        self._guarded = False

    def before_train(self, runner) -> None:
        from dtop.engine.optim_wrappers import NonFiniteGuardMixin
        self._guarded = isinstance(runner.optim_wrapper, NonFiniteGuardMixin)
        if not self._guarded:
            print_log(f'NonFiniteGuardHook: the optimizer wrapper '
                      f'{type(runner.optim_wrapper).__name__} does not check steps before '
                      'applying them (not built by DToPRunner); a non-finite loss is '
                      'detected after its step and stops training.', logger='current',
                      level=30)

    def after_train_iter(self, runner, batch_idx: int, data_batch=None,
                         outputs=None) -> None:
        terms = _non_finite_terms(outputs)
        if self._guarded:
            event = runner.optim_wrapper.pop_nonfinite_event()
            if event is None:
                return  # applied (or an accumulation step: decided at the update)
        elif terms:
            event = dict(loss=None, loss_finite=False, grad_norm=None, bad_params=[])
        else:
            return
        it = runner.iter + 1
        what = self._describe(runner, event, terms)
        self.skipped += 1
        if self._guarded and self.skipped <= self.max_skips:
            print_log(f'NonFiniteGuardHook: iteration {it}: {what}; the optimizer step was '
                      f'skipped ({self.skipped} of max_skips={self.max_skips}).',
                      logger='current', level=30)
            return
        applied = ('The step was not applied, so the weights are still finite'
                   if self._guarded else
                   'The optimizer wrapper is not guarded: that step was applied and the '
                   'weights may be non-finite')
        skipped = (f' ({self.skipped - 1} earlier bad step(s) skipped, max_skips='
                   f'{self.max_skips})' if self.skipped > 1 else '')
        raise NonFiniteError(
            f'training stopped at iteration {it}: {what}{skipped}. {applied}; '
            f'{_last_good_text(runner.work_dir)}. Fix: lower the learning rate '
            f'(optim_wrapper.optimizer.lr={self._lr(runner)}), clip gradients '
            '(optim_wrapper.clip_grad=dict(max_norm=1.0)), or let '
            "dict(type='NonFiniteGuardHook', max_skips=N) in custom_hooks skip a few bad "
            'steps.')

    @staticmethod
    def _lr(runner) -> str:
        lr = ((runner.cfg.get('optim_wrapper') or {}).get('optimizer') or {}).get('lr') \
            if isinstance(runner.cfg.get('optim_wrapper'), dict) else None
        if isinstance(lr, (int, float)):
            return _fmt(float(lr))
        try:
            lrs = [v for vs in runner.optim_wrapper.get_lr().values() for v in vs]
            return _fmt(float(max(lrs)))
        except Exception:  # noqa: BLE001  (only for the message)
            return '?'

    @staticmethod
    def _describe(runner, event: Dict, terms: Dict[str, float]) -> str:
        parts: List[str] = []
        loss = event.get('loss')
        if terms:
            more = f' and {len(terms) - 6} more' if len(terms) > 6 else ''
            parts.append('non-finite loss terms ' + ', '.join(
                f'{k}={_fmt(v)}' for k, v in list(terms.items())[:6]) + more
                + (f' (loss {_fmt(loss)})' if loss is not None else ''))
        elif not event.get('loss_finite', True):
            parts.append(f'non-finite loss ({_fmt(loss)})')
        norm = event.get('grad_norm')
        if norm is not None and not math.isfinite(norm):
            names = {id(p): n for n, p in runner.model.named_parameters()}
            first = [names.get(id(p), '?') for p in event.get('bad_params') or []]
            text = f'gradient norm {_fmt(norm)}'
            if first:
                text += f' (first non-finite gradients: {", ".join(first)})'
            if not parts:
                text = 'non-finite ' + text + (f'; the loss is finite ({_fmt(loss)})'
                                               if loss is not None else '')
            parts.append(text)
        return ', '.join(parts) or 'non-finite values'

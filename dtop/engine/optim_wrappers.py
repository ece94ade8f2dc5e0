"""Optimizer wrappers that never apply a non-finite update.

:class:`NonFiniteGuardMixin` checks, between ``backward`` and the optimizer step,
that the loss and the gradient norm are finite. A bad step is not applied (no
optimizer update, the gradients are zeroed, as AMP's loss scaler skips a step
with overflowing gradients) and is recorded for :class:`NonFiniteGuardHook`,
which decides to stop training or to let it go on (``max_skips``) and says so.

:class:`~dtop.engine.DToPRunner` builds every ``optim_wrapper`` of a config as
the guarded subclass of its type (:func:`guarded_optim_wrapper_class`:
``OptimWrapper`` -> :class:`NonFiniteGuardOptimWrapper`, ``AmpOptimWrapper``
(``--amp``) -> :class:`NonFiniteGuardAmpOptimWrapper`, other subclasses likewise)
when a ``NonFiniteGuardHook`` is registered (the runner adds one by default).

Under AMP only the loss is checked: overflowing *gradients* are the loss scaler's
business (it skips those steps and lowers the scale).
"""
from typing import Dict, List, Optional

import torch
from mmengine.optim import AmpOptimWrapper, OptimWrapper
from mmengine.registry import OPTIM_WRAPPERS

__all__ = ['NonFiniteGuardMixin', 'NonFiniteGuardOptimWrapper',
           'NonFiniteGuardAmpOptimWrapper', 'guarded_optim_wrapper_class',
           'guard_optim_wrapper_cfg']


def _total_norm(grads: List[torch.Tensor]) -> torch.Tensor:
    if hasattr(torch.nn.utils, 'get_total_norm'):
        return torch.nn.utils.get_total_norm(grads, 2.0, error_if_nonfinite=False)
    return torch.linalg.vector_norm(
        torch.stack([torch.linalg.vector_norm(g.detach().float()) for g in grads]))


class NonFiniteGuardMixin:
    """Skip (and record) optimizer steps whose loss or gradient norm is not finite.

    Mixed into an :class:`~mmengine.optim.OptimWrapper` subclass (before it);
    ``update_params`` is the only method changed. Under distributed training the
    decision is all-reduced, so every rank skips the same steps.

    Attributes:
        check_grads (bool): also check the gradient norm (False under AMP).
        skipped_steps (int): steps not applied so far.
    """

    check_grads = True

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.skipped_steps = 0
        self._loss_flag: Optional[torch.Tensor] = None
        self._loss_value: Optional[torch.Tensor] = None
        self._event: Optional[Dict] = None

    def update_params(self, loss: torch.Tensor, step_kwargs: Optional[Dict] = None,
                      zero_kwargs: Optional[Dict] = None) -> None:
        """As :meth:`OptimWrapper.update_params`, with the check before the step."""
        step_kwargs = {} if step_kwargs is None else step_kwargs
        zero_kwargs = {} if zero_kwargs is None else zero_kwargs
        loss = self.scale_loss(loss)
        bad = ~torch.isfinite(loss.detach()).all()
        self._loss_flag = bad if self._loss_flag is None else (self._loss_flag | bad)
        self._loss_value = loss.detach()
        self.backward(loss)
        if self.should_update():
            event = self._check_step()
            if event is None:
                self.step(**step_kwargs)
            else:
                self.skipped_steps += 1
                self._event = event
            self.zero_grad(**zero_kwargs)

    def _check_step(self) -> Optional[Dict]:
        """None when the step may be applied, else what was not finite."""
        params = [p for group in self.optimizer.param_groups for p in group['params']
                  if p.grad is not None]
        flag, norm = self._loss_flag, None
        if self.check_grads and params:
            norm = _total_norm([p.grad for p in params])
            grad_bad = ~torch.isfinite(norm)
            flag = grad_bad if flag is None else (flag.to(grad_bad.device) | grad_bad)
        loss_flag, loss_value = self._loss_flag, self._loss_value
        self._loss_flag = self._loss_value = None
        if flag is None:
            return None
        flag = flag.reshape(1).float()
        if torch.distributed.is_available() and torch.distributed.is_initialized() and \
                torch.distributed.get_world_size() > 1:
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        if not flag.item():
            return None
        norm_value = float(norm) if norm is not None else None
        bad_params = []
        if norm_value is not None and not torch.isfinite(torch.tensor(norm_value)):
            bad_params = [p for p in params if not bool(torch.isfinite(p.grad).all())][:3]
        return dict(loss=float(loss_value) if loss_value is not None and
                    loss_value.numel() == 1 else None,
                    loss_finite=not bool(loss_flag) if loss_flag is not None else True,
                    grad_norm=norm_value, bad_params=bad_params)

    def pop_nonfinite_event(self) -> Optional[Dict]:
        """The last skipped step's record (``loss``, ``loss_finite``, ``grad_norm``,
        ``bad_params``: up to 3 parameters with non-finite gradients), once; None
        when the last step was applied."""
        event, self._event = self._event, None
        return event


@OPTIM_WRAPPERS.register_module()
class NonFiniteGuardOptimWrapper(NonFiniteGuardMixin, OptimWrapper):
    """:class:`~mmengine.optim.OptimWrapper` + :class:`NonFiniteGuardMixin`."""


@OPTIM_WRAPPERS.register_module()
class NonFiniteGuardAmpOptimWrapper(NonFiniteGuardMixin, AmpOptimWrapper):
    """:class:`~mmengine.optim.AmpOptimWrapper` + :class:`NonFiniteGuardMixin`
    (loss only: gradient overflow is handled by the loss scaler)."""

    check_grads = False


_GUARDED = {OptimWrapper: NonFiniteGuardOptimWrapper,
            AmpOptimWrapper: NonFiniteGuardAmpOptimWrapper}


def guarded_optim_wrapper_class(cls: type) -> type:
    """The guarded subclass of an :class:`OptimWrapper` class (made once per class)."""
    if issubclass(cls, NonFiniteGuardMixin):
        return cls
    if cls not in _GUARDED:
        _GUARDED[cls] = type(f'NonFiniteGuard{cls.__name__}', (NonFiniteGuardMixin, cls),
                             dict(__module__=__name__,
                                  check_grads=not issubclass(cls, AmpOptimWrapper),
                                  __doc__=f'{cls.__name__} + NonFiniteGuardMixin.'))
    return _GUARDED[cls]


def guard_optim_wrapper_cfg(cfg):
    """``cfg`` (an ``optim_wrapper`` config) with its type made guarded; unchanged
    for several optimizers (``OptimWrapperDict``) or a type that is not an
    ``OptimWrapper``."""
    if not isinstance(cfg, dict) or ('optimizer' not in cfg and 'constructor' not in cfg):
        return cfg
    typ = cfg.get('type', 'OptimWrapper')
    if isinstance(typ, str):
        from mmseg.registry import OPTIM_WRAPPERS as SEG_OPTIM_WRAPPERS
        cls = SEG_OPTIM_WRAPPERS.get(typ) or OPTIM_WRAPPERS.get(typ)
    else:
        cls = typ
    if not (isinstance(cls, type) and issubclass(cls, OptimWrapper)):
        return cfg
    new = cfg.copy()
    new['type'] = guarded_optim_wrapper_class(cls)
    return new

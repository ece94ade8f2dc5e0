"""Validation of the pruning options where they enter (config, ``--cfg-options``, CLI).

:func:`validate_prune_threshold` is the single place that decides what a valid
``prune_threshold`` (the paper's p0) is; the segmentor, ``demo/image_demo.py`` and
the analysis tools call it, so a bad value is named the same way everywhere.
"""
import math
import numbers
from typing import List, Optional, Sequence, Union

from dtop.utils.errors import OptionError

ThresholdValue = Union[None, float, Sequence[Optional[float]]]


def _describe(value) -> str:
    """``repr`` of ``value`` with its type, e.g. ``'abc' (str)``."""
    return f'{value!r} ({type(value).__name__})'


def _check_one(v, where: str, whole) -> Optional[float]:
    """Validate one per-stage value; ``None`` or ``>= 1`` disables the stage."""
    if v is None:
        return None
    if isinstance(v, str):
        hint = ''
        try:
            float(v)
            hint = ' (it looks like a number: write it without quotes)'
        except ValueError:
            pass
        raise OptionError(
            f'prune_threshold{where}: got the string {v!r}{hint}; expected a number in '
            f'[0, 1] (>= 1 or None disables pruning at that stage). Whole value: '
            f'{whole!r}. Example: --cfg-options model.prune_threshold=0.9 or '
            f'model.prune_threshold="[0.9,0.95]".')
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise OptionError(
            f'prune_threshold{where}: got {_describe(v)}; expected a number in [0, 1] '
            f'(>= 1 or None disables pruning at that stage).')
    f = float(v)
    if math.isnan(f):
        raise OptionError(
            f'prune_threshold{where}: got nan; a NaN threshold would silently disable '
            'pruning (every comparison with it is False). Use a number in [0, 1], or '
            '1.0 / None to disable pruning.')
    if math.isinf(f):
        raise OptionError(
            f'prune_threshold{where}: got {f}; expected a finite number in [0, 1] '
            '(1.0 or None disables pruning at that stage).')
    if f < 0:
        raise OptionError(
            f'prune_threshold{where}: got {f}, a negative threshold; expected a number '
            'in [0, 1] (>= 1 or None disables pruning at that stage).')
    return None if f >= 1 else f


def validate_prune_threshold(value: ThresholdValue, num_stages: int) -> List[Optional[float]]:
    """Check ``prune_threshold`` and expand it to one value per auxiliary stage.

    Args:
        value: ``None`` (no pruning), one number for every auxiliary stage, or a
            list/tuple with one value per auxiliary stage (``num_stages - 1``
            values), optionally followed by one extra value for the final stage,
            which is ignored (nothing can exit after the last stage). Each value is
            ``None`` or a finite real number ``>= 0``; ``>= 1`` or ``None``
            disables pruning after that stage.
        num_stages (int): stages of the model (auxiliary heads + 1), ``>= 1``.

    Returns:
        list[float | None]: ``num_stages - 1`` thresholds; ``None`` where the stage
        does not prune, else a float in ``[0, 1)``.

    Raises:
        OptionError: a ``ValueError`` naming the offending value and what is
            expected, for strings (including what mmengine's ``DictAction`` leaves
            for ``model.prune_threshold=abc``: the string ``'abc'``), bools, NaN,
            infinities, negative numbers, other types, and lists of the wrong
            length.
    """
    if isinstance(num_stages, bool) or not isinstance(num_stages, int) or num_stages < 1:
        raise OptionError(f'num_stages must be an int >= 1, got {num_stages!r}.')
    aux = num_stages - 1
    if value is None or isinstance(value, (str, bytes, numbers.Number)):
        return [_check_one(value, '', value)] * aux
    if isinstance(value, (dict, set)):
        raise OptionError(f'prune_threshold: got {_describe(value)}; expected a number, '
                         'None, or a list of numbers.')
    if not isinstance(value, (list, tuple)):
        try:  # numpy arrays, torch tensors, ...
            value = list(value)
        except TypeError:
            raise OptionError(f'prune_threshold: got {_describe(value)}; expected a number, '
                             'None, or a list of numbers.') from None
    values = list(value)
    if len(values) == num_stages:
        values = values[:-1]  # the final stage's threshold has no effect
    if len(values) != aux:
        raise OptionError(
            f'prune_threshold: got {len(values)} values {list(value)!r} for a model with '
            f'{num_stages} stages; give one number for all auxiliary stages, or '
            f'{aux} values (one per auxiliary stage)'
            f', optionally plus a final ignored one ({num_stages} values).')
    return [_check_one(v, f'[{i}]', list(value)) for i, v in enumerate(values)]

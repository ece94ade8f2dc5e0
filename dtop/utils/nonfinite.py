"""Non-finite (NaN / Inf) weights: find them, describe them, refuse them."""
from typing import Any, Dict, List, Sequence, Tuple

from .errors import NonFiniteError


def non_finite_tensors(tensors: Dict[str, Any]) -> List[Tuple[str, int, int, int]]:
    """The floating-point tensors of ``tensors`` that hold NaN or Inf.

    Args:
        tensors (dict): name -> tensor (other values are skipped).

    Returns:
        list[tuple]: ``(name, number of NaN, number of Inf, numel)`` per bad tensor,
        in the dict's order.
    """
    import torch
    bad = []
    for name, value in tensors.items():
        if not torch.is_tensor(value) or not (value.is_floating_point() or
                                              value.is_complex()):
            continue
        if value.numel() and not bool(torch.isfinite(value).all()):
            nan = int(torch.isnan(value).sum())
            bad.append((name, nan, int((~torch.isfinite(value)).sum()) - nan,
                        value.numel()))
    return bad


def describe_non_finite(bad: Sequence[Tuple[str, int, int, int]], total: int,
                        limit: int = 3) -> str:
    """``'N of M tensors hold NaN or Inf (first: a (2 NaN of 4), ...)'``."""
    def one(b):
        kinds = ' and '.join(f'{n} {k}' for n, k in ((b[1], 'NaN'), (b[2], 'Inf')) if n)
        return f'{b[0]} ({kinds} of {b[3]})'
    shown = ', '.join(one(b) for b in bad[:limit])
    more = f', ... ({len(bad) - limit} more)' if len(bad) > limit else ''
    return f'{len(bad)} of {total} tensors hold NaN or Inf (first: {shown}{more})'


def check_finite_weights(checkpoint: dict, source: str) -> None:
    """Raise unless every weight of ``checkpoint`` (its ``state_dict``, or the dict
    itself) is finite.

    Raises:
        NonFiniteError: ``checkpoint FILE has non-finite weights: N of M tensors
            hold NaN or Inf (first: ...)`` and the fix.
    """
    sd = checkpoint.get('state_dict', checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(sd, dict):
        return
    bad = non_finite_tensors(sd)
    if bad:
        raise NonFiniteError(
            f'checkpoint {source} has non-finite weights: '
            f'{describe_non_finite(bad, len(sd))}. It comes from a training that '
            'diverged (NaN/Inf); use an earlier checkpoint of that run, or retrain with '
            'a lower learning rate.')

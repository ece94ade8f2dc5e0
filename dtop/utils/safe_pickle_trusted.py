"""The globals the restricted unpickler rebuilds (its allow-list), and the wrappers
that let them take plain data only.

PyTorch's own ``weights_only`` allow-list (tensors, storages, parameters, dtypes,
devices), ``OrderedDict``, ``set``, ``complex``, numpy arrays, dtypes and scalars;
the tensor / parameter / numpy rebuilders are wrapped so that a pickle cannot
attach hooks, subclasses or code (what they are given otherwise becomes an
:class:`~dtop.utils.safe_pickle_untrusted.UntrustedObject`).
"""
from collections import OrderedDict
from typing import Any, Dict

from .safe_pickle_untrusted import UntrustedObject, untrusted_globals

_EMPTY = OrderedDict


def _no_hooks(fn, hooks_at: int):
    """``fn`` with its ``backward_hooks`` argument replaced by an empty OrderedDict
    (a pickle cannot attach callables to a tensor)."""
    def rebuild(*args):
        args = list(args)
        if len(args) > hooks_at:
            args[hooks_at] = _EMPTY()
        return fn(*args)
    rebuild.__name__ = fn.__name__
    return rebuild


def _plain_state(state) -> bool:
    """True for attribute state made of plain data only (no placeholders, no dunders)."""
    if state is None:
        return True
    if isinstance(state, tuple):
        return all(_plain_state(s) for s in state)
    if isinstance(state, dict):
        return all(isinstance(k, str) and not k.startswith('__') for k in state) and \
            not untrusted_globals(list(state.values()))
    return False


def _torch_globals() -> Dict[str, Any]:
    import torch
    import torch._utils as tu
    from torch._weights_only_unpickler import _get_allowed_globals

    trusted = dict(_get_allowed_globals())
    trusted['torch._utils._rebuild_tensor_v2'] = _rebuild_tensor_v2
    trusted['torch._utils._rebuild_tensor_v3'] = _rebuild_tensor_v3
    trusted['torch._utils._rebuild_parameter'] = _no_hooks(tu._rebuild_parameter, 2)
    trusted['torch._utils._rebuild_parameter_with_state'] = _rebuild_parameter_with_state
    trusted['torch._tensor._rebuild_from_type_v2'] = _rebuild_from_type_v2
    trusted['torch._utils._rebuild_wrapper_subclass'] = _rebuild_wrapper_subclass
    trusted['torch.tensor._rebuild_from_type_v2'] = _rebuild_from_type_v2  # old path
    trusted['builtins.frozenset'] = frozenset
    trusted['builtins.slice'] = slice
    trusted['builtins.range'] = range
    trusted['__builtin__.set'] = set
    trusted['__builtin__.frozenset'] = frozenset
    trusted['__builtin__.complex'] = complex
    trusted['_codecs.encode'] = _codecs_encode
    assert torch  # imported for the allow-list
    return trusted


def _plain_metadata(metadata):
    """A tensor's ``metadata`` if it is a dict of bools / ints, else None."""
    if metadata is not None and not (isinstance(metadata, dict) and all(
            isinstance(v, (bool, int)) for v in metadata.values())):
        return None
    return metadata


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad,
                       backward_hooks=None, metadata=None):
    import torch._utils as tu
    return tu._rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad,
                                 _EMPTY(), _plain_metadata(metadata))


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad,
                       backward_hooks, dtype, metadata=None):
    import torch._utils as tu
    return tu._rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad,
                                 _EMPTY(), dtype, _plain_metadata(metadata))


def _rebuild_parameter_with_state(data, requires_grad, backward_hooks, state):
    import torch._utils as tu
    return tu._rebuild_parameter_with_state(data, requires_grad, _EMPTY(),
                                            state if _plain_state(state) else {})


def _rebuild_from_type_v2(func, new_type, args, state):
    import torch
    import torch._tensor as tt
    if new_type not in (torch.Tensor, torch.nn.Parameter) or \
            func not in _trusted_callables() or not _plain_state(state):
        return UntrustedObject('torch._tensor._rebuild_from_type_v2',
                               (func, new_type, args, state))
    return tt._rebuild_from_type_v2(func, new_type, args, state)


def _rebuild_wrapper_subclass(cls, *args):
    import torch
    import torch._utils as tu
    if cls is not torch.Tensor:
        return UntrustedObject('torch._utils._rebuild_wrapper_subclass', (cls,) + args)
    return tu._rebuild_wrapper_subclass(cls, *args)


def _codecs_encode(obj, encoding='utf-8', errors='strict'):
    """``_codecs.encode`` for what pickle protocol 2 uses it for (bytes as latin-1
    text); other codecs are not looked up."""
    import codecs
    if isinstance(obj, str) and str(encoding).lower().replace('_', '-') in (
            'latin1', 'latin-1', 'iso-8859-1', 'utf-8', 'utf8', 'ascii'):
        return codecs.encode(obj, encoding, errors)
    return UntrustedObject('_codecs.encode', (obj, encoding, errors))


def _numpy_globals() -> Dict[str, Any]:
    try:
        import numpy as np
    except ImportError:  # pragma: no cover
        return {}

    def reconstruct(subtype, shape, dtype):
        if subtype is not np.ndarray or not isinstance(dtype, (bytes, str)):
            return UntrustedObject('numpy._core.multiarray._reconstruct',
                                   (subtype, shape, dtype))
        return np.ndarray.__new__(np.ndarray, shape, dtype)

    def scalar(dtype, obj=None):
        if not isinstance(dtype, np.dtype) or dtype.hasobject or \
                not isinstance(obj, (bytes, type(None))):
            return UntrustedObject('numpy._core.multiarray.scalar', (dtype, obj))
        from numpy._core.multiarray import scalar as np_scalar
        return np_scalar(dtype, obj) if obj is not None else np_scalar(dtype)

    def dtype(spec, align=False, copy=False):
        if not isinstance(spec, str):
            return UntrustedObject('numpy.dtype', (spec, align, copy))
        return np.dtype(spec, align, copy)

    out = {}
    for mod in ('numpy.core.multiarray', 'numpy._core.multiarray'):
        out[f'{mod}._reconstruct'] = reconstruct
        out[f'{mod}.scalar'] = scalar
    out['numpy.ndarray'] = np.ndarray
    out['numpy.dtype'] = dtype
    # numpy >= 1.25 names dtype classes (numpy.dtypes.Float64DType) as arguments
    for name in dir(getattr(np, 'dtypes', None) or object()):
        cls = getattr(np.dtypes, name, None)
        if isinstance(cls, type) and issubclass(cls, np.dtype):
            out[f'numpy.dtypes.{name}'] = cls
    return out


_TRUSTED: Dict[str, Any] = {}
_TRUSTED_OBJECTS: set = set()


def trusted_globals() -> Dict[str, Any]:
    """``'module.name' -> object`` for every global the unpickler rebuilds."""
    if not _TRUSTED:
        table = _torch_globals()
        table.update(_numpy_globals())
        _TRUSTED_OBJECTS.update(v for v in table.values() if _hashable(v))
        _TRUSTED.update(table)
    return _TRUSTED


def _trusted_callables() -> set:
    """The trusted globals themselves (what ``REDUCE``/``NEWOBJ`` may call)."""
    trusted_globals()
    return _TRUSTED_OBJECTS


def _hashable(v) -> bool:
    try:
        hash(v)
    except TypeError:
        return False
    return True

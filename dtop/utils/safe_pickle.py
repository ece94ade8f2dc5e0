"""A restricted unpickler for checkpoints: rebuilds tensors and plain data, runs nothing.

``torch.load(f, pickle_module=dtop.utils.safe_pickle, weights_only=False)`` reads
any checkpoint (ours, mmseg's, the official DToP's, timm / mmpretrain weights)
without executing code carried by its pickle:

* a global that rebuilds data is used as is: tensors, storages, parameters,
  dtypes and devices (PyTorch's own ``weights_only`` allow-list), ``OrderedDict``,
  ``set``, ``complex``, numpy arrays, dtypes and scalars (through wrappers that
  accept plain data only);
* **every other global** (``os.system``, ``builtins.eval``, ``builtins.getattr``,
  ``mmengine...HistoryBuffer``, any class) becomes an :class:`UntrustedGlobal`: it
  is never imported and never called. "Calling" it or building an object of it
  yields an :class:`UntrustedObject` that only records what the pickle asked for
  (its arguments and state), so the rest of the file still loads;
* the opcodes that could reach an object's methods (``BUILD``, ``APPEND(S)``,
  ``SETITEM(S)``, ``ADDITEMS``, ``NEWOBJ``) act only on plain containers, tensors,
  numpy arrays and placeholders; anything else is ignored.

The module has the interface ``torch.load`` expects of ``pickle_module``
(``Unpickler``, ``load``, ``loads``; ``torch.load`` subclasses ``Unpickler`` to
read tensor storages). :func:`untrusted_globals` lists what a loaded object
holds placeholders for.
"""
import io
import pickle
from collections import Counter, OrderedDict
from typing import Any, Dict, List, Tuple

__all__ = ['Unpickler', 'load', 'loads', 'UntrustedGlobal', 'UntrustedObject',
           'untrusted_globals', 'UnpicklingError']

UnpicklingError = pickle.UnpicklingError
_EMPTY = OrderedDict


class UntrustedGlobal:
    """Stand-in for a global (function or class) that a pickle names and that is
    not trusted: never imported, never called.

    Calling it (what ``REDUCE`` / ``NEWOBJ`` would do) returns an
    :class:`UntrustedObject` recording the arguments.
    """
    __slots__ = ('name',)

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, *args, **kwargs) -> 'UntrustedObject':
        return UntrustedObject(self.name, args, kwargs)

    def __repr__(self) -> str:
        return f'<untrusted global {self.name} (not loaded)>'

    def __reduce__(self):
        raise TypeError(f'{self!r} cannot be pickled again')


class UntrustedObject:
    """Inert result of "calling" an :class:`UntrustedGlobal`.

    Attributes:
        name (str): the global the pickle named (``module.qualname``), or
            ``NAME()`` for the result of calling such an object again.
        args (tuple), kwargs (dict): what the pickle passed.
        state: what ``BUILD`` would have set (``None`` if nothing).
        items (list), dict_items (list): what ``APPEND(S)`` / ``SETITEM(S)`` added.
        source: the placeholder that was "called" to make this one, if any.
    """
    __slots__ = ('name', 'args', 'kwargs', 'state', 'items', 'dict_items', 'source')

    def __init__(self, name: str, args: tuple = (), kwargs: dict = None,
                 source=None) -> None:
        self.name = name
        self.source = source
        self.args = tuple(args)
        self.kwargs = dict(kwargs or {})
        self.state = None
        self.items: List[Any] = []
        self.dict_items: List[Tuple[Any, Any]] = []

    def __call__(self, *args, **kwargs) -> 'UntrustedObject':
        return UntrustedObject(f'{self.name}()', args, kwargs, source=self)

    def __repr__(self) -> str:
        return f'<untrusted {self.name} object from a checkpoint (not loaded)>'

    def __reduce__(self):
        raise TypeError(f'{self!r} cannot be pickled again')


_UNTRUSTED = (UntrustedGlobal, UntrustedObject)


# --------------------------------------------------------------- trusted globals
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


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad,
                       backward_hooks=None, metadata=None):
    import torch._utils as tu
    if metadata is not None and not (isinstance(metadata, dict) and all(
            isinstance(v, (bool, int)) for v in metadata.values())):
        metadata = None
    return tu._rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad,
                                 _EMPTY(), metadata)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad,
                       backward_hooks, dtype, metadata=None):
    import torch._utils as tu
    if metadata is not None and not (isinstance(metadata, dict) and all(
            isinstance(v, (bool, int)) for v in metadata.values())):
        metadata = None
    return tu._rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad,
                                 _EMPTY(), dtype, metadata)


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


# ------------------------------------------------------------------- unpickler
class Unpickler(pickle._Unpickler):
    """:class:`pickle.Unpickler` that rebuilds data and nothing else (module doc).

    The pure-Python unpickler, so that the opcodes that reach objects can be
    restricted; checkpoints keep their tensor data out of the pickle stream, so
    the speed is not an issue.
    """

    dispatch = dict(pickle._Unpickler.dispatch)

    def find_class(self, module: str, name: str):
        full = f'{module}.{name}'
        trusted = trusted_globals()
        if full in trusted:
            return trusted[full]
        mapped = f'{module.replace("__builtin__", "builtins")}.{name}'
        if mapped in trusted:
            return trusted[mapped]
        return UntrustedGlobal(mapped)

    # REDUCE: only trusted rebuilders and placeholders are called.
    def load_reduce(self):
        stack = self.stack
        args = stack.pop()
        func = stack[-1]
        if isinstance(func, _UNTRUSTED) or (_hashable(func) and func in _trusted_callables()):
            stack[-1] = func(*args)
        else:
            stack[-1] = UntrustedObject(f'<call of {type(func).__name__}>', args)
    dispatch[pickle.REDUCE[0]] = load_reduce

    def _new(self, cls, args, kwargs=None):
        import torch
        if isinstance(cls, _UNTRUSTED):
            return UntrustedObject(cls.name, args, kwargs)
        if cls is torch.nn.Parameter:
            return torch.nn.Parameter(*args)
        if isinstance(cls, type) and _hashable(cls) and cls in _trusted_callables():
            return cls.__new__(cls, *args, **(kwargs or {}))
        return UntrustedObject(f'<new {getattr(cls, "__name__", type(cls).__name__)}>',
                               args, kwargs)

    def load_newobj(self):
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._new(cls, args))
    dispatch[pickle.NEWOBJ[0]] = load_newobj

    def load_newobj_ex(self):
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._new(cls, args, kwargs))
    dispatch[pickle.NEWOBJ_EX[0]] = load_newobj_ex

    def _instantiate(self, klass, args):
        if isinstance(klass, _UNTRUSTED) or (_hashable(klass) and
                                             klass in _trusted_callables()):
            try:
                value = klass(*args)
            except TypeError as exc:
                raise UnpicklingError(f'in constructor for {klass}: {exc}') from exc
        else:
            value = UntrustedObject(f'<instance of {klass!r}>', args)
        self.append(value)

    def load_build(self):
        stack = self.stack
        state = stack.pop()
        inst = stack[-1]
        if isinstance(inst, UntrustedObject):
            inst.state = state
            return
        import torch
        if type(inst) is torch.Tensor:
            inst.set_(*state)  # legacy tensor format
            return
        if type(inst) is torch.nn.Parameter:
            inst.__setstate__(state)
            return
        if type(inst) in (OrderedDict, Counter):
            if isinstance(state, dict) and _plain_state(state):
                inst.__dict__.update(state)  # e.g. a state dict's ``_metadata``
            return
        import numpy as np
        if isinstance(inst, (np.ndarray, np.dtype)):
            inst.__setstate__(state)  # numpy's own: data, shape, dtype fields
            return
        # anything else: the state is dropped (no attribute of a live object is set)
    dispatch[pickle.BUILD[0]] = load_build

    def load_append(self):
        value = self.stack.pop()
        target = self.stack[-1]
        if isinstance(target, list):
            target.append(value)
        elif isinstance(target, UntrustedObject):
            target.items.append(value)
    dispatch[pickle.APPEND[0]] = load_append

    def load_appends(self):
        items = self.pop_mark()
        target = self.stack[-1]
        if isinstance(target, list):
            target.extend(items)
        elif isinstance(target, UntrustedObject):
            target.items.extend(items)
    dispatch[pickle.APPENDS[0]] = load_appends

    def _setitem(self, target, key, value):
        if type(target) in (dict, OrderedDict, Counter):
            target[key] = value
        elif isinstance(target, UntrustedObject):
            target.dict_items.append((key, value))

    def load_setitem(self):
        stack = self.stack
        value = stack.pop()
        key = stack.pop()
        self._setitem(stack[-1], key, value)
    dispatch[pickle.SETITEM[0]] = load_setitem

    def load_setitems(self):
        items = self.pop_mark()
        target = self.stack[-1]
        for i in range(0, len(items), 2):
            self._setitem(target, items[i], items[i + 1])
    dispatch[pickle.SETITEMS[0]] = load_setitems

    def load_additems(self):
        items = self.pop_mark()
        target = self.stack[-1]
        if isinstance(target, set):
            target.update(items)
        elif isinstance(target, UntrustedObject):
            target.items.extend(items)
    dispatch[pickle.ADDITEMS[0]] = load_additems


def load(file, **kwargs):
    """``pickle.load`` with :class:`Unpickler`."""
    return Unpickler(file, **kwargs).load()


def loads(data: bytes, **kwargs):
    """``pickle.loads`` with :class:`Unpickler`."""
    return Unpickler(io.BytesIO(data), **kwargs).load()


def untrusted_globals(obj, limit: int = 100000) -> List[str]:
    """Names of the untrusted globals ``obj`` holds placeholders for (sorted,
    unique), looking through dicts, lists, tuples, sets and placeholders.

    Args:
        obj: a loaded object.
        limit (int): containers visited at most (a guard against huge nests).
    """
    found = set()
    todo = [obj]
    seen = set()
    visited = 0
    while todo and visited < limit:
        x = todo.pop()
        if id(x) in seen:
            continue
        seen.add(id(x))
        visited += 1
        if isinstance(x, _UNTRUSTED):
            found.add(x.name)
            if isinstance(x, UntrustedObject):
                todo.extend(x.args)
                todo.extend(x.kwargs.values())
                todo.append(x.state)
                todo.extend(x.items)
                todo.extend(v for kv in x.dict_items for v in kv)
                todo.append(x.source)
        elif isinstance(x, dict):
            todo.extend(x.keys())
            todo.extend(x.values())
        elif isinstance(x, (list, tuple, set, frozenset)):
            todo.extend(x)
    return sorted(found)


def strip_untrusted(obj):
    """``obj`` without its placeholders (dropped from dicts, lists, tuples and sets),
    e.g. before saving a loaded checkpoint again.

    Returns:
        tuple: ``(clean object, sorted names of the dropped globals)``.
    """
    dropped = set()

    def clean(x):
        if isinstance(x, _UNTRUSTED):
            dropped.add(x.name)
            return _DROP
        if type(x) in (dict, OrderedDict):
            items = ((k, clean(v)) for k, v in x.items() if not isinstance(k, _UNTRUSTED))
            return type(x)((k, v) for k, v in items if v is not _DROP)
        if type(x) in (list, tuple, set):
            return type(x)(v for v in map(clean, x) if v is not _DROP)
        return x

    out = clean(obj)
    return (None if out is _DROP else out), sorted(dropped)


_DROP = object()

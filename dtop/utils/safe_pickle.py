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

The allow-list and its wrappers live in :mod:`dtop.utils.safe_pickle_trusted`,
the placeholders in :mod:`dtop.utils.safe_pickle_untrusted`; their public names
are importable from here.
"""
import io
import pickle
from collections import Counter, OrderedDict

from .safe_pickle_trusted import _hashable, _plain_state, _trusted_callables, trusted_globals
from .safe_pickle_untrusted import (_UNTRUSTED, UntrustedGlobal, UntrustedObject,
                                    strip_untrusted, untrusted_globals)

__all__ = ['Unpickler', 'load', 'loads', 'UntrustedGlobal', 'UntrustedObject',
           'untrusted_globals', 'strip_untrusted', 'trusted_globals', 'UnpicklingError']

UnpicklingError = pickle.UnpicklingError


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

    def _add_items(self, items, container=list, add='extend'):
        """``items`` into the object on top of the stack: a ``container`` (its
        method ``add``) or a placeholder (its ``items``); anything else keeps
        nothing."""
        target = self.stack[-1]
        if isinstance(target, container):
            getattr(target, add)(items)
        elif isinstance(target, UntrustedObject):
            target.items.extend(items)

    def load_append(self):
        self._add_items([self.stack.pop()])
    dispatch[pickle.APPEND[0]] = load_append

    def load_appends(self):
        self._add_items(self.pop_mark())
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
        self._add_items(self.pop_mark(), set, 'update')
    dispatch[pickle.ADDITEMS[0]] = load_additems


def load(file, **kwargs):
    """``pickle.load`` with :class:`Unpickler`."""
    return Unpickler(file, **kwargs).load()


def loads(data: bytes, **kwargs):
    """``pickle.loads`` with :class:`Unpickler`."""
    return Unpickler(io.BytesIO(data), **kwargs).load()

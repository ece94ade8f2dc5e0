"""Inert placeholders for what a checkpoint's pickle names but is not trusted.

The restricted unpickler (:mod:`dtop.utils.safe_pickle`) never imports nor calls
a global it does not trust: it stands in an :class:`UntrustedGlobal`, and
"calling" that yields an :class:`UntrustedObject` recording what the pickle asked
for. :func:`untrusted_globals` lists the placeholders a loaded object holds;
:func:`strip_untrusted` drops them.
"""
from collections import OrderedDict
from typing import Any, List, Tuple


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

"""Our checkpoints hold plain data: ``HistoryBuffer`` / numpy as tensors, lists, floats.

:func:`to_plain_checkpoint` encodes the message hub's ``HistoryBuffer`` and numpy
values as tensors / lists / floats, so ``--resume`` restores everything
(:func:`from_plain_checkpoint`) without full unpickling; such checkpoints even
load with ``torch.load(weights_only=True)``.
"""
from collections import OrderedDict
from typing import Any

_PLAIN_TAG = '__dtop_plain__'


def _array_to_plain(arr) -> Any:
    import torch
    if arr.dtype.hasobject or arr.dtype.kind not in 'biufc':
        return arr.tolist()
    try:
        return torch.from_numpy(arr.copy())
    except TypeError:  # a dtype torch lacks (e.g. uint32 on old torch)
        return arr.tolist()


def _map_containers(obj, fn):
    """``fn`` applied to the values of a dict / OrderedDict / list / tuple / set;
    ``obj`` itself when nothing changed (a state dict keeps its ``_metadata``)."""
    if type(obj) in (dict, OrderedDict):
        new = [(k, fn(v)) for k, v in obj.items()]
        if all(v is obj[k] for k, v in new):
            return obj
        out = type(obj)(new)
        if hasattr(obj, '_metadata'):
            out._metadata = obj._metadata
        return out
    if type(obj) in (list, tuple, set):
        new = [fn(v) for v in obj]
        if all(a is b for a, b in zip(new, obj)):
            return obj
        return type(obj)(new)
    return obj


def to_plain_checkpoint(obj):
    """``obj`` with every ``HistoryBuffer`` and numpy value replaced by plain data.

    ``HistoryBuffer`` -> ``{'__dtop_plain__': 'HistoryBuffer', 'log_history': tensor,
    'count_history': tensor, 'max_length': int}``; numpy array ->
    ``{'__dtop_plain__': 'ndarray', 'data': tensor or list, 'dtype': str}``; numpy
    scalar -> ``{'__dtop_plain__': 'numpy_scalar', 'value': float/int/bool, 'dtype':
    str}``. Dicts (and OrderedDicts), lists, tuples and sets are rebuilt, everything
    else is kept. :func:`from_plain_checkpoint` reverses it. ``obj`` is not changed.
    """
    import numpy as np
    from mmengine.logging import HistoryBuffer
    if isinstance(obj, HistoryBuffer):
        return {_PLAIN_TAG: 'HistoryBuffer',
                'log_history': _array_to_plain(np.asarray(obj._log_history)),
                'count_history': _array_to_plain(np.asarray(obj._count_history)),
                'max_length': int(obj.max_length)}
    if isinstance(obj, np.ndarray):
        return {_PLAIN_TAG: 'ndarray', 'data': _array_to_plain(obj), 'dtype': obj.dtype.str,
                'shape': list(obj.shape)}
    if isinstance(obj, np.generic):
        return {_PLAIN_TAG: 'numpy_scalar', 'value': obj.item(), 'dtype': obj.dtype.str}
    return _map_containers(obj, to_plain_checkpoint)


def _plain_to_array(data, dtype: str, shape=None):
    import numpy as np
    import torch
    arr = data.numpy() if torch.is_tensor(data) else np.array(data, dtype=np.dtype(dtype))
    arr = arr.astype(np.dtype(dtype), copy=False)
    return arr.reshape(shape) if shape is not None else arr


def _history_buffer_from(state: dict):
    """A ``HistoryBuffer`` from plain data (ours) or a placeholder's state (mmengine's
    own pickle), built by us: nothing of the file is called."""
    import numpy as np
    import torch
    from mmengine.logging import HistoryBuffer

    def array(x):
        if torch.is_tensor(x):
            return x.numpy()
        if isinstance(x, (np.ndarray, list, tuple)):
            return np.asarray(x)
        return None
    logs, counts = array(state.get('log_history', state.get('_log_history'))), \
        array(state.get('count_history', state.get('_count_history')))
    if logs is None or counts is None or len(logs) != len(counts) or \
            logs.dtype.hasobject or counts.dtype.hasobject:
        return None
    buf = HistoryBuffer(max_length=int(state.get('max_length', 1000000)))
    buf._log_history, buf._count_history = logs.copy(), counts.copy()
    return buf


def from_plain_checkpoint(obj):
    """Undo :func:`to_plain_checkpoint`; also rebuilds the ``HistoryBuffer`` objects
    of mmengine's own checkpoints from their (inert) placeholders' data."""
    import numpy as np

    from .safe_pickle import UntrustedObject
    if type(obj) in (dict, OrderedDict):
        tag = obj.get(_PLAIN_TAG)
        if tag == 'HistoryBuffer':
            buf = _history_buffer_from(obj)
            if buf is not None:
                return buf
        elif tag == 'ndarray':
            return _plain_to_array(obj['data'], obj['dtype'], obj.get('shape'))
        elif tag == 'numpy_scalar':
            return np.dtype(obj['dtype']).type(obj['value'])
        return _map_containers(obj, from_plain_checkpoint)
    if type(obj) in (list, tuple, set):
        return _map_containers(obj, from_plain_checkpoint)
    if isinstance(obj, UntrustedObject) and \
            obj.name == 'mmengine.logging.history_buffer.HistoryBuffer' and \
            isinstance(obj.state, dict):
        return _history_buffer_from(obj.state) or obj
    return obj

"""Checkpoint loading that never runs a checkpoint's code, and checks what it loads.

**Safe unpickling.** mmengine checkpoints pickle ``HistoryBuffer`` objects, numpy
values and ``builtins.getattr``; ``torch.load(weights_only=True)`` (the default
since torch 2.6) refuses them and full unpickling would run any code a file
carries. Every checkpoint the DToP tools load goes through
:func:`torch_load_checkpoint`: ``torch.load`` with the restricted unpickler of
:mod:`dtop.utils.safe_pickle`, which rebuilds tensors and plain data and turns
every other global into an inert placeholder (never imported, never called).
Weights load from any checkpoint (ours, mmseg's, the official DToP's,
timm/mmpretrain); mmengine's ``CheckpointLoader`` uses it too for local files and
http(s) URLs (registered when this module is imported, i.e. by ``import dtop``);
its other schemes keep PyTorch's ``weights_only=True`` default.

Full unpickling happens only when asked for: ``--trust-checkpoint`` in the tools,
``trust_checkpoint = True`` in a config (DToPRunner), ``trust=True`` here; it is
announced in one line per file (:func:`set_trust_checkpoint`).

Our own checkpoints hold plain data only (:func:`to_plain_checkpoint`: the
message hub's ``HistoryBuffer`` and numpy values as tensors / lists / floats), so
``--resume`` restores everything (:func:`from_plain_checkpoint`) without full
unpickling; they even load with ``torch.load(weights_only=True)``.

Reading and loading (nothing lost, nothing silently wrong; docs/robustness.md):

* :func:`read_checkpoint`: one-line :class:`CheckpointError` naming the file and
  what is wrong (missing, empty, truncated, garbage, not a dict);
  :class:`NonFiniteError` naming the first NaN/Inf weights.
* :func:`check_checkpoint_fits` / :func:`load_checkpoint_strict`: a key or shape
  mismatch stops with the first mismatches and the fix
  (:class:`CheckpointMismatchError`), unless a partial load is asked for.
* :func:`summarize_partial_load`: a short report for *expected* partial loads
  (ImageNet ``init_cfg=Pretrained``).
* :func:`find_resumable_checkpoint`: the newest complete checkpoint of the work
  directory for ``--resume``.
"""
import os
import os.path as osp
import re
import zipfile
from collections import OrderedDict
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

from .errors import CheckpointError, CheckpointMismatchError, NonFiniteError

# --------------------------------------------------------------------------------------
# Trust, and torch.load through the restricted unpickler.
# --------------------------------------------------------------------------------------

_TRUST = dict(enabled=False, source='')
_ANNOUNCED = set()
#: placeholders that are expected in mmengine checkpoints (the message hub's
#: HistoryBuffer, rebuilt from its data by :func:`from_plain_checkpoint`).
_EXPECTED_UNTRUSTED = {'builtins.getattr', 'mmengine.logging.history_buffer.HistoryBuffer'}


def set_trust_checkpoint(trust: bool, source: str = '--trust-checkpoint') -> None:
    """Let (``True``) or stop (``False``) checkpoints being unpickled fully.

    Full unpickling can run code a checkpoint carries; each file loaded that way
    is announced in one line.

    Args:
        trust (bool): the setting, for every later load in this process that does
            not pass ``trust`` itself.
        source (str): what asked for it, for the announcement
            (``'--trust-checkpoint'``, ``'trust_checkpoint = True (config)'``).
    """
    _TRUST['enabled'] = bool(trust)
    _TRUST['source'] = source if trust else ''


def trust_checkpoint_enabled() -> bool:
    """Whether checkpoints are unpickled fully (:func:`set_trust_checkpoint`)."""
    return _TRUST['enabled']


def _announce_trust(filename: str, source: str) -> None:
    if filename in _ANNOUNCED:
        return
    _ANNOUNCED.add(filename)
    from mmengine.logging import print_log
    print_log(f'{source}: unpickling {filename} fully; it can run code it carries '
              '(only for files you trust).', logger='current', level=30)


def _is_torchscript_archive(path: str) -> bool:
    try:
        with zipfile.ZipFile(path) as zf:
            return any(n.endswith('/constants.pkl') or n == 'constants.pkl'
                       for n in zf.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def torch_load_checkpoint(f, map_location='cpu', trust=None):
    """``torch.load`` that runs nothing a checkpoint carries (unless trusted).

    Args:
        f (str | file): a local file (or an open binary file).
        map_location: as :func:`torch.load`.
        trust (bool | str, optional): unpickle fully (announced in one line; a
            string names who asked, for that line); default:
            :func:`trust_checkpoint_enabled`.

    Returns:
        The loaded object: tensors and plain containers; every global the
        restricted unpickler does not trust is an inert
        :class:`~dtop.utils.safe_pickle.UntrustedObject` placeholder.

    Raises:
        CheckpointError: a TorchScript archive (``torch.jit.load`` would run its
            code), unless trusted.
    """
    import torch

    from . import safe_pickle
    name = f if isinstance(f, (str, os.PathLike)) else getattr(f, 'name', '<file object>')
    trust = trust_checkpoint_enabled() if trust is None else trust
    if trust:
        _announce_trust(str(name), trust if isinstance(trust, str) else
                        (_TRUST['source'] or 'trust=True'))
        return torch.load(f, map_location=map_location, weights_only=False)
    if isinstance(f, (str, os.PathLike)) and _is_torchscript_archive(str(f)):
        raise CheckpointError(
            f'cannot read checkpoint {name}: it is a TorchScript archive '
            '(torch.jit.save), whose loading runs the code it carries. Export a '
            'state dict instead, or pass --trust-checkpoint if you trust the file.')
    if os.getenv('TORCH_FORCE_WEIGHTS_ONLY_LOAD', '0').lower() in ('1', 'y', 'yes', 'true'):
        return torch.load(f, map_location=map_location, weights_only=True)
    obj = torch.load(f, map_location=map_location, pickle_module=safe_pickle,
                     weights_only=False)
    unexpected = [g for g in safe_pickle.untrusted_globals(obj)
                  if g not in _EXPECTED_UNTRUSTED]
    if unexpected:
        from mmengine.logging import print_log
        shown = ', '.join(unexpected[:5]) + (f', ... ({len(unexpected) - 5} more)'
                                             if len(unexpected) > 5 else '')
        print_log(f'checkpoint {name} names {len(unexpected)} global(s) that the safe '
                  f'loader does not rebuild ({shown}); they were neither imported nor '
                  'run and are left as inert placeholders (--trust-checkpoint unpickles '
                  'a file you trust fully).', logger='current', level=30)
    return obj


def load_from_local_safe(filename: str, map_location=None):
    """mmengine ``CheckpointLoader`` scheme for local paths (registered for ``''``):
    :func:`torch_load_checkpoint`."""
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'{filename} can not be found.')
    return torch_load_checkpoint(filename, map_location)


def load_from_http_safe(filename: str, map_location=None, model_dir: Optional[str] = None):
    """mmengine ``CheckpointLoader`` scheme for ``http://`` / ``https://``: download
    once into torch hub's cache (rank 0 first), then :func:`torch_load_checkpoint`."""
    from urllib.parse import urlparse

    import torch
    from mmengine.dist import get_dist_info

    rank, world_size = get_dist_info()
    folder = model_dir or osp.join(torch.hub.get_dir(), 'checkpoints')
    path = osp.join(folder, osp.basename(urlparse(filename).path) or 'checkpoint.pth')

    def fetch():
        if not osp.isfile(path):
            os.makedirs(folder, exist_ok=True)
            torch.hub.download_url_to_file(filename, path, progress=False)

    if rank == 0:
        fetch()
    if world_size > 1:
        torch.distributed.barrier()
        if rank > 0:
            fetch()
    return torch_load_checkpoint(path, map_location)


def register_safe_checkpoint_loaders() -> None:
    """Route mmengine's ``CheckpointLoader`` (``load_checkpoint``, ``load_from``,
    ``init_cfg=Pretrained``) through :func:`torch_load_checkpoint` for local files
    and http(s) URLs. Done when this module is imported."""
    from mmengine.runner.checkpoint import CheckpointLoader
    CheckpointLoader.register_scheme(prefixes='', loader=load_from_local_safe, force=True)
    CheckpointLoader.register_scheme(prefixes=('http://', 'https://'),
                                     loader=load_from_http_safe, force=True)


register_safe_checkpoint_loaders()


# --------------------------------------------------------------------------------------
# Non-finite weights.
# --------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------
# Our checkpoints hold plain data: HistoryBuffer / numpy as tensors, lists, floats.
# --------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------
# Reading checkpoints with one-line errors, and loading them strictly.
# --------------------------------------------------------------------------------------

DEFAULT_REVISE_KEYS = ((r'^module\.', ''),)
_PARTIAL_FIX = ('--allow-partial-load (or `load_strict = False` in the config) if a '
                'partial load is what you want')


def diagnose_checkpoint_file(path: str) -> Optional[str]:
    """Say what is wrong with a local checkpoint file, without unpickling it.

    Args:
        path (str): local file path.

    Returns:
        str or None: a short reason (``'does not exist'``, ``'is empty (0 bytes)'``,
        ``'is truncated ...'``, ``'is a directory'``), or None when the file looks
        complete (a full zip archive, or a legacy pickle).
    """
    if osp.isdir(path):
        return 'is a directory, not a checkpoint file'
    if not osp.exists(path):
        return 'does not exist'
    size = osp.getsize(path)
    if size == 0:
        return 'is empty (0 bytes)'
    with open(path, 'rb') as f:
        head = f.read(4)
    if head.startswith(b'PK'):
        if not zipfile.is_zipfile(path):
            return (f'is truncated or corrupt ({size} bytes; the end of its zip archive '
                    'is missing, as when a save was interrupted)')
        try:
            with zipfile.ZipFile(path) as zf:
                bad = zf.testzip() if size < (64 << 20) else None
        except (zipfile.BadZipFile, OSError) as exc:
            return f'is a corrupt zip archive ({exc})'
        if bad is not None:
            return f'is corrupt (member {bad} fails its CRC check)'
        return None
    if head[:1] != b'\x80':  # neither torch's zip format nor a pickle
        return f'is not a PyTorch checkpoint (starts with {head!r}, {size} bytes)'
    return None


def read_checkpoint(filename: str, map_location='cpu', *, trust=None,
                    check_finite: bool = True) -> dict:
    """Load a checkpoint (local path or URL) safely, with a one-line error if it is
    unreadable or its weights are not finite.

    Nothing the file's pickle carries is run (:func:`torch_load_checkpoint`) unless
    ``trust`` (or :func:`set_trust_checkpoint`) says so. mmengine's plain-data
    encoding of our own checkpoints is undone (:func:`from_plain_checkpoint`).

    Args:
        filename (str): local path, URL or any scheme mmengine's
            ``CheckpointLoader`` knows.
        map_location: as :func:`torch.load`.
        trust (bool | str, optional): unpickle fully (see
            :func:`torch_load_checkpoint`); default :func:`trust_checkpoint_enabled`.
        check_finite (bool): refuse NaN/Inf weights. Default True.

    Returns:
        dict: the checkpoint (a dict with ``state_dict``, or a bare state dict).

    Raises:
        CheckpointError: ``cannot read checkpoint FILE: REASON. FIX`` for missing,
            empty, truncated, garbage or non-dict files.
        NonFiniteError: naming the first tensors that hold NaN or Inf.
    """
    from mmengine.runner.checkpoint import _load_checkpoint

    from .safe_pickle import UntrustedObject
    local = '://' not in str(filename)
    if local:
        reason = diagnose_checkpoint_file(filename)
        if reason is not None:
            raise CheckpointError(
                f'cannot read checkpoint {filename}: it {reason}. '
                + ('Check the path.' if reason == 'does not exist' else
                   'Use another checkpoint (e.g. an earlier iter_*.pth of the same run).'))
    try:
        if local:
            ckpt = torch_load_checkpoint(filename, map_location, trust=trust)
        else:
            ckpt = _load_checkpoint(filename, map_location=map_location)
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001  (turned into one readable line)
        text = f'{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ""}'
        if 'Weights only load failed' in str(exc):
            raise CheckpointError(
                f'cannot read checkpoint {filename}: PyTorch refused to unpickle it '
                '(weights_only=True, as TORCH_FORCE_WEIGHTS_ONLY_LOAD asks). Unset that '
                'variable to use the safe loader, or pass --trust-checkpoint if you trust '
                'the file.') from exc
        raise CheckpointError(
            f'cannot read checkpoint {filename}: it is not a readable PyTorch checkpoint '
            f'({text}). Use another checkpoint (e.g. an earlier iter_*.pth of the same '
            'run).') from exc
    if isinstance(ckpt, UntrustedObject):
        raise CheckpointError(
            f'cannot read checkpoint {filename}: it holds a pickled {ckpt.name} object, '
            'not a state dict; the safe loader does not rebuild (or run) it. Save '
            'model.state_dict() instead, or pass --trust-checkpoint if you trust the '
            'file.')
    if not isinstance(ckpt, dict):
        raise CheckpointError(
            f'cannot read checkpoint {filename}: it holds a {type(ckpt).__name__}, not a '
            'state dict or a dict with "state_dict".')
    ckpt = from_plain_checkpoint(ckpt)
    if check_finite:
        check_finite_weights(ckpt, filename)
    return ckpt


class StateDictDiff(NamedTuple):
    """How a checkpoint's state dict differs from a model's.

    Attributes:
        missing (list[str]): model keys the checkpoint lacks.
        unexpected (list[str]): checkpoint keys the model lacks.
        shape_mismatch (list[tuple]): ``(key, checkpoint shape, model shape)``.
        num_model_keys (int): keys of the model's state dict.
        num_loaded (int): keys that would load (same name and shape).
    """
    missing: List[str]
    unexpected: List[str]
    shape_mismatch: List[Tuple[str, tuple, tuple]]
    num_model_keys: int
    num_loaded: int

    @property
    def ok(self) -> bool:
        """True when every key matches in name and shape."""
        return not (self.missing or self.unexpected or self.shape_mismatch)


def _unwrap(model):
    while hasattr(model, 'module') and hasattr(model, 'forward') and \
            type(model).__name__ in ('MMDistributedDataParallel', 'DistributedDataParallel',
                                     'MMFullyShardedDataParallel', 'DataParallel',
                                     'SegTTAModel', 'DToPTTAModel'):
        model = model.module
    return model


def state_dict_of(checkpoint: dict,
                  revise_keys: Sequence[Tuple[str, str]] = DEFAULT_REVISE_KEYS) -> Dict:
    """The (key-revised) state dict of a checkpoint, as mmengine loads it."""
    sd = checkpoint.get('state_dict', checkpoint)
    if not isinstance(sd, dict):
        raise CheckpointError(f'the checkpoint\'s "state_dict" is a {type(sd).__name__}, '
                              'not a dict.')
    for pattern, repl in revise_keys:
        sd = OrderedDict((re.sub(pattern, repl, k), v) for k, v in sd.items())
    return sd


def compare_state_dict(model, state_dict: Dict) -> StateDictDiff:
    """Compare ``state_dict`` with ``model.state_dict()`` by key and shape.

    BatchNorm's ``num_batches_tracked`` is ignored when missing (as mmengine does).

    Args:
        model (nn.Module): the model (wrappers such as DDP/TTA are unwrapped).
        state_dict (dict): key -> tensor.

    Returns:
        StateDictDiff: the differences.
    """
    own = _unwrap(model).state_dict()
    missing = [k for k in own if k not in state_dict and not k.endswith('num_batches_tracked')]
    unexpected = [k for k in state_dict if k not in own]
    shapes = []
    for k, v in state_dict.items():
        if k in own and hasattr(v, 'shape') and tuple(v.shape) != tuple(own[k].shape):
            shapes.append((k, tuple(v.shape), tuple(own[k].shape)))
    loaded = sum(1 for k in own if k in state_dict) - len(shapes)
    return StateDictDiff(missing, unexpected, shapes, len(own), loaded)


def format_state_dict_diff(diff: StateDictDiff, source: str, limit: int = 5) -> str:
    """A readable summary: counts and the first ``limit`` mismatches of each kind."""
    def first(items, fmt):
        shown = [fmt(x) for x in items[:limit]]
        more = f', ... ({len(items) - limit} more)' if len(items) > limit else ''
        return ', '.join(shown) + more

    lines = [f'checkpoint {source} does not fit the model: {diff.num_loaded} of '
             f'{diff.num_model_keys} model tensors would load.']
    if diff.shape_mismatch:
        lines.append(f'  {len(diff.shape_mismatch)} shape mismatches (checkpoint vs model): '
                     + first(diff.shape_mismatch,
                             lambda x: f'{x[0]} {list(x[1])} vs {list(x[2])}'))
    if diff.missing:
        lines.append(f'  {len(diff.missing)} model keys missing from the checkpoint: '
                     + first(diff.missing, str))
    if diff.unexpected:
        lines.append(f'  {len(diff.unexpected)} checkpoint keys the model does not have: '
                     + first(diff.unexpected, str))
    return '\n'.join(lines)


def check_checkpoint_fits(model, checkpoint: dict, source: str, strict: bool = True,
                          revise_keys: Sequence[Tuple[str, str]] = DEFAULT_REVISE_KEYS,
                          logger='current') -> StateDictDiff:
    """Stop (strict) or warn (not strict) when a checkpoint does not fit ``model``.

    Args:
        model (nn.Module): the model about to receive the weights.
        checkpoint (dict): as returned by :func:`read_checkpoint`.
        source (str): the file name, for the message.
        strict (bool): raise on any key or shape mismatch. Default True.
        revise_keys: key rewrites applied before comparing (mmengine's default
            strips ``module.``).
        logger: mmengine logger (name) for the warning when not strict.

    Returns:
        StateDictDiff: the comparison.

    Raises:
        CheckpointMismatchError: strict and any mismatch; the message lists the
            first mismatches of each kind and the fix.
    """
    from mmengine.logging import print_log
    diff = compare_state_dict(model, state_dict_of(checkpoint, revise_keys))
    if diff.ok:
        return diff
    text = format_state_dict_diff(diff, source)
    if strict:
        raise CheckpointMismatchError(
            f'{text}\nFix: use the config this checkpoint was trained with (its '
            f'architecture: embed dims, layers, heads, classes), or pass {_PARTIAL_FIX}.')
    print_log(f'{text}\nPartial load allowed (load_strict=False): the tensors listed '
              'keep their initial values.', logger=logger, level=30)
    return diff


def load_checkpoint_strict(model, filename: str, strict: bool = True,
                           map_location='cpu',
                           revise_keys: Sequence[Tuple[str, str]] = DEFAULT_REVISE_KEYS,
                           logger='current', trust=None) -> dict:
    """Read ``filename`` (safely, weights checked finite), check it fits ``model``,
    then load it.

    The replacement for ``mmengine.runner.load_checkpoint(model, f, strict=False)``
    in the tools: an unreadable file or a mismatch stops with one clear message
    before any work. Also sets ``model.dataset_meta`` from the checkpoint's meta
    (as ``mmseg.apis.init_model``).

    Args:
        model (nn.Module): the model.
        filename (str): checkpoint path or URL.
        strict (bool): see :func:`check_checkpoint_fits`.
        map_location: as :func:`torch.load`.
        revise_keys: key rewrites (default strips ``module.``).
        logger: logger for warnings.
        trust (bool, optional): see :func:`read_checkpoint`.

    Returns:
        dict: the checkpoint.
    """
    from mmengine.runner.checkpoint import _load_checkpoint_to_model
    ckpt = read_checkpoint(filename, map_location, trust=trust)
    check_checkpoint_fits(model, ckpt, filename, strict, revise_keys, logger)
    _load_checkpoint_to_model(_unwrap(model), ckpt, strict=False,
                              revise_keys=list(revise_keys))
    meta = ckpt.get('meta', {}) if isinstance(ckpt.get('meta', {}), dict) else {}
    if 'dataset_meta' in meta:
        _unwrap(model).dataset_meta = meta['dataset_meta']
    return ckpt


def summarize_partial_load(module, state_dict: Dict, source: str, logger='current',
                           limit: int = 5) -> StateDictDiff:
    """Log what an *expected* partial load (ImageNet ``init_cfg=Pretrained``) left out.

    Meant for backbone ``init_weights``: call it with the state dict about to be
    loaded with ``strict=False``; it logs one INFO summary (counts and the first
    keys) instead of mmengine's unbounded list.

    Args:
        module (nn.Module): the module receiving the weights.
        state_dict (dict): the (already revised) weights.
        source (str): where they come from, for the message.
        logger: mmengine logger.
        limit (int): keys shown per kind.

    Returns:
        StateDictDiff: the comparison.
    """
    from mmengine.logging import print_log
    diff = compare_state_dict(module, state_dict)
    if diff.ok:
        print_log(f'{source}: all {diff.num_model_keys} tensors loaded.', logger=logger)
    else:
        text = format_state_dict_diff(diff, source, limit).replace(
            'does not fit the model', 'partially loaded (expected for ImageNet weights)')
        print_log(f'{text}\nThe tensors listed keep their random initialisation.',
                  logger=logger)
    return diff


_CKPT_NAME = re.compile(r'^(?:iter|epoch)_(\d+)\.pth$')


def _iteration_of(path: str) -> Optional[int]:
    m = _CKPT_NAME.match(osp.basename(path))
    return int(m.group(1)) if m else None


def _inside(path: str, folder: str) -> bool:
    """Whether ``path`` is ``folder`` or below it (symbolic links resolved)."""
    p, f = osp.realpath(path), osp.realpath(folder)
    return p == f or p.startswith(f.rstrip(os.sep) + os.sep)


def _read_pointer(pointer: str) -> Tuple[Optional[str], Optional[str]]:
    """``(named path, None)`` from a ``last_checkpoint`` file, or ``(None, what is
    wrong with it)`` when it is not one line of text."""
    with open(pointer, 'rb') as f:
        data = f.read(8193)
    size = osp.getsize(pointer)
    try:
        text = data.decode('utf-8')
    except UnicodeDecodeError:
        return None, f'is not a text file naming a checkpoint ({size} bytes of binary data)'
    text = text.strip()
    if len(data) > 8192 or '\x00' in text or '\n' in text:
        return None, f'is not one line naming a checkpoint ({size} bytes)'
    return text or None, None


def find_resumable_checkpoint(work_dir: str, logger='current',
                              checkpoint_dirs: Sequence[str] = ()) -> Optional[str]:
    """The latest *complete* checkpoint of ``work_dir``, for ``--resume``.

    Reads ``work_dir/last_checkpoint`` (mmengine's pointer). The newest complete
    ``iter_*.pth`` / ``epoch_*.pth`` of the work directory wins when the pointer
    names a missing or incomplete file (a run killed while saving with mmengine's
    non-atomic hook), an older one (a run killed between the rename and the
    pointer update) or is not text; the log says so.

    Only checkpoints inside the work directory (or ``checkpoint_dirs``) are
    followed: a pointer naming a file elsewhere (a work dir copied with ``cp -a``
    keeps the source's absolute path) is resolved by its base name inside the
    work directory, else refused.

    Args:
        work_dir (str): the run's work directory.
        logger: mmengine logger.
        checkpoint_dirs (sequence of str): other folders of this run's checkpoints
            (a checkpoint hook's ``out_dir``).

    Returns:
        str or None: a checkpoint path, or None when there is nothing to resume.

    Raises:
        CheckpointError: ``last_checkpoint`` names an unusable file (or a file
            outside the work dir without a copy inside it), or is garbage, and no
            other complete checkpoint exists.
    """
    from mmengine.logging import print_log
    folders = [work_dir] + [d for d in checkpoint_dirs if d and d != work_dir]
    pointer = osp.join(work_dir, 'last_checkpoint')
    named, garbage = None, None
    if osp.isfile(pointer):
        named, garbage = _read_pointer(pointer)
    if named and not any(_inside(named, folder) for folder in folders):
        local = osp.join(work_dir, osp.basename(named))
        if not osp.isfile(local):
            raise CheckpointError(
                f'--resume: {pointer} names {named}, which is not inside the work dir '
                f'{work_dir}, and {work_dir} has no {osp.basename(named)}. --resume only '
                'follows checkpoints of its own work dir (a copy made with cp -a keeps '
                'the source\'s absolute path). Copy the checkpoint into the work dir, or '
                f'start from its weights with --cfg-options load_from={named}.')
        print_log(f'--resume: last_checkpoint names {named}, outside the work dir '
                  f'{work_dir} (copied or moved?); using the work dir\'s own {local}.',
                  logger=logger, level=30)
        named = local
    named_ok = bool(named) and diagnose_checkpoint_file(named) is None
    if named_ok and _iteration_of(named) is None:
        return named  # a custom file name: nothing to compare it with
    candidates = {}
    for folder in folders:
        if osp.isdir(folder):
            for name in os.listdir(folder):
                it = _iteration_of(name)
                if it is not None:
                    candidates[osp.join(folder, name)] = it
    if named_ok:
        candidates = {p: it for p, it in candidates.items()
                      if osp.realpath(p) != osp.realpath(named)}
        candidates[named] = _iteration_of(named)
    for path, _ in sorted(candidates.items(), key=lambda kv: kv[1], reverse=True):
        if path == named and named_ok:
            return named
        if diagnose_checkpoint_file(path) is None:
            if garbage:
                print_log(f'--resume: {pointer} {garbage}; ignoring it and resuming from '
                          f'the newest complete checkpoint {path}.', logger=logger, level=30)
            elif named:
                why = ('names an older checkpoint' if named_ok else
                       f'names {named}, which {diagnose_checkpoint_file(named)}')
                print_log(f'--resume: last_checkpoint {why}; resuming from the newest '
                          f'complete checkpoint {path}.', logger=logger, level=30)
            return path
    if garbage:
        raise CheckpointError(
            f'--resume: {pointer} {garbage}, and {work_dir} holds no complete checkpoint. '
            'Delete it and start without --resume, or pass load_from=... explicitly.')
    if named:
        raise CheckpointError(
            f'--resume: last_checkpoint names {named}, which '
            f'{diagnose_checkpoint_file(named)}, and {work_dir} holds no other complete '
            'checkpoint. Start without --resume, or pass load_from=... explicitly.')
    return None

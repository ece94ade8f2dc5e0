"""Checkpoint loading under torch >= 2.6 (``torch.load(weights_only=True)``).

mmengine checkpoints pickle ``HistoryBuffer`` objects, numpy scalars and message-hub
state, and mmengine 0.10.7 calls ``torch.load`` without ``weights_only``. Under
torch >= 2.6 that fails (``UnpicklingError: Weights only load failed``) for
``--resume`` and ``load_from``. An allow-list is not enough (it would need
``builtins.getattr``, which defeats the point), so the DToP tools opt back into
full unpickling for the checkpoints they load.

Security trade-off: full unpickling can run code embedded in a checkpoint. Only
load checkpoints you trust (your own training runs, official releases). The
switch is the documented ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` variable; set it to
``0`` yourself to keep PyTorch's safe default (then resume/load_from of mmengine
checkpoints will fail).

Reading and loading (nothing lost, nothing silently wrong; docs/robustness.md):

* :func:`read_checkpoint`: one-line :class:`CheckpointError` naming the file and
  what is wrong (missing, empty, truncated, garbage, not a dict).
* :func:`check_checkpoint_fits` / :func:`load_checkpoint_strict`: a key or shape
  mismatch stops with the first mismatches and the fix
  (:class:`CheckpointMismatchError`), unless a partial load is asked for.
* :func:`summarize_partial_load`: a short report for *expected* partial loads
  (ImageNet ``init_cfg=Pretrained``).
* :func:`find_resumable_checkpoint`: the newest complete checkpoint for ``--resume``.
"""
import os
import os.path as osp
import re
import zipfile
from collections import OrderedDict
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

from .errors import CheckpointError, CheckpointMismatchError

_ENV = 'TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD'


def allow_full_checkpoint_unpickling() -> bool:
    """Let ``torch.load`` unpickle mmengine checkpoints (see module docstring).

    Respects an explicit user setting of ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``.

    Returns:
        bool: whether full unpickling is now enabled.
    """
    os.environ.setdefault(_ENV, '1')
    return os.environ[_ENV] not in ('0', '', 'false', 'False')


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


def read_checkpoint(filename: str, map_location='cpu') -> dict:
    """Load a checkpoint (local path or URL) with a one-line error if it is unreadable.

    Args:
        filename (str): local path, URL or any scheme mmengine's
            ``CheckpointLoader`` knows.
        map_location: as :func:`torch.load`.

    Returns:
        dict: the checkpoint (a dict with ``state_dict``, or a bare state dict).

    Raises:
        CheckpointError: ``cannot read checkpoint FILE: REASON. FIX`` for missing,
            empty, truncated, garbage or non-dict files, and for PyTorch's
            weights-only refusal.
    """
    from mmengine.runner.checkpoint import _load_checkpoint
    local = '://' not in str(filename)
    if local:
        reason = diagnose_checkpoint_file(filename)
        if reason is not None:
            raise CheckpointError(
                f'cannot read checkpoint {filename}: it {reason}. '
                + ('Check the path.' if reason == 'does not exist' else
                   'Use another checkpoint (e.g. an earlier iter_*.pth of the same run).'))
    try:
        ckpt = _load_checkpoint(filename, map_location=map_location)
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001  (turned into one readable line)
        text = f'{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ""}'
        if 'Weights only load failed' in str(exc) and 'Unsupported global' in str(exc):
            raise CheckpointError(
                f'cannot read checkpoint {filename}: PyTorch refused to unpickle it '
                f'(weights_only=True). Run it through the DToP tools, which enable full '
                f'unpickling for trusted checkpoints, or set '
                f'TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 if you trust the file.') from exc
        raise CheckpointError(
            f'cannot read checkpoint {filename}: it is not a readable PyTorch checkpoint '
            f'({text}). Use another checkpoint (e.g. an earlier iter_*.pth of the same '
            'run).') from exc
    if not isinstance(ckpt, dict):
        raise CheckpointError(
            f'cannot read checkpoint {filename}: it holds a {type(ckpt).__name__}, not a '
            'state dict or a dict with "state_dict".')
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
                           logger='current') -> dict:
    """Read ``filename``, check it fits ``model``, then load it.

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

    Returns:
        dict: the checkpoint.
    """
    from mmengine.runner.checkpoint import _load_checkpoint_to_model
    ckpt = read_checkpoint(filename, map_location)
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


def find_resumable_checkpoint(work_dir: str, logger='current') -> Optional[str]:
    """The latest *complete* checkpoint of ``work_dir``, for ``--resume``.

    Reads ``work_dir/last_checkpoint`` (mmengine's pointer). The newest complete
    ``iter_*.pth`` / ``epoch_*.pth`` of the work directory (and of the pointer's
    folder) wins when the pointer names a missing or incomplete file (a run killed
    while saving with mmengine's non-atomic hook) or an older one (a run killed
    between the rename and the pointer update); the log says so.

    Args:
        work_dir (str): the run's work directory.
        logger: mmengine logger.

    Returns:
        str or None: a checkpoint path, or None when there is nothing to resume.

    Raises:
        CheckpointError: ``last_checkpoint`` names an unusable file and no other
            complete checkpoint exists.
    """
    from mmengine.logging import print_log
    pointer = osp.join(work_dir, 'last_checkpoint')
    named = None
    if osp.isfile(pointer):
        with open(pointer, encoding='utf-8') as f:
            named = f.read().strip() or None
    named_ok = bool(named) and diagnose_checkpoint_file(named) is None
    if named_ok and _iteration_of(named) is None:
        return named  # a custom file name: nothing to compare it with
    folders = {work_dir} | ({osp.dirname(named)} if named else set())
    candidates = {}
    for folder in folders:
        if osp.isdir(folder):
            for name in os.listdir(folder):
                it = _iteration_of(name)
                if it is not None:
                    candidates[osp.join(folder, name)] = it
    if named_ok:
        candidates[named] = _iteration_of(named)
    for path, _ in sorted(candidates.items(), key=lambda kv: kv[1], reverse=True):
        if path == named and named_ok:
            return named
        if diagnose_checkpoint_file(path) is None:
            if named:
                why = ('names an older checkpoint' if named_ok else
                       f'names {named}, which {diagnose_checkpoint_file(named)}')
                print_log(f'--resume: last_checkpoint {why}; resuming from the newest '
                          f'complete checkpoint {path}.', logger=logger, level=30)
            return path
    if named:
        raise CheckpointError(
            f'--resume: last_checkpoint names {named}, which '
            f'{diagnose_checkpoint_file(named)}, and {work_dir} holds no other complete '
            'checkpoint. Start without --resume, or pass load_from=... explicitly.')
    return None

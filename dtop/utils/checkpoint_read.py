"""Reading a checkpoint with a one-line error naming the file and what is wrong.

:func:`read_checkpoint` raises :class:`CheckpointError` for missing, empty,
truncated, garbage or non-dict files (:func:`diagnose_checkpoint_file` tells
without unpickling), and :class:`NonFiniteError` naming the first NaN/Inf
weights.
"""
import os.path as osp
import zipfile
from typing import Optional

from .checkpoint_load import torch_load_checkpoint
from .checkpoint_plain import from_plain_checkpoint
from .errors import CheckpointError
from .nonfinite import check_finite_weights


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

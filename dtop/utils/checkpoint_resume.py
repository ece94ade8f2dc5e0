"""``--resume``: the newest complete checkpoint of a work directory.

:func:`find_resumable_checkpoint` follows mmengine's ``last_checkpoint`` pointer
when it names a complete checkpoint of the run, and otherwise falls back to the
newest complete ``iter_*.pth`` / ``epoch_*.pth``, saying so.
"""
import os
import os.path as osp
import re
from typing import Optional, Sequence, Tuple

from .checkpoint_read import diagnose_checkpoint_file
from .errors import CheckpointError

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

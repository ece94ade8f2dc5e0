"""A CheckpointHook whose saves can be interrupted at any moment without losing the run.

mmengine's :class:`~mmengine.hooks.CheckpointHook` (0.10) deletes the oldest kept
checkpoint *before* writing the new one, writes the new one in place, then points
``last_checkpoint`` at it. A process killed during a save (out of memory, a job
scheduler, Ctrl-C twice) with ``max_keep_ckpts=1`` leaves no complete checkpoint
and ``--resume`` fails. :class:`AtomicCheckpointHook` reorders this:

1. write ``.iter_N.pth.partial`` next to the final file, flush and ``fsync``;
2. ``os.replace`` it to ``iter_N.pth`` (atomic on POSIX file systems);
3. rewrite ``last_checkpoint`` the same way (temporary file + rename), so it only
   ever names a complete file;
4. only then remove the checkpoints beyond ``max_keep_ckpts``.

A kill at any point leaves the previous checkpoint (or the new one) complete and
``last_checkpoint`` naming a complete file; leftover ``.partial`` files are
removed at the next ``before_train``. Non-local storage backends fall back to
mmengine's behaviour.

A save that fails (disk full: ``OSError: [Errno 28]``) removes its ``.partial``
and stops with one line naming the free space and the intact previous checkpoint.
A model whose weights hold NaN/Inf is not saved at all (one line naming the first
such tensors; :func:`~dtop.engine.hooks.nonfinite_guard_hook.check_finite_before_save`).

``DToPRunner`` uses this hook wherever a config asks for ``CheckpointHook``.
"""
import os
import os.path as osp
import shutil
from typing import List, Optional

from mmengine.dist import is_main_process
from mmengine.fileio import LocalBackend
from mmengine.hooks import CheckpointHook
from mmengine.logging import print_log
from mmseg.registry import HOOKS

from dtop.utils.errors import CheckpointError

PARTIAL_SUFFIX = '.partial'


def _mib(num_bytes: float) -> str:
    return f'{num_bytes / 2**20:.1f} MiB' if num_bytes < 2**30 else \
        f'{num_bytes / 2**30:.2f} GiB'


def save_failure_message(final: str, partial: str, removed: bool, exc: OSError,
                         previous: Optional[str]) -> str:
    """One line: what failed, the free space, the partial file, the intact checkpoint."""
    folder = osp.dirname(osp.abspath(final))
    try:
        free = f'{_mib(shutil.disk_usage(folder).free)} free on the disk of {folder}'
    except OSError:
        free = f'free space of {folder} unknown'
    need = f', the previous checkpoint took {_mib(osp.getsize(previous))}' \
        if previous and osp.isfile(previous) else ''
    reason = f'[Errno {exc.errno}] {exc.strerror}' if exc.errno else str(exc)
    left = (f'removed the incomplete {partial}' if removed else
            f'could not remove the incomplete {partial}; delete it')
    keep = (f'the previous checkpoint {previous} is intact: free space, then run again '
            'with --resume' if previous else
            'no earlier checkpoint of this run exists: free space and run again')
    return (f'could not save checkpoint {final}: {reason} ({free}{need}); {left}; '
            f'{keep}.')


def _fsync_dir(path: str) -> None:
    """Persist a rename in ``path`` (best effort; not available everywhere)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: str) -> None:
    with open(path, 'rb') as f:
        os.fsync(f.fileno())


def atomic_write_text(path: str, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename.

    Args:
        path (str): destination.
        text (str): content.
    """
    tmp = f'{path}.tmp{os.getpid()}'
    with open(tmp, 'w', encoding='utf-8') as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(osp.dirname(osp.abspath(path)))


@HOOKS.register_module()
class AtomicCheckpointHook(CheckpointHook):
    """:class:`~mmengine.hooks.CheckpointHook` with atomic, loss-free saves.

    Same arguments and checkpoint names as ``CheckpointHook``; see the module
    docstring for the order of operations. Only the periodic / last saves
    (``_save_checkpoint_with_step``) are changed; ``save_best`` keeps
    mmengine's behaviour.
    """

    def _on_save_stage(self, runner, stage: str, path: str) -> None:
        """Called after each step of a save (no-op; tests override it to kill the
        process there). Stages: ``'written'`` (temporary file complete, path = the
        temporary file), ``'renamed'``, ``'pointed'`` (``last_checkpoint``
        updated), ``'cleaned'`` (old checkpoints removed)."""

    def before_train(self, runner) -> None:
        super().before_train(runner)
        if not is_main_process() or not isinstance(self.file_backend, LocalBackend):
            return
        if not osp.isdir(self.out_dir):
            return
        stale = [n for n in os.listdir(self.out_dir)
                 if n.startswith('.') and n.endswith(PARTIAL_SUFFIX)]
        for name in stale:
            os.remove(osp.join(self.out_dir, name))
        if stale:
            print_log(f'AtomicCheckpointHook: removed {len(stale)} incomplete checkpoint '
                      f'file(s) left by an interrupted save: {", ".join(sorted(stale))}',
                      logger='current', level=30)

    def _save_checkpoint_with_step(self, runner, step, meta):
        if not isinstance(self.file_backend, LocalBackend):
            return super()._save_checkpoint_with_step(runner, step, meta)
        to_remove: List[int] = []
        if self.max_keep_ckpts > 0:
            if not (len(self.keep_ckpt_ids) > 0 and self.keep_ckpt_ids[-1] == step):
                while len(self.keep_ckpt_ids) >= self.max_keep_ckpts:
                    to_remove.append(self.keep_ckpt_ids.popleft())
                self.keep_ckpt_ids.append(step)
                # stored in the checkpoint's message hub, as mmengine does
                runner.message_hub.update_info('keep_ckpt_ids', list(self.keep_ckpt_ids))

        ckpt_filename = self.filename_tmpl.format(step)
        final = self.file_backend.join_path(self.out_dir, ckpt_filename)
        partial_name = f'.{ckpt_filename}{PARTIAL_SUFFIX}'
        partial = self.file_backend.join_path(self.out_dir, partial_name)
        from .nonfinite_guard_hook import check_finite_before_save, last_good_checkpoint
        check_finite_before_save(runner.model, final, runner.work_dir)  # NaN: no save
        previous = last_good_checkpoint(runner.work_dir)
        self.last_ckpt = final
        runner.message_hub.update_info('last_ckpt', final)

        try:
            runner.save_checkpoint(  # master_only: the other ranks return at once
                self.out_dir,
                partial_name,
                self.file_client_args,
                save_optimizer=self.save_optimizer,
                save_param_scheduler=self.save_param_scheduler,
                meta=meta,
                by_epoch=self.by_epoch,
                backend_args=self.backend_args,
                **self.args)
        except OSError as exc:  # disk full, quota, permissions: nothing half-written stays
            removed = True
            try:
                if osp.isfile(partial):
                    os.remove(partial)
            except OSError:
                removed = False
            raise CheckpointError(save_failure_message(final, partial, removed, exc,
                                                       previous)) from exc
        if not is_main_process():
            return
        if not osp.isfile(partial):  # e.g. a DeepSpeed directory: keep mmengine's way
            if osp.isdir(partial):
                os.replace(partial, final)
        else:
            _fsync_file(partial)
            self._on_save_stage(runner, 'written', partial)
            os.replace(partial, final)
            _fsync_dir(self.out_dir)
        self._on_save_stage(runner, 'renamed', final)
        atomic_write_text(osp.join(runner.work_dir, 'last_checkpoint'), final)
        self._on_save_stage(runner, 'pointed', final)
        for old in to_remove:
            self._remove(self.file_backend.join_path(self.out_dir,
                                                     self.filename_tmpl.format(old)))
        self._on_save_stage(runner, 'cleaned', final)

    def _remove(self, path: Optional[str]) -> None:
        if path and self.file_backend.isfile(path):
            self.file_backend.remove(path)
        elif path and self.file_backend.isdir(path):
            self.file_backend.rmtree(path)

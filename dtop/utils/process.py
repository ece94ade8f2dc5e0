"""Process lifecycle of the launched tools: workers die with their launcher
(:func:`die_with_parent`), and one training holds its work directory
(:class:`WorkDirLock`).
"""
import ctypes
import os
import signal
import sys
import threading
import time


# --------------------------------------------------------------------------------------
# Workers die with their launcher; one training per work directory.
# --------------------------------------------------------------------------------------
_PR_SET_PDEATHSIG = 1


def launched_by_torchrun() -> bool:
    """Whether this process is a worker started by ``torchrun`` (elastic agent)."""
    return 'TORCHELASTIC_RUN_ID' in os.environ


def die_with_parent(poll_s: float = 1.0, grace_s: float = 10.0,
                    sig: int = signal.SIGTERM) -> bool:
    """End this process when its parent (the ``torchrun`` agent) dies.

    Without this, a ``torchrun`` killed with SIGKILL leaves its workers running:
    they keep training and writing checkpoints into WORK_DIR, racing a later
    ``--resume``. Two mechanisms, either of which suffices:

    * Linux ``prctl(PR_SET_PDEATHSIG, sig)``: the kernel sends ``sig`` when the
      parent exits;
    * a daemon thread that polls ``os.getppid()`` every ``poll_s`` seconds and sends
      ``sig`` to this process when the parent changed (re-parenting), then SIGKILL
      after ``grace_s`` seconds if the process is still alive.

    Args:
        poll_s (float): watchdog period in seconds.
        grace_s (float): seconds between ``sig`` and SIGKILL.
        sig (int): the signal sent first. Default SIGTERM.

    Returns:
        bool: whether ``prctl`` was armed (the watchdog always is).
    """
    parent = os.getppid()
    armed = False
    if sys.platform.startswith('linux'):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            armed = libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
        except (OSError, AttributeError):
            armed = False

    def _watch():
        while True:
            if os.getppid() != parent:
                print(f'[dtop] the launcher (pid {parent}) is gone; worker {os.getpid()} '
                      'stops.', file=sys.stderr, flush=True)
                os.kill(os.getpid(), sig)
                time.sleep(grace_s)
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(poll_s)

    threading.Thread(target=_watch, name='dtop-parent-watchdog', daemon=True).start()
    if os.getppid() != parent:  # the parent died before prctl was armed
        os.kill(os.getpid(), sig)
    return armed


class WorkDirLock:
    """An exclusive lock on ``WORK_DIR/.dtop_train.lock`` held while training runs.

    A second training in the same work directory (e.g. ``--resume`` while an
    orphaned worker still runs) stops at once instead of racing it for the
    checkpoints. The lock (``fcntl.flock``) is released when the process exits,
    however it exits.

    Args:
        work_dir (str): the run's work directory (created if missing).
    """

    FILENAME = '.dtop_train.lock'

    def __init__(self, work_dir: str) -> None:
        self.path = os.path.join(work_dir, self.FILENAME)
        self._fd = None
        os.makedirs(work_dir, exist_ok=True)

    def acquire(self) -> 'WorkDirLock':
        """Take the lock.

        Raises:
            RuntimeError: naming the holder's pid when another process holds it.
        """
        import fcntl
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 64).decode(errors='replace').strip() or 'unknown'
            os.close(fd)
            from .errors import DToPUserError
            raise DToPUserError(
                f'another training (pid {holder}) is running in {os.path.dirname(self.path)}'
                ' and writes its checkpoints there. Wait for it or stop it (kill '
                f'{holder}) before starting or resuming a run in this work directory.'
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        """Drop the lock (also happens at process exit)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

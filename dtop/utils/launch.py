"""Launcher set-up shared by ``tools/train.py`` and ``tools/test.py``.

mmengine assumes a GPU per process when it is asked to run distributed: its
``init_dist`` calls ``torch.cuda.set_device(LOCAL_RANK)`` and its Runner wraps the
model in DDP with ``device_ids=[LOCAL_RANK]``. Both fail on a machine without CUDA.
:func:`prepare_distributed` handles that case the supported way: it initialises a
``gloo`` process group from the ``torchrun`` environment *before* the Runner is
built (the Runner then skips ``init_dist``) and asks for
``MMDistributedDataParallel`` without ``device_ids`` (CPU modules). With CUDA
nothing changes: mmengine initialises NCCL as the config says.
"""
import ctypes
import os
import signal
import sys
import threading
import time
from typing import Optional

import torch
import torch.distributed as dist
from mmengine.config import Config

LAUNCHERS = ('none', 'pytorch', 'slurm', 'mpi')
_TORCHRUN_ENV = ('RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT')


def configure_cpu_ddp(cfg: Config) -> Config:
    """Edit ``cfg`` for DDP on CPU processes (gloo backend, no ``device_ids``).

    Keeps any ``model_wrapper_cfg`` the config already has (its type and other
    keys) but forces ``device_ids=None``; ``find_unused_parameters`` comes from
    the config's top-level key when the wrapper config does not set it.

    Args:
        cfg (Config): the full training/test config (modified in place).

    Returns:
        Config: the same ``cfg``.
    """
    env_cfg = cfg.setdefault('env_cfg', {})
    dist_cfg = env_cfg.setdefault('dist_cfg', {})
    dist_cfg['backend'] = 'gloo'
    wrapper = cfg.get('model_wrapper_cfg') or {}
    wrapper = dict(wrapper)
    wrapper.setdefault('type', 'MMDistributedDataParallel')
    wrapper['device_ids'] = None
    wrapper.setdefault('find_unused_parameters', bool(cfg.get('find_unused_parameters', False)))
    cfg.model_wrapper_cfg = wrapper
    return cfg


def init_cpu_process_group(timeout_s: Optional[float] = None) -> None:
    """Initialise a ``gloo`` process group from torchrun's environment variables.

    Args:
        timeout_s (float, optional): collective timeout in seconds (torch default
            when None).

    Raises:
        RuntimeError: if the torchrun variables are missing (the script was not
            started by ``torchrun`` / ``tools/dist_*.sh``).
    """
    if dist.is_available() and dist.is_initialized():
        return
    missing = [k for k in _TORCHRUN_ENV if k not in os.environ]
    if missing:
        raise RuntimeError(
            f'--launcher pytorch needs the torchrun environment, but {missing} are not '
            'set. Start the script with torchrun (e.g. bash tools/dist_train.sh) or use '
            '--launcher none for a single process.')
    kwargs = {}
    if timeout_s is not None:
        from datetime import timedelta
        kwargs['timeout'] = timedelta(seconds=timeout_s)
    dist.init_process_group(backend='gloo', init_method='env://', **kwargs)


def prepare_distributed(cfg: Config, launcher: str,
                        cuda_available: Optional[bool] = None) -> Config:
    """Make ``cfg`` runnable under ``launcher`` on this machine.

    * ``launcher='none'``: one process, nothing to do.
    * CUDA visible: nothing to do; mmengine initialises the backend of
      ``cfg.env_cfg.dist_cfg`` (NCCL) and pins one GPU per process.
    * no CUDA and ``launcher='pytorch'``: gloo process group + CPU DDP
      (:func:`configure_cpu_ddp`, :func:`init_cpu_process_group`).

    Args:
        cfg (Config): the full config (modified in place).
        launcher (str): one of ``none``, ``pytorch``, ``slurm``, ``mpi``.
        cuda_available (bool, optional): override ``torch.cuda.is_available()``
            (tests).

    Returns:
        Config: the same ``cfg``.

    Raises:
        ValueError: for an unknown launcher, or slurm/mpi without CUDA.
    """
    if launcher not in LAUNCHERS:
        raise ValueError(f'--launcher must be one of {LAUNCHERS}, got {launcher!r}.')
    if launcher == 'none':
        return cfg
    if cuda_available is None:
        cuda_available = torch.cuda.is_available()
    if cuda_available:
        return cfg
    if launcher != 'pytorch':
        raise ValueError(
            f'--launcher {launcher} needs CUDA devices; on a machine without CUDA start '
            'the processes with torchrun and --launcher pytorch (bash tools/dist_train.sh '
            'does this), which runs DDP on CPU with the gloo backend.')
    configure_cpu_ddp(cfg)
    timeout = cfg.get('env_cfg', {}).get('dist_cfg', {}).get('timeout')
    init_cpu_process_group(timeout)
    return cfg


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

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
import os
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

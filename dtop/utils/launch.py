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
from typing import List, Optional

import torch
import torch.distributed as dist
from mmengine.config import Config

LAUNCHERS = ('none', 'pytorch', 'slurm', 'mpi')
_TORCHRUN_ENV = ('RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT')


def configure_cpu_ddp(cfg: Config) -> Config:
    """Edit ``cfg`` for DDP on CPU processes (gloo backend, no ``device_ids``).

    Keeps any ``model_wrapper_cfg`` the config already has (its type and other
    keys) but forces ``device_ids=None``; ``find_unused_parameters`` comes from
    the config's top-level key when the wrapper config does not set it (and is
    left out when that key is ``None``: the runner decides it from the model).

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
    if cfg.get('find_unused_parameters') is not None:
        wrapper.setdefault('find_unused_parameters', bool(cfg.find_unused_parameters))
    # else: decided from the built model (DToPRunner.wrap_model,
    # :func:`ddp_wrapper_cfg`)
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
      ``cfg.env_cfg.dist_cfg`` (NCCL) and pins one GPU per process (under srun,
      the torchrun variables are set from ``SLURM_*`` first).
    * no CUDA and ``launcher='pytorch'``: gloo process group + CPU DDP
      (:func:`configure_cpu_ddp`, :func:`init_cpu_process_group`).
    * no CUDA and ``launcher='slurm'``: the same, after the torchrun variables
      are set from ``SLURM_*`` (:func:`slurm_to_torch_env`), as mmengine's
      ``init_dist('slurm')`` does on GPUs.

    Args:
        cfg (Config): the full config (modified in place).
        launcher (str): one of ``none``, ``pytorch``, ``slurm``, ``mpi``.
        cuda_available (bool, optional): override ``torch.cuda.is_available()``
            (tests).

    Returns:
        Config: the same ``cfg``.

    Raises:
        ValueError: for an unknown launcher, or mpi without CUDA.
    """
    if launcher not in LAUNCHERS:
        raise ValueError(f'--launcher must be one of {LAUNCHERS}, got {launcher!r}.')
    if launcher == 'none':
        return cfg
    _find_unused_fallback(cfg)
    if cuda_available is None:
        cuda_available = torch.cuda.is_available()
    if cuda_available:
        if launcher == 'slurm' and 'SLURM_PROCID' in os.environ:
            # MASTER_ADDR etc. without needing `scontrol` on the node; mmengine's
            # init_dist('slurm') keeps them and pins the GPUs.
            slurm_to_torch_env()
        return cfg
    if launcher == 'slurm':
        slurm_to_torch_env()
    elif launcher != 'pytorch':
        raise ValueError(
            f'--launcher {launcher} needs CUDA devices; on a machine without CUDA start '
            'the processes with torchrun and --launcher pytorch (bash tools/dist_train.sh '
            'does this) or with srun and --launcher slurm (bash tools/slurm_train.sh), '
            'which run DDP on CPU with the gloo backend.')
    configure_cpu_ddp(cfg)
    timeout = cfg.get('env_cfg', {}).get('dist_cfg', {}).get('timeout')
    init_cpu_process_group(timeout)
    return cfg


def _find_unused_fallback(cfg: Config) -> None:
    """``find_unused_parameters = None`` means "from the model", which only
    :class:`~dtop.engine.DToPRunner` decides; under another ``runner_type`` it
    becomes True (mmengine's Runner would hand None to DDP)."""
    if 'find_unused_parameters' not in cfg or cfg.find_unused_parameters is not None:
        return
    from mmengine.registry import RUNNERS

    from dtop.engine import DToPRunner
    runner_type = cfg.get('runner_type', 'DToPRunner')
    cls = RUNNERS.get(runner_type) if isinstance(runner_type, str) else runner_type
    if not (isinstance(cls, type) and issubclass(cls, DToPRunner)):
        cfg.find_unused_parameters = True


def first_slurm_host(nodelist: str) -> str:
    """The first host of a Slurm node list (``node[03-05,9],gpu1`` -> ``node03``).

    Uses ``scontrol show hostnames`` when it is on the PATH (what mmengine does),
    else expands the common ``prefix[a-b,c]suffix`` form itself.

    Args:
        nodelist (str): ``SLURM_NODELIST`` / ``SLURM_JOB_NODELIST``.

    Returns:
        str: the host name of the job's first node (rank 0 runs there).
    """
    import re
    import shutil
    import subprocess
    if shutil.which('scontrol'):
        try:
            out = subprocess.run(['scontrol', 'show', 'hostnames', nodelist],
                                 capture_output=True, text=True, timeout=30)
            hosts = out.stdout.split()
            if out.returncode == 0 and hosts:
                return hosts[0]
        except (OSError, subprocess.SubprocessError):
            pass
    first = re.match(r'[^,\[]*(\[[^\]]*\])?[^,]*', nodelist.strip()).group(0)
    m = re.fullmatch(r'([^\[]*)\[([^\]]*)\](.*)', first)
    if not m:
        return first
    prefix, ranges, suffix = m.groups()
    return prefix + ranges.split(',')[0].split('-')[0] + suffix


def slurm_to_torch_env(environ: Optional[dict] = None) -> dict:
    """Set the torchrun variables from Slurm's, as mmengine's ``init_dist('slurm')``.

    ``RANK`` = ``SLURM_PROCID``, ``WORLD_SIZE`` = ``SLURM_NTASKS``,
    ``LOCAL_RANK`` = ``SLURM_LOCALID`` (else 0), ``MASTER_ADDR`` = the first host
    of ``SLURM_NODELIST`` unless already set, ``MASTER_PORT`` = 29500 unless set
    (``tools/slurm_*.sh`` export ``PORT`` as ``MASTER_PORT``).

    Args:
        environ (dict, optional): the environment to read and update (default
            ``os.environ``).

    Returns:
        dict: ``environ``.

    Raises:
        OptionError: a ``SLURM_*`` variable is missing (not started by ``srun``).
    """
    from .errors import OptionError
    env = os.environ if environ is None else environ
    missing = [k for k in ('SLURM_PROCID', 'SLURM_NTASKS') if k not in env]
    nodelist = env.get('SLURM_NODELIST') or env.get('SLURM_JOB_NODELIST')
    if nodelist is None and 'MASTER_ADDR' not in env:
        missing.append('SLURM_NODELIST')
    if missing:
        raise OptionError(
            f'--launcher slurm needs the Slurm task environment, but {missing} are not '
            'set. Start the script with srun (e.g. bash tools/slurm_train.sh PARTITION '
            'JOB_NAME CONFIG WORK_DIR) or use --launcher none for a single process.')
    env['RANK'] = str(int(env['SLURM_PROCID']))
    env['WORLD_SIZE'] = str(int(env['SLURM_NTASKS']))
    env['LOCAL_RANK'] = str(int(env.get('SLURM_LOCALID', 0)))
    if 'MASTER_ADDR' not in env:
        env['MASTER_ADDR'] = first_slurm_host(nodelist)
    env.setdefault('MASTER_PORT', '29500')
    return env


def global_rank(launcher: str) -> int:
    """This process's rank before any process group exists (0 for one process).

    ``RANK`` (torchrun), ``SLURM_PROCID`` (srun with ``--launcher slurm``).
    """
    if 'RANK' in os.environ:
        return int(os.environ['RANK'])
    if launcher == 'slurm' and 'SLURM_PROCID' in os.environ:
        return int(os.environ['SLURM_PROCID'])
    return 0


# --------------------------------------------------------------------------------------
# DDP's find_unused_parameters, from the model
# --------------------------------------------------------------------------------------
def unused_training_parameters(model) -> Optional[List[str]]:
    """Names of the trainable parameters a training step of ``model`` never uses.

    Asks the model (``model.unused_parameters_in_training()``, which
    :class:`~dtop.models.segmentors.DToPEncoderDecoder` implements).

    Returns:
        list[str] | None: the names (empty: every trainable parameter takes part
        in the loss), or None for a model that cannot tell.
    """
    probe = getattr(model, 'unused_parameters_in_training', None)
    if not callable(probe):
        return None
    return list(probe())


def resolve_find_unused_parameters(setting: Optional[bool], model,
                                   logger=None) -> bool:
    """DDP's ``find_unused_parameters``: ``setting`` if given, else from the model.

    With ``find_unused_parameters=True`` DDP walks the autograd graph after every
    forward to find parameters without a gradient (torch warns when there are
    none); with False a parameter that gets no gradient stops training at the
    next step. So: False when the model says every trainable parameter takes part
    in the loss, True when some never do or the model cannot tell.

    Args:
        setting (bool | None): the config's ``find_unused_parameters`` (None:
            decide from the model).
        model (nn.Module): the model to wrap (not yet wrapped).
        logger: where to log the decision (optional).

    Returns:
        bool: the value for DDP.
    """
    if setting is not None:
        value, why = bool(setting), 'set in the config'
    else:
        unused = unused_training_parameters(model)
        if unused is None:
            value, why = True, (f'{type(model).__name__} does not say which parameters a '
                                'training step uses')
        elif unused:
            value = True
            why = (f'{len(unused)} trainable parameters never take part in the loss, '
                   f'e.g. {", ".join(unused[:3])}')
        else:
            value, why = False, 'every trainable parameter takes part in the loss'
    if logger is not None:
        logger.info(f'DDP find_unused_parameters={value} ({why}).')
    return value


def ddp_wrapper_cfg(cfg, wrapper_cfg: Optional[dict], model, logger=None) -> Optional[dict]:
    """The ``model_wrapper_cfg`` to wrap ``model`` with, ``find_unused_parameters``
    decided by :func:`resolve_find_unused_parameters`.

    ``wrapper_cfg`` None means mmengine's default wrapper
    (``MMDistributedDataParallel`` with ``broadcast_buffers=False``, reading the
    config's top-level ``find_unused_parameters``); that is what is returned, with
    the value filled in. A wrapper that is not a ``DistributedDataParallel``
    (e.g. FSDP) is returned unchanged.

    Args:
        cfg: the runner's config (its ``find_unused_parameters`` key).
        wrapper_cfg (dict, optional): the config's ``model_wrapper_cfg``.
        model (nn.Module): the model to wrap.
        logger: where to log the decision (optional).

    Returns:
        dict | None: the wrapper config.
    """
    from mmengine.registry import MODEL_WRAPPERS
    from torch.nn.parallel import DistributedDataParallel
    if wrapper_cfg is None:
        wrapper = dict(type='MMDistributedDataParallel', broadcast_buffers=False)
        setting = cfg.get('find_unused_parameters', None)
    else:
        wrapper = dict(wrapper_cfg)
        wrapper_type = wrapper.get('type', 'MMDistributedDataParallel')
        cls = MODEL_WRAPPERS.get(wrapper_type) if isinstance(wrapper_type, str) \
            else wrapper_type
        if not (isinstance(cls, type) and issubclass(cls, DistributedDataParallel)):
            return wrapper_cfg
        setting = wrapper.get('find_unused_parameters', cfg.get('find_unused_parameters'))
    wrapper['find_unused_parameters'] = resolve_find_unused_parameters(setting, model, logger)
    return wrapper


# Re-exported: the tools import the process helpers from here.
from .process import WorkDirLock, die_with_parent, launched_by_torchrun  # noqa: E402,F401

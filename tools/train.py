"""Train a DToP / SegViT segmentor (mmseg 1.x style).

Examples::

    # one process (CPU or one GPU)
    python tools/train.py configs/segvit/segvit_vit-b16_4xb4-160k_ade20k-512x512.py
    # several processes: use the launchers (torchrun, NCCL on GPUs, gloo on CPU)
    bash tools/dist_train.sh CONFIG WORK_DIR [--resume] [--amp] [--cfg-options k=v ...]
    bash tools/dist_train_load.sh PRUNE_CONFIG WORK_DIR BASE_CKPT
    # on a Slurm cluster (srun, --launcher slurm)
    GPUS=8 bash tools/slurm_train.sh PARTITION JOB_NAME CONFIG WORK_DIR

``--resume`` continues from the latest checkpoint in the work directory (or from
``load_from`` if the config sets it), restoring optimizer, scheduler and iteration.
"""
import argparse
import os.path as osp
import sys

# Make the repository importable when the script is run from a checkout without
# `pip install -e .`.
_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import torch  # noqa: E402
from mmengine.config import Config  # noqa: E402
from mmengine.logging import print_log  # noqa: E402
from mmengine.registry import RUNNERS  # noqa: E402
from mmengine.runner import Runner  # noqa: E402

from dtop.apis import load_config, validate_model_options  # noqa: E402
from dtop.engine import DToPRunner  # noqa: E402
from dtop.utils import cli  # noqa: E402  (the options shared by the tools)
from dtop.utils.errors import run_cli  # noqa: E402
from dtop.utils.launch import (LAUNCHERS, WorkDirLock, die_with_parent,  # noqa: E402
                               global_rank, launched_by_torchrun, prepare_distributed)


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line arguments (mmseg 1.x ``tools/train.py`` compatible)."""
    parser = argparse.ArgumentParser(description='Train a DToP segmentor')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument(
        '--resume',
        action='store_true',
        default=False,
        help='resume from the latest checkpoint in the work_dir automatically')
    parser.add_argument(
        '--amp',
        action='store_true',
        default=False,
        help='enable automatic-mixed-precision training (CUDA only)')
    cli.add_partial_load_arg(parser, 'let load_from / --resume load a checkpoint whose keys '
                             'or shapes do not all match the model (default: stop with the '
                             'first mismatches)')
    cli.add_trust_checkpoint_arg(parser, cli.RUNNER_TRUST_CHECKPOINT_HELP)
    cli.add_cfg_options_arg(parser, 'override settings of the config, key=value pairs '
                            'such as train_cfg.max_iters=40000 or '
                            'load_from=work_dirs/base/iter_160000.pth', metavar=None)
    parser.add_argument(
        '--launcher', choices=LAUNCHERS, default='none', help='job launcher')
    return cli.parse_launcher_args(parser, argv)


def build_config(args: argparse.Namespace) -> Config:
    """Load the config and apply the command-line settings.

    Args:
        args (argparse.Namespace): from :func:`parse_args`.

    Returns:
        Config: ready for :func:`prepare_distributed` and the Runner.

    Raises:
        FileNotFoundError: missing config file or ``load_from`` checkpoint.
        OptionError: an invalid ``model.prune_threshold`` (or other pruning option).
        RuntimeError: ``--amp`` without a CUDA device.
    """
    cfg = load_config(args.config, args.cfg_options)  # also checks the pruning options
    # launcher; work_dir priority: CLI > config > ./work_dirs/<config name>; checkpoint
    # loading (--allow-partial-load, --trust-checkpoint)
    cli.apply_runner_args(cfg, args)

    if args.amp:
        if not torch.cuda.is_available():
            raise RuntimeError('--amp needs a CUDA device (mmengine AmpOptimWrapper); '
                               'drop --amp to train in fp32 on CPU.')
        optim_wrapper = cfg.optim_wrapper.get('type', 'OptimWrapper')
        if optim_wrapper == 'AmpOptimWrapper':
            print_log('AMP is already enabled in the config.', logger='current')
        else:
            if optim_wrapper != 'OptimWrapper':
                raise ValueError(f'--amp works with optim_wrapper type OptimWrapper, '
                                 f'but the config uses {optim_wrapper!r}.')
            cfg.optim_wrapper.type = 'AmpOptimWrapper'
            cfg.optim_wrapper.loss_scale = 'dynamic'

    cfg.resume = args.resume

    load_from = cfg.get('load_from')
    if load_from and '://' not in str(load_from) and not osp.isfile(load_from):
        raise FileNotFoundError(
            f'load_from checkpoint not found: {load_from}. Pass an existing BASE '
            'checkpoint (e.g. WORK_DIR/iter_160000.pth) or a URL.')
    policy = validate_model_options(cfg)
    if policy is not None and policy.prunes and not load_from and not cfg.resume:
        print_log('This is a prune fine-tune config (prune_threshold < 1) but no '
                  'load_from is set: training starts from the ImageNet backbone and '
                  'random heads, not from a BASE model. Use tools/dist_train_load.sh '
                  'CONFIG WORK_DIR BASE_CKPT for the paper workflow.',
                  logger='current', level=30)
    return cfg


def build_runner(cfg: Config) -> Runner:
    """The config's ``runner_type``, else :class:`DToPRunner` (strict checkpoint
    loading, atomic checkpoint saves, checked data)."""
    if 'runner_type' not in cfg:
        return DToPRunner.from_cfg(cfg)
    return RUNNERS.build(cfg)


def main(argv=None) -> None:
    if launched_by_torchrun():
        die_with_parent()  # a killed torchrun must not leave a worker training
    args = parse_args(argv)
    cfg = build_config(args)
    lock = None
    if global_rank(args.launcher) == 0:  # RANK (torchrun) or SLURM_PROCID (srun)
        lock = WorkDirLock(cfg.work_dir).acquire()
    prepare_distributed(cfg, args.launcher)
    runner = build_runner(cfg)
    runner.train()
    if lock is not None:
        lock.release()


if __name__ == '__main__':
    run_cli(main)

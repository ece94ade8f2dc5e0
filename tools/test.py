"""Test (evaluate) a DToP / SegViT checkpoint (mmseg 1.x style).

Examples::

    python tools/test.py CONFIG CHECKPOINT                       # one process
    bash tools/dist_test.sh CONFIG CHECKPOINT [--out DIR] [--show-dir DIR]
    GPUS=4 bash tools/slurm_test.sh PARTITION JOB_NAME CONFIG CHECKPOINT   # Slurm

The metrics (mIoU, ...) are printed by the Runner at the end. ``--out`` saves the
predicted label maps as PNG files; ``--show-dir`` saves painted predictions.
"""
import argparse
import os.path as osp
import sys

_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from mmengine.config import Config  # noqa: E402
from mmengine.registry import RUNNERS  # noqa: E402

from dtop.apis import load_config  # noqa: E402
from dtop.engine import DToPRunner  # noqa: E402
from dtop.utils import cli  # noqa: E402  (the options shared by the tools)
from dtop.utils.errors import run_cli  # noqa: E402
from dtop.utils.launch import (LAUNCHERS, die_with_parent,  # noqa: E402
                               launched_by_torchrun, prepare_distributed)


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line arguments (mmseg 1.x ``tools/test.py`` compatible)."""
    parser = argparse.ArgumentParser(description='Test (and evaluate) a DToP segmentor')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file (path or URL)')
    parser.add_argument(
        '--work-dir',
        help='if specified, the evaluation metric results are dumped into the '
        'directory as json')
    parser.add_argument(
        '--out',
        type=str,
        help='directory where the predicted label maps are saved (PNG)')
    parser.add_argument('--show', action='store_true', help='show prediction results')
    parser.add_argument(
        '--show-dir',
        help='directory where painted images (ground truth | prediction) of every '
        'test image are saved, under SHOW_DIR/vis_data/vis_image/')
    parser.add_argument(
        '--show-interval', type=int, default=1, metavar='N',
        help='with --show/--show-dir: paint every N-th test image (default: every one)')
    parser.add_argument(
        '--wait-time', type=float, default=2, help='the interval of show (s)')
    cli.add_cfg_options_arg(parser, 'override settings of the config, key=value pairs '
                            'such as model.prune_threshold=0.9', metavar=None)
    parser.add_argument(
        '--launcher', choices=LAUNCHERS, default='none', help='job launcher')
    parser.add_argument('--tta', action='store_true', help='test-time augmentation')
    parser.add_argument(
        '--precision', choices=['fp32', 'bf16', 'fp16'], default=None,
        help='inference precision (autocast; CPU: bf16, CUDA: bf16/fp16). The pruning '
        'decision stays fp32. Default: the config\'s model.test_cfg.precision (fp32)')
    cli.add_partial_load_arg(parser, 'evaluate even if the checkpoint\'s keys or shapes do '
                             'not all match the model (default: stop with the first '
                             'mismatches)')
    cli.add_trust_checkpoint_arg(parser, cli.RUNNER_TRUST_CHECKPOINT_HELP)
    return cli.parse_launcher_args(parser, argv)


def trigger_visualization_hook(cfg: Config, args: argparse.Namespace) -> Config:
    """Turn on the ``SegVisualizationHook`` for ``--show`` / ``--show-dir``."""
    default_hooks = cfg.default_hooks
    if 'visualization' not in default_hooks:
        raise RuntimeError(
            '--show/--show-dir need a visualization hook in default_hooks, e.g. '
            "default_hooks = dict(visualization=dict(type='SegVisualizationHook')).")
    hook = default_hooks['visualization']
    hook['draw'] = True
    # every N-th test image (default every one; mmseg's hook defaults to every 50th)
    if getattr(args, 'show_interval', 1) < 1:
        raise ValueError(f'--show-interval must be >= 1, got {args.show_interval}')
    hook['interval'] = getattr(args, 'show_interval', 1)
    if args.show:
        hook['show'] = True
        hook['wait_time'] = args.wait_time
    if args.show_dir:
        cfg.visualizer['save_dir'] = args.show_dir
    return cfg


def build_config(args: argparse.Namespace) -> Config:
    """Load the config (:func:`dtop.apis.load_config`) and apply the command-line
    settings.

    Raises:
        FileNotFoundError: missing config or checkpoint file.
        OptionError: an invalid ``model.prune_threshold`` (or other pruning option).
    """
    cfg = load_config(args.config, args.cfg_options, checkpoint=args.checkpoint,
                      precision=args.precision)
    cli.apply_runner_args(cfg, args)  # launcher, work dir, checkpoint loading
    cfg.load_from = args.checkpoint
    cfg.resume = False

    if args.show or args.show_dir:
        cfg = trigger_visualization_hook(cfg, args)

    if args.tta:
        if 'tta_pipeline' not in cfg or 'tta_model' not in cfg:
            raise KeyError('--tta needs `tta_pipeline` and `tta_model` in the config '
                           '(the dataset and runtime bases define them).')
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
        cfg.tta_model.module = cfg.model
        cfg.model = cfg.tta_model

    if args.out is not None:
        evaluators = cfg.test_evaluator
        for evaluator in (evaluators if isinstance(evaluators, list) else [evaluators]):
            evaluator['output_dir'] = args.out
            evaluator['keep_results'] = True
    return cfg


def main(argv=None) -> dict:
    if launched_by_torchrun():
        die_with_parent()  # a killed torchrun must not leave a worker running
    args = parse_args(argv)
    cfg = build_config(args)
    prepare_distributed(cfg, args.launcher)
    if 'runner_type' not in cfg:
        runner = DToPRunner.from_cfg(cfg)
    else:
        runner = RUNNERS.build(cfg)
    return runner.test()


if __name__ == '__main__':
    run_cli(main)

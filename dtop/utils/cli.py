"""Command-line arguments shared by the tools: one definition (flag, help text,
parsing) for the options that several tools offer alike.

Each ``add_*`` function adds one option to an ``argparse`` parser; the help texts
are module constants so that a tool with a different wording passes its own.
:func:`apply_runner_args` applies the options of ``tools/train.py`` and
``tools/test.py`` to the Runner's config.
"""
import argparse
import os
from typing import List, Optional

from .config import CfgOptionsAction, check_work_dir, default_work_dir

#: ``--trust-checkpoint`` of the tools that read one checkpoint.
TRUST_CHECKPOINT_HELP = ('unpickle the checkpoint fully (can run code a file carries; only '
                         'for files you trust). Default: the safe loader (tensors and plain '
                         'data only)')
#: ``--trust-checkpoint`` of ``tools/train.py`` and ``tools/test.py`` (the Runner).
RUNNER_TRUST_CHECKPOINT_HELP = ('unpickle checkpoints fully (can run code a file carries; '
                                'only for files you trust). Default: the safe loader, which '
                                'rebuilds tensors and plain data only (docs/robustness.md)')
#: ``--allow-partial-load`` of the tools that evaluate a checkpoint.
PARTIAL_LOAD_HELP = ('use a checkpoint whose keys or shapes do not all match the config '
                     '(default: stop with the first mismatches)')
#: ``--cfg-options`` of most tools.
CFG_OPTIONS_HELP = 'override config settings (mmengine syntax)'


def tool_parser(description: str, doc: Optional[str] = None) -> argparse.ArgumentParser:
    """A parser whose ``--help`` ends with the examples of the tool's docstring.

    Args:
        description (str): one line on what the tool does.
        doc (str, optional): the tool's ``__doc__``; what follows its ``Examples::``
            is shown verbatim after the options. None: no epilog.
    """
    if doc is None:
        return argparse.ArgumentParser(description=description)
    return argparse.ArgumentParser(description=description,
                                   epilog=doc.split('Examples::', 1)[1],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def add_trust_checkpoint_arg(parser: argparse.ArgumentParser,
                             help: str = TRUST_CHECKPOINT_HELP) -> None:
    """``--trust-checkpoint``: full unpickling instead of the safe loader."""
    parser.add_argument('--trust-checkpoint', action='store_true', help=help)


def add_partial_load_arg(parser: argparse.ArgumentParser,
                         help: str = PARTIAL_LOAD_HELP) -> None:
    """``--allow-partial-load``: use a checkpoint that does not fit the model exactly."""
    parser.add_argument('--allow-partial-load', action='store_true', help=help)


def add_cfg_options_arg(parser: argparse.ArgumentParser, help: str = CFG_OPTIONS_HELP,
                        checked: bool = True, metavar: Optional[str] = 'KEY=VALUE') -> None:
    """``--cfg-options KEY=VALUE ...``: overrides of config settings.

    Args:
        checked (bool): parse the items on the command line
            (:class:`dtop.utils.config.CfgOptionsAction`: a dict, an item without
            ``=`` is one ``error:`` line). False: keep the raw strings (default
            ``[]``) for :func:`dtop.utils.config.parse_cfg_options` to parse later.
        metavar (str, optional): shown in ``--help``; None: argparse's default.
    """
    kwargs = dict(nargs='+', help=help)
    if metavar is not None:
        kwargs['metavar'] = metavar
    if checked:
        kwargs['action'] = CfgOptionsAction
    else:
        kwargs['default'] = []
    parser.add_argument('--cfg-options', **kwargs)


def parse_launcher_args(parser: argparse.ArgumentParser,
                        argv: Optional[List[str]] = None) -> argparse.Namespace:
    """Add the ``--local-rank`` that ``torch.distributed.launch`` passes
    (``--local-rank`` on torch >= 2.0, ``--local_rank`` before), parse ``argv``, and
    set ``LOCAL_RANK`` from it unless the launcher set it already."""
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def apply_runner_args(cfg, args: argparse.Namespace):
    """Apply the options that ``tools/train.py`` and ``tools/test.py`` share to the
    Runner's config (in place).

    Args:
        cfg (Config): the loaded config.
        args (argparse.Namespace): with ``config``, ``launcher``, ``work_dir``,
            ``allow_partial_load`` and ``trust_checkpoint``.

    Returns:
        Config: ``cfg``; its work dir by priority: ``--work-dir`` > the config's >
        ``./work_dirs/<config name>``.

    Raises:
        OptionError: the work dir cannot be a directory (:func:`check_work_dir`).
    """
    cfg.launcher = args.launcher
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = default_work_dir(args.config)
    check_work_dir(cfg.work_dir)  # a file there: one line, not FileExistsError
    if args.allow_partial_load:
        cfg.load_strict = False
    if args.trust_checkpoint:
        cfg.trust_checkpoint = True  # DToPRunner: full unpickling, announced per file
    return cfg

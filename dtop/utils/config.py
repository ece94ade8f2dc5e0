"""Generic config helpers shared by the tools (no DToP knowledge; see :mod:`dtop.apis`)."""
import argparse
import os.path as osp
from typing import Optional, Sequence, Union

from mmengine.config import DictAction

from .errors import OptionError

CfgOptions = Union[None, dict, Sequence[str]]


def parse_cfg_options(options: CfgOptions) -> Optional[dict]:
    """``--cfg-options`` as a dict for ``Config.merge_from_dict``.

    Args:
        options: what mmengine's ``DictAction`` made of the command line (a dict),
            or the raw ``KEY=VALUE`` strings (parsed with ``DictAction``, so lists,
            tuples, numbers and ``None`` are understood the same way), or None.

    Returns:
        dict | None: None when there is nothing to apply.

    Raises:
        OptionError: an item without ``=``.
    """
    if not options:
        return None
    if isinstance(options, dict):
        return dict(options)
    if isinstance(options, str):
        options = [options]
    for item in options:
        if '=' not in str(item):
            raise OptionError(f'--cfg-options: expected KEY=VALUE items, got {item!r} '
                              '(e.g. --cfg-options model.prune_threshold=0.9).')
    parser = argparse.ArgumentParser(prog='--cfg-options', add_help=False)
    parser.add_argument('--o', nargs='+', action=DictAction)
    return parser.parse_args(['--o', *[str(o) for o in options]]).o


def default_work_dir(config, prefix: str = '') -> str:
    """``./work_dirs/<prefix><config file name without .py>`` (mmseg's default).

    Args:
        config (str | Path | Config): the config file, or a Config read from one.
        prefix (str): put before the name, e.g. ``'sweep_'``.
    """
    name = osp.splitext(osp.basename(str(getattr(config, 'filename', None) or config)))[0]
    return osp.join('./work_dirs', prefix + name)

"""Generic config helpers shared by the tools (no DToP knowledge; see :mod:`dtop.apis`)."""
import argparse
import difflib
import inspect
import os.path as osp
from typing import List, Optional, Sequence, Union

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
    check_cfg_option_items(options)
    parser = argparse.ArgumentParser(prog='--cfg-options', add_help=False)
    parser.add_argument('--o', nargs='+', action=DictAction)
    return parser.parse_args(['--o', *[str(o) for o in options]]).o


def check_cfg_option_items(items: Sequence) -> None:
    """Raise :class:`OptionError` for a ``--cfg-options`` item that is not ``KEY=VALUE``
    (mmengine's ``DictAction`` fails with "not enough values to unpack")."""
    for item in items:
        key, eq, _ = str(item).partition('=')
        if not eq or not key.strip():
            raise OptionError(f'--cfg-options: expected KEY=VALUE items, got {str(item)!r} '
                              '(e.g. --cfg-options model.prune_threshold=0.9).')


class CfgOptionsAction(DictAction):
    """mmengine's ``DictAction`` for ``--cfg-options``, that names an item without
    ``=`` (:class:`OptionError`, one ``error:`` line through ``run_cli``) instead of
    failing with "not enough values to unpack"."""

    def __call__(self, parser, namespace, values, option_string=None):
        check_cfg_option_items(values if isinstance(values, (list, tuple)) else [values])
        super().__call__(parser, namespace, values, option_string)


def default_work_dir(config, prefix: str = '') -> str:
    """``./work_dirs/<prefix><config file name without .py>`` (mmseg's default).

    Args:
        config (str | Path | Config): the config file, or a Config read from one.
        prefix (str): put before the name, e.g. ``'sweep_'``.
    """
    name = osp.splitext(osp.basename(str(getattr(config, 'filename', None) or config)))[0]
    return osp.join('./work_dirs', prefix + name)


def check_work_dir(work_dir) -> str:
    """Raise :class:`OptionError` when ``work_dir`` cannot be a directory.

    It may exist (as a directory) or not (it is created later); an existing file,
    or a file where a parent folder should be, is named with the fix.

    Returns:
        str: ``work_dir``.
    """
    path = osp.abspath(osp.expanduser(str(work_dir)))
    probe = path
    while not osp.lexists(probe):
        parent = osp.dirname(probe)
        if parent == probe:
            return str(work_dir)
        probe = parent
    if osp.isdir(probe):
        return str(work_dir)
    what = 'is a file' if osp.isfile(probe) else 'exists and is not a directory'
    problem = f'{what}, not a directory' if probe == path else \
        f'cannot be created: {probe} {what}'
    raise OptionError(f'work dir {work_dir} {problem}; pass a directory path '
                      '(--work-dir DIR, created if missing) or move the file away.')


#: sub-configs of a model config that are built from the same registry
_NESTED_MODEL_KEYS = ('backbone', 'neck', 'decode_head', 'auxiliary_head',
                      'data_preprocessor', 'module', 'exit_policy')


def closed_signature_keys(cls) -> Optional[List[str]]:
    """The keyword arguments ``cls(...)`` accepts, or None when that is not known.

    A ``**kwargs`` of a class in the ``dtop`` package is followed to the base class
    (our classes forward it to ``super().__init__``); any other ``**kwargs`` makes
    the answer unknown (None).
    """
    keys: List[str] = []
    for klass in cls.__mro__:
        init = vars(klass).get('__init__')
        if init is None:
            continue
        try:
            params = list(inspect.signature(init).parameters.values())[1:]
        except (TypeError, ValueError):
            return None
        keys += [p.name for p in params if p.name not in keys and p.kind in (
            inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            return keys
        if not klass.__module__.startswith('dtop.'):
            return None
    return None


def check_constructor_keys(cfg, registry, where: str = 'model') -> None:
    """Raise :class:`OptionError` for a key the constructor of ``cfg['type']`` does
    not take (``--cfg-options model.foo=1``), instead of a ``TypeError`` traceback
    when the model is built; sub-models (backbone, heads, ...) are checked too.

    Only classes whose ``__init__`` has no ``**kwargs`` are checked (for the others
    the valid keys are not known); types the registry does not know are left to it.

    Args:
        cfg (dict): a config with ``type`` (e.g. ``cfg.model``).
        registry: the registry that builds it (e.g. ``mmseg.registry.MODELS``).
        where (str): the config path of ``cfg``, for the message.
    """
    if isinstance(cfg, (list, tuple)):
        for i, item in enumerate(cfg):
            check_constructor_keys(item, registry, f'{where}.{i}')
        return
    if not isinstance(cfg, dict) or 'type' not in cfg:
        return
    cls = cfg['type']
    if isinstance(cls, str):
        try:
            cls = registry.get(cls)
        except Exception:  # noqa: BLE001  (a bad scope etc.: the build names it)
            cls = None
    if inspect.isclass(cls):
        accepted = closed_signature_keys(cls)
        if accepted is not None:
            for key in cfg:
                if key in ('type', '_scope_') or key in accepted:
                    continue
                close = difflib.get_close_matches(str(key), accepted, n=1)
                hint = f"did you mean '{close[0]}'? " if close else ''
                raise OptionError(
                    f"{where}: {cls.__name__} got an unexpected key {key!r} (from the "
                    f"config or --cfg-options {where}.{key}=...); {hint}it takes "
                    f"{', '.join(accepted)}. Remove or rename the key.")
    for key in _NESTED_MODEL_KEYS:
        if key in cfg:
            check_constructor_keys(cfg[key], registry, f'{where}.{key}')


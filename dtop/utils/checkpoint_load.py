"""``torch.load`` that never runs a checkpoint's code, unless the file is trusted.

mmengine checkpoints pickle ``HistoryBuffer`` objects, numpy values and
``builtins.getattr``; ``torch.load(weights_only=True)`` (the default since torch
2.6) refuses them and full unpickling would run any code a file carries. Every
checkpoint the DToP tools load goes through :func:`torch_load_checkpoint`:
``torch.load`` with the restricted unpickler of :mod:`dtop.utils.safe_pickle`,
which rebuilds tensors and plain data and turns every other global into an inert
placeholder (never imported, never called). mmengine's ``CheckpointLoader`` uses
it too for local files and http(s) URLs (registered when this module is imported,
i.e. by ``import dtop``); its other schemes keep PyTorch's ``weights_only=True``
default.

Full unpickling happens only when asked for: ``--trust-checkpoint`` in the tools,
``trust_checkpoint = True`` in a config (DToPRunner), ``trust=True`` here; it is
announced in one line per file (:func:`set_trust_checkpoint`).
"""
import os
import os.path as osp
import zipfile
from typing import Optional

from .errors import CheckpointError

_TRUST = dict(enabled=False, source='')
_ANNOUNCED = set()
#: placeholders that are expected in mmengine checkpoints (the message hub's
#: HistoryBuffer, rebuilt from its data by :func:`from_plain_checkpoint`).
_EXPECTED_UNTRUSTED = {'builtins.getattr', 'mmengine.logging.history_buffer.HistoryBuffer'}


def set_trust_checkpoint(trust: bool, source: str = '--trust-checkpoint') -> None:
    """Let (``True``) or stop (``False``) checkpoints being unpickled fully.

    Full unpickling can run code a checkpoint carries; each file loaded that way
    is announced in one line.

    Args:
        trust (bool): the setting, for every later load in this process that does
            not pass ``trust`` itself.
        source (str): what asked for it, for the announcement
            (``'--trust-checkpoint'``, ``'trust_checkpoint = True (config)'``).
    """
    _TRUST['enabled'] = bool(trust)
    _TRUST['source'] = source if trust else ''


def trust_checkpoint_enabled() -> bool:
    """Whether checkpoints are unpickled fully (:func:`set_trust_checkpoint`)."""
    return _TRUST['enabled']


def _announce_trust(filename: str, source: str) -> None:
    if filename in _ANNOUNCED:
        return
    _ANNOUNCED.add(filename)
    from mmengine.logging import print_log
    print_log(f'{source}: unpickling {filename} fully; it can run code it carries '
              '(only for files you trust).', logger='current', level=30)


def _is_torchscript_archive(path: str) -> bool:
    try:
        with zipfile.ZipFile(path) as zf:
            return any(n.endswith('/constants.pkl') or n == 'constants.pkl'
                       for n in zf.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def torch_load_checkpoint(f, map_location='cpu', trust=None):
    """``torch.load`` that runs nothing a checkpoint carries (unless trusted).

    Args:
        f (str | file): a local file (or an open binary file).
        map_location: as :func:`torch.load`.
        trust (bool | str, optional): unpickle fully (announced in one line; a
            string names who asked, for that line); default:
            :func:`trust_checkpoint_enabled`.

    Returns:
        The loaded object: tensors and plain containers; every global the
        restricted unpickler does not trust is an inert
        :class:`~dtop.utils.safe_pickle.UntrustedObject` placeholder.

    Raises:
        CheckpointError: a TorchScript archive (``torch.jit.load`` would run its
            code), unless trusted.
    """
    import torch

    from . import safe_pickle
    name = f if isinstance(f, (str, os.PathLike)) else getattr(f, 'name', '<file object>')
    trust = trust_checkpoint_enabled() if trust is None else trust
    if trust:
        _announce_trust(str(name), trust if isinstance(trust, str) else
                        (_TRUST['source'] or 'trust=True'))
        return torch.load(f, map_location=map_location, weights_only=False)
    if isinstance(f, (str, os.PathLike)) and _is_torchscript_archive(str(f)):
        raise CheckpointError(
            f'cannot read checkpoint {name}: it is a TorchScript archive '
            '(torch.jit.save), whose loading runs the code it carries. Export a '
            'state dict instead, or pass --trust-checkpoint if you trust the file.')
    if os.getenv('TORCH_FORCE_WEIGHTS_ONLY_LOAD', '0').lower() in ('1', 'y', 'yes', 'true'):
        return torch.load(f, map_location=map_location, weights_only=True)
    obj = torch.load(f, map_location=map_location, pickle_module=safe_pickle,
                     weights_only=False)
    unexpected = [g for g in safe_pickle.untrusted_globals(obj)
                  if g not in _EXPECTED_UNTRUSTED]
    if unexpected:
        from mmengine.logging import print_log
        shown = ', '.join(unexpected[:5]) + (f', ... ({len(unexpected) - 5} more)'
                                             if len(unexpected) > 5 else '')
        print_log(f'checkpoint {name} names {len(unexpected)} global(s) that the safe '
                  f'loader does not rebuild ({shown}); they were neither imported nor '
                  'run and are left as inert placeholders (--trust-checkpoint unpickles '
                  'a file you trust fully).', logger='current', level=30)
    return obj


def load_from_local_safe(filename: str, map_location=None):
    """mmengine ``CheckpointLoader`` scheme for local paths (registered for ``''``):
    :func:`torch_load_checkpoint`."""
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'{filename} can not be found.')
    return torch_load_checkpoint(filename, map_location)


def load_from_http_safe(filename: str, map_location=None, model_dir: Optional[str] = None):
    """mmengine ``CheckpointLoader`` scheme for ``http://`` / ``https://``: download
    once into torch hub's cache (rank 0 first), then :func:`torch_load_checkpoint`."""
    from urllib.parse import urlparse

    import torch
    from mmengine.dist import get_dist_info

    rank, world_size = get_dist_info()
    folder = model_dir or osp.join(torch.hub.get_dir(), 'checkpoints')
    path = osp.join(folder, osp.basename(urlparse(filename).path) or 'checkpoint.pth')

    def fetch():
        if not osp.isfile(path):
            os.makedirs(folder, exist_ok=True)
            torch.hub.download_url_to_file(filename, path, progress=False)

    if rank == 0:
        fetch()
    if world_size > 1:
        torch.distributed.barrier()
        if rank > 0:
            fetch()
    return torch_load_checkpoint(path, map_location)


def register_safe_checkpoint_loaders() -> None:
    """Route mmengine's ``CheckpointLoader`` (``load_checkpoint``, ``load_from``,
    ``init_cfg=Pretrained``) through :func:`torch_load_checkpoint` for local files
    and http(s) URLs. Done when this module is imported."""
    from mmengine.runner.checkpoint import CheckpointLoader
    CheckpointLoader.register_scheme(prefixes='', loader=load_from_local_safe, force=True)
    CheckpointLoader.register_scheme(prefixes=('http://', 'https://'),
                                     loader=load_from_http_safe, force=True)


register_safe_checkpoint_loaders()

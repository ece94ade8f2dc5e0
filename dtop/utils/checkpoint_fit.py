"""Does a checkpoint fit the model? State-dict comparison and strict loading.

* :func:`check_checkpoint_fits` / :func:`load_checkpoint_strict`: a key or shape
  mismatch stops with the first mismatches and the fix
  (:class:`CheckpointMismatchError`), unless a partial load is asked for.
* :func:`summarize_partial_load`: a short report for *expected* partial loads
  (ImageNet ``init_cfg=Pretrained``).
"""
import re
from collections import OrderedDict
from typing import Dict, List, NamedTuple, Sequence, Tuple

from .checkpoint_read import read_checkpoint
from .errors import CheckpointError, CheckpointMismatchError

DEFAULT_REVISE_KEYS = ((r'^module\.', ''),)
_PARTIAL_FIX = ('--allow-partial-load (or `load_strict = False` in the config) if a '
                'partial load is what you want')


class StateDictDiff(NamedTuple):
    """How a checkpoint's state dict differs from a model's.

    Attributes:
        missing (list[str]): model keys the checkpoint lacks.
        unexpected (list[str]): checkpoint keys the model lacks.
        shape_mismatch (list[tuple]): ``(key, checkpoint shape, model shape)``.
        num_model_keys (int): keys of the model's state dict.
        num_loaded (int): keys that would load (same name and shape).
    """
    missing: List[str]
    unexpected: List[str]
    shape_mismatch: List[Tuple[str, tuple, tuple]]
    num_model_keys: int
    num_loaded: int

    @property
    def ok(self) -> bool:
        """True when every key matches in name and shape."""
        return not (self.missing or self.unexpected or self.shape_mismatch)


def _unwrap(model):
    while hasattr(model, 'module') and hasattr(model, 'forward') and \
            type(model).__name__ in ('MMDistributedDataParallel', 'DistributedDataParallel',
                                     'MMFullyShardedDataParallel', 'DataParallel',
                                     'SegTTAModel', 'DToPTTAModel'):
        model = model.module
    return model


def state_dict_of(checkpoint: dict,
                  revise_keys: Sequence[Tuple[str, str]] = DEFAULT_REVISE_KEYS) -> Dict:
    """The (key-revised) state dict of a checkpoint, as mmengine loads it."""
    sd = checkpoint.get('state_dict', checkpoint)
    if not isinstance(sd, dict):
        raise CheckpointError(f'the checkpoint\'s "state_dict" is a {type(sd).__name__}, '
                              'not a dict.')
    for pattern, repl in revise_keys:
        sd = OrderedDict((re.sub(pattern, repl, k), v) for k, v in sd.items())
    return sd


def compare_state_dict(model, state_dict: Dict) -> StateDictDiff:
    """Compare ``state_dict`` with ``model.state_dict()`` by key and shape.

    BatchNorm's ``num_batches_tracked`` is ignored when missing (as mmengine does).

    Args:
        model (nn.Module): the model (wrappers such as DDP/TTA are unwrapped).
        state_dict (dict): key -> tensor.

    Returns:
        StateDictDiff: the differences.
    """
    own = _unwrap(model).state_dict()
    missing = [k for k in own if k not in state_dict and not k.endswith('num_batches_tracked')]
    unexpected = [k for k in state_dict if k not in own]
    shapes = []
    for k, v in state_dict.items():
        if k in own and hasattr(v, 'shape') and tuple(v.shape) != tuple(own[k].shape):
            shapes.append((k, tuple(v.shape), tuple(own[k].shape)))
    loaded = sum(1 for k in own if k in state_dict) - len(shapes)
    return StateDictDiff(missing, unexpected, shapes, len(own), loaded)


def format_state_dict_diff(diff: StateDictDiff, source: str, limit: int = 5) -> str:
    """A readable summary: counts and the first ``limit`` mismatches of each kind."""
    def first(items, fmt):
        shown = [fmt(x) for x in items[:limit]]
        more = f', ... ({len(items) - limit} more)' if len(items) > limit else ''
        return ', '.join(shown) + more

    lines = [f'checkpoint {source} does not fit the model: {diff.num_loaded} of '
             f'{diff.num_model_keys} model tensors would load.']
    if diff.shape_mismatch:
        lines.append(f'  {len(diff.shape_mismatch)} shape mismatches (checkpoint vs model): '
                     + first(diff.shape_mismatch,
                             lambda x: f'{x[0]} {list(x[1])} vs {list(x[2])}'))
    if diff.missing:
        lines.append(f'  {len(diff.missing)} model keys missing from the checkpoint: '
                     + first(diff.missing, str))
    if diff.unexpected:
        lines.append(f'  {len(diff.unexpected)} checkpoint keys the model does not have: '
                     + first(diff.unexpected, str))
    return '\n'.join(lines)


def check_checkpoint_fits(model, checkpoint: dict, source: str, strict: bool = True,
                          revise_keys: Sequence[Tuple[str, str]] = DEFAULT_REVISE_KEYS,
                          logger='current') -> StateDictDiff:
    """Stop (strict) or warn (not strict) when a checkpoint does not fit ``model``.

    Args:
        model (nn.Module): the model about to receive the weights.
        checkpoint (dict): as returned by :func:`read_checkpoint`.
        source (str): the file name, for the message.
        strict (bool): raise on any key or shape mismatch. Default True.
        revise_keys: key rewrites applied before comparing (mmengine's default
            strips ``module.``).
        logger: mmengine logger (name) for the warning when not strict.

    Returns:
        StateDictDiff: the comparison.

    Raises:
        CheckpointMismatchError: strict and any mismatch; the message lists the
            first mismatches of each kind and the fix.
    """
    from mmengine.logging import print_log
    diff = compare_state_dict(model, state_dict_of(checkpoint, revise_keys))
    if diff.ok:
        return diff
    text = format_state_dict_diff(diff, source)
    if strict:
        raise CheckpointMismatchError(
            f'{text}\nFix: use the config this checkpoint was trained with (its '
            f'architecture: embed dims, layers, heads, classes), or pass {_PARTIAL_FIX}.')
    print_log(f'{text}\nPartial load allowed (load_strict=False): the tensors listed '
              'keep their initial values.', logger=logger, level=30)
    return diff


def load_checkpoint_strict(model, filename: str, strict: bool = True,
                           map_location='cpu',
                           revise_keys: Sequence[Tuple[str, str]] = DEFAULT_REVISE_KEYS,
                           logger='current', trust=None) -> dict:
    """Read ``filename`` (safely, weights checked finite), check it fits ``model``,
    then load it.

    The replacement for ``mmengine.runner.load_checkpoint(model, f, strict=False)``
    in the tools: an unreadable file or a mismatch stops with one clear message
    before any work. Also sets ``model.dataset_meta`` from the checkpoint's meta
    (as ``mmseg.apis.init_model``).

    Args:
        model (nn.Module): the model.
        filename (str): checkpoint path or URL.
        strict (bool): see :func:`check_checkpoint_fits`.
        map_location: as :func:`torch.load`.
        revise_keys: key rewrites (default strips ``module.``).
        logger: logger for warnings.
        trust (bool, optional): see :func:`read_checkpoint`.

    Returns:
        dict: the checkpoint.
    """
    from mmengine.runner.checkpoint import _load_checkpoint_to_model
    ckpt = read_checkpoint(filename, map_location, trust=trust)
    check_checkpoint_fits(model, ckpt, filename, strict, revise_keys, logger)
    _load_checkpoint_to_model(_unwrap(model), ckpt, strict=False,
                              revise_keys=list(revise_keys))
    meta = ckpt.get('meta', {}) if isinstance(ckpt.get('meta', {}), dict) else {}
    if 'dataset_meta' in meta:
        _unwrap(model).dataset_meta = meta['dataset_meta']
    return ckpt


def summarize_partial_load(module, state_dict: Dict, source: str, logger='current',
                           limit: int = 5) -> StateDictDiff:
    """Log what an *expected* partial load (ImageNet ``init_cfg=Pretrained``) left out.

    Meant for backbone ``init_weights``: call it with the state dict about to be
    loaded with ``strict=False``; it logs one INFO summary (counts and the first
    keys) instead of mmengine's unbounded list.

    Args:
        module (nn.Module): the module receiving the weights.
        state_dict (dict): the (already revised) weights.
        source (str): where they come from, for the message.
        logger: mmengine logger.
        limit (int): keys shown per kind.

    Returns:
        StateDictDiff: the comparison.
    """
    from mmengine.logging import print_log
    diff = compare_state_dict(module, state_dict)
    if diff.ok:
        print_log(f'{source}: all {diff.num_model_keys} tensors loaded.', logger=logger)
    else:
        text = format_state_dict_diff(diff, source, limit).replace(
            'does not fit the model', 'partially loaded (expected for ImageNet weights)')
        print_log(f'{text}\nThe tensors listed keep their random initialisation.',
                  logger=logger)
    return diff

"""Reading DToP configs and checking their model options (re-exported by :mod:`dtop.apis`)."""
import copy
import os.path as osp
from pathlib import Path
from typing import List, Optional, Union

from mmengine.config import Config

from .config import CfgOptions, check_constructor_keys, parse_cfg_options
from .errors import OptionError
ConfigType = Union[str, Path, Config]

#: model types whose ``module`` is the segmentor (test-time augmentation).
TTA_MODEL_TYPES = ('DToPTTAModel', 'SegTTAModel')

# ------------------------------------------------------------------------- configs
def load_config(config: ConfigType, cfg_options: CfgOptions = None, *,
                checkpoint: Optional[str] = None, precision: Optional[str] = None,
                validate: bool = True) -> Config:
    """Read a config, apply ``--cfg-options``, register DToP, check the model options.

    Args:
        config (str | Path | Config): config file, or a Config (deep-copied; the
            caller's object is not changed).
        cfg_options (dict | list[str], optional): ``--cfg-options``, see
            :func:`dtop.utils.config.parse_cfg_options`.
        checkpoint (str, optional): checked to exist (local paths; URLs are
            fetched later) before the config is read.
        precision (str, optional): sets ``model.test_cfg.precision``
            (``'fp32'``, ``'bf16'``, ``'fp16'``).
        validate (bool): check the DToP model options
            (:func:`validate_model_options`). Default True.

    Returns:
        Config: the resolved config; mmseg's default scope is set.

    Raises:
        FileNotFoundError: ``config file not found: ...`` /
            ``checkpoint not found: ...``.
        OptionError: an invalid threshold, ``k`` or exit policy (a ValueError,
            naming the value), or a model key its constructor does not take
            (:func:`~dtop.utils.config.check_constructor_keys`).
    """
    from mmengine.registry import init_default_scope

    import dtop  # noqa: F401  (registers the DToP modules for configs without custom_imports)
    if isinstance(config, Config):
        cfg = copy.deepcopy(config)
    elif isinstance(config, (str, Path)):
        if not osp.isfile(str(config)):
            raise FileNotFoundError(f'config file not found: {config} (pass the path of a '
                                    'config .py file, e.g. one under configs/)')
        cfg = None
    else:
        raise TypeError(f'config must be a file name or a Config, got {type(config).__name__}')
    if checkpoint is not None and '://' not in str(checkpoint) and \
            not osp.isfile(str(checkpoint)):
        raise FileNotFoundError(f'checkpoint not found: {checkpoint} (pass a .pth file, '
                                'e.g. WORK_DIR/iter_N.pth of a training run, or a URL)')
    if cfg is None:
        cfg = Config.fromfile(str(config))
    options = parse_cfg_options(cfg_options)
    if options:
        cfg.merge_from_dict(options)
    if precision is not None:
        cfg.model.setdefault('test_cfg', {})['precision'] = precision
    init_default_scope(cfg.get('default_scope', 'mmseg'))
    if validate:
        if isinstance(cfg.get('model', None), dict):  # unknown keys, e.g. model.foo=1
            from mmseg.registry import MODELS
            check_constructor_keys(cfg.model, MODELS)
        validate_model_options(cfg)
    return cfg


def _segmentor_cfg(cfg) -> dict:
    """``cfg.model`` (a config or a model dict), or its ``module`` for TTA wrappers."""
    model = cfg.get('model', None) if 'model' in cfg else None
    if model is None and 'backbone' in cfg:
        model = cfg
    if isinstance(model, dict) and model.get('type') in TTA_MODEL_TYPES and \
            isinstance(model.get('module'), dict):
        model = model['module']
    return model if isinstance(model, dict) else {}


def num_stages_of(model_cfg: dict) -> int:
    """Stages of a DToP model config: ``len(backbone.out_indices)``, else the
    auxiliary heads + 1."""
    out_indices = (model_cfg.get('backbone') or {}).get('out_indices')
    if isinstance(out_indices, (list, tuple)):
        return len(out_indices)
    aux = model_cfg.get('auxiliary_head') or []
    return 1 + (1 if isinstance(aux, dict) else len(aux))


def validate_model_options(cfg):
    """Check the pruning options of ``cfg.model`` where they enter (config /
    ``--cfg-options`` / CLI), with the messages of
    :func:`~dtop.models.pruning.options.validate_prune_threshold`.

    Args:
        cfg (Config | dict): a config (its ``model``; TTA wrappers are looked
            through) or a model config.

    Returns:
        ExitPolicy | None: the model's exit policy, built and bound (``.prunes``
        tells whether any stage can prune); None for models that are not DToP.

    Raises:
        OptionError: naming a NaN, string, negative or wrong-length threshold, a bad
            ``keep_topk_per_class`` or an invalid ``exit_policy``.
    """
    from dtop.models.pruning import ConfidenceThreshold, build_exit_policy
    model = _segmentor_cfg(cfg)
    keys = ('prune_threshold', 'keep_topk_per_class', 'exit_policy')
    if model.get('type') != 'DToPEncoderDecoder' and not any(k in model for k in keys):
        return None
    num_stages = num_stages_of(model)
    policy = model.get('exit_policy')
    if policy is not None:
        return build_exit_policy(copy.deepcopy(dict(policy)), num_stages)
    # bind() validates the threshold (validate_prune_threshold's messages name the value)
    return ConfidenceThreshold(model.get('prune_threshold', 1.0),
                               model.get('keep_topk_per_class', 5)).bind(num_stages)


def set_prune_threshold(cfg, value) -> List[Optional[float]]:
    """Set ``p0`` of the model in ``cfg`` (e.g. a tool's ``--threshold``), checked.

    Sets ``model.prune_threshold``, or ``p0`` of a ``ConfidenceThreshold``
    ``exit_policy``.

    Args:
        cfg (Config): the config (changed in place).
        value: one number for every auxiliary stage, a list, or None.

    Returns:
        list[float | None]: the thresholds per auxiliary stage.

    Raises:
        OptionError: an invalid value, or a config whose exit policy has no ``p0``.
    """
    from dtop.models.pruning import validate_prune_threshold
    model = _segmentor_cfg(cfg)
    thresholds = validate_prune_threshold(value, num_stages_of(model))
    policy = model.get('exit_policy')
    if policy is None:
        model['prune_threshold'] = value
    elif str(policy.get('type')).split('.')[-1] == 'ConfidenceThreshold':
        policy['p0'] = value
    else:
        raise OptionError(f'prune_threshold: the model uses exit_policy {policy.get("type")!r}, '
                          'which has no threshold; remove model.exit_policy to use p0.')
    return thresholds

"""Checkpoint loading that never runs a checkpoint's code, and checks what it loads.

The public names of the checkpoint helpers, one concept per module:

* :mod:`~dtop.utils.checkpoint_load`: **safe unpickling**. Every checkpoint the
  DToP tools load goes through :func:`torch_load_checkpoint` (``torch.load`` with
  the restricted unpickler of :mod:`dtop.utils.safe_pickle`: tensors and plain
  data are rebuilt, every other global is an inert placeholder). mmengine's
  ``CheckpointLoader`` uses it too for local files and http(s) URLs (registered
  when this module is imported, i.e. by ``import dtop``). Full unpickling happens
  only when asked for (``--trust-checkpoint``, ``trust_checkpoint = True``,
  ``trust=True``; :func:`set_trust_checkpoint`) and is announced per file.
* :mod:`~dtop.utils.checkpoint_plain`: our own checkpoints hold plain data only
  (:func:`to_plain_checkpoint`), so ``--resume`` restores everything
  (:func:`from_plain_checkpoint`) without full unpickling.
* :mod:`~dtop.utils.checkpoint_read`: :func:`read_checkpoint`, a one-line
  :class:`CheckpointError` naming the file and what is wrong (missing, empty,
  truncated, garbage, not a dict; :func:`diagnose_checkpoint_file`).
* :mod:`~dtop.utils.nonfinite`: :class:`NonFiniteError` naming the first NaN/Inf
  weights (:func:`check_finite_weights`).
* :mod:`~dtop.utils.checkpoint_fit`: :func:`check_checkpoint_fits` /
  :func:`load_checkpoint_strict` stop on a key or shape mismatch with the first
  mismatches and the fix (:class:`CheckpointMismatchError`), unless a partial load
  is asked for; :func:`summarize_partial_load` reports *expected* partial loads
  (ImageNet ``init_cfg=Pretrained``).
* :mod:`~dtop.utils.checkpoint_resume`: :func:`find_resumable_checkpoint`, the
  newest complete checkpoint of the work directory for ``--resume``.

Nothing lost, nothing silently wrong: docs/robustness.md.
"""
from .checkpoint_fit import (DEFAULT_REVISE_KEYS, StateDictDiff, check_checkpoint_fits,
                             compare_state_dict, format_state_dict_diff,
                             load_checkpoint_strict, state_dict_of, summarize_partial_load)
from .checkpoint_load import (load_from_http_safe, load_from_local_safe,
                              register_safe_checkpoint_loaders, set_trust_checkpoint,
                              torch_load_checkpoint, trust_checkpoint_enabled)
from .checkpoint_plain import from_plain_checkpoint, to_plain_checkpoint
from .checkpoint_read import diagnose_checkpoint_file, read_checkpoint
from .checkpoint_resume import find_resumable_checkpoint
from .nonfinite import check_finite_weights, describe_non_finite, non_finite_tensors

__all__ = [
    'set_trust_checkpoint', 'trust_checkpoint_enabled', 'torch_load_checkpoint',
    'load_from_local_safe', 'load_from_http_safe', 'register_safe_checkpoint_loaders',
    'to_plain_checkpoint', 'from_plain_checkpoint', 'diagnose_checkpoint_file',
    'read_checkpoint', 'non_finite_tensors', 'describe_non_finite',
    'check_finite_weights', 'DEFAULT_REVISE_KEYS', 'StateDictDiff', 'state_dict_of',
    'compare_state_dict', 'format_state_dict_diff', 'check_checkpoint_fits',
    'load_checkpoint_strict', 'summarize_partial_load', 'find_resumable_checkpoint'
]

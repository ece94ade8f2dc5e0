"""Checkpoint loading under torch >= 2.6 (``torch.load(weights_only=True)``).

mmengine checkpoints pickle ``HistoryBuffer`` objects, numpy scalars and message-hub
state, and mmengine 0.10.7 calls ``torch.load`` without ``weights_only``. Under
torch >= 2.6 that fails (``UnpicklingError: Weights only load failed``) for
``--resume`` and ``load_from``. An allow-list is not enough (it would need
``builtins.getattr``, which defeats the point), so the DToP tools opt back into
full unpickling for the checkpoints they load.

Security trade-off: full unpickling can run code embedded in a checkpoint. Only
load checkpoints you trust (your own training runs, official releases). The
switch is the documented ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` variable; set it to
``0`` yourself to keep PyTorch's safe default (then resume/load_from of mmengine
checkpoints will fail).
"""
import os

_ENV = 'TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD'


def allow_full_checkpoint_unpickling() -> bool:
    """Let ``torch.load`` unpickle mmengine checkpoints (see module docstring).

    Respects an explicit user setting of ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``.

    Returns:
        bool: whether full unpickling is now enabled.
    """
    os.environ.setdefault(_ENV, '1')
    return os.environ[_ENV] not in ('0', '', 'false', 'False')

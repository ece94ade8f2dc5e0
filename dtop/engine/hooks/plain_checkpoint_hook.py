"""Write checkpoints that hold plain data only, so that loading them needs no code.

mmengine pickles the message hub's ``HistoryBuffer`` objects and numpy values;
reading those back needs full unpickling (or ``builtins.getattr`` allowed).
:class:`PlainCheckpointHook` (registered by DToPRunner, lowest priority, i.e. after
every other ``before_save_checkpoint``) replaces them by tensors, lists and floats
(:func:`dtop.utils.checkpoint.to_plain_checkpoint`); DToPRunner's loading restores
them (:func:`~dtop.utils.checkpoint.from_plain_checkpoint`), so ``--resume``
restores the message hub too. The checkpoints load with
``torch.load(weights_only=True)``.
"""
from mmengine.hooks import Hook
from mmseg.registry import HOOKS

from dtop.utils.checkpoint import to_plain_checkpoint


@HOOKS.register_module()
class PlainCheckpointHook(Hook):
    """Turn a checkpoint's ``HistoryBuffer`` / numpy values into plain data."""

    priority = 'LOWEST'

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        plain = to_plain_checkpoint(checkpoint)
        if plain is not checkpoint:
            checkpoint.clear()
            checkpoint.update(plain)

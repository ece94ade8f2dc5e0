"""Training/test hooks."""
from .atomic_checkpoint_hook import AtomicCheckpointHook
from .nonfinite_guard_hook import NonFiniteGuardHook
from .plain_checkpoint_hook import PlainCheckpointHook
from .prune_stats_hook import PruneStatsHook

__all__ = ['AtomicCheckpointHook', 'NonFiniteGuardHook', 'PlainCheckpointHook',
           'PruneStatsHook']

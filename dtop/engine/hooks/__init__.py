"""Training/test hooks."""
from .atomic_checkpoint_hook import AtomicCheckpointHook
from .prune_stats_hook import PruneStatsHook

__all__ = ['AtomicCheckpointHook', 'PruneStatsHook']

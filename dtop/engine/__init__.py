"""Engine components (hooks, the runner)."""
from .hooks import AtomicCheckpointHook, PruneStatsHook
from .runner import DToPRunner

__all__ = ['AtomicCheckpointHook', 'DToPRunner', 'PruneStatsHook']

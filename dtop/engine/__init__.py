"""Engine components (hooks)."""
from .hooks import PruneStatsHook

__all__ = ['PruneStatsHook']

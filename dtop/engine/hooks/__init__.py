"""Training/test hooks."""
from .prune_stats_hook import PruneStatsHook

__all__ = ['PruneStatsHook']

"""Training/test hooks."""
from .atomic_checkpoint_hook import AtomicCheckpointHook
from .mask_annealing_hook import MaskAnnealingHook, mask_prob
from .nonfinite_guard_hook import NonFiniteGuardHook
from .plain_checkpoint_hook import PlainCheckpointHook
from .prune_stats_hook import PruneStatsHook

__all__ = ['AtomicCheckpointHook', 'MaskAnnealingHook', 'NonFiniteGuardHook',
           'PlainCheckpointHook', 'PruneStatsHook', 'mask_prob']

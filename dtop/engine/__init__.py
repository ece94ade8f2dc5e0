"""Engine components (hooks, optimizer wrappers, the runner)."""
from .hooks import (AtomicCheckpointHook, NonFiniteGuardHook, PlainCheckpointHook,
                    PruneStatsHook)
from .layer_decay import TwoStageWarmupPolyLR, ViTLayerDecayOptimWrapperConstructor
from .optim_wrappers import NonFiniteGuardAmpOptimWrapper, NonFiniteGuardOptimWrapper
from .runner import DToPRunner

__all__ = ['AtomicCheckpointHook', 'DToPRunner', 'NonFiniteGuardAmpOptimWrapper',
           'NonFiniteGuardHook', 'NonFiniteGuardOptimWrapper', 'PlainCheckpointHook',
           'PruneStatsHook', 'TwoStageWarmupPolyLR', 'ViTLayerDecayOptimWrapperConstructor']

from .options import validate_prune_threshold
from .policies import (ConfidenceThreshold, ExitPolicy, FixedKeepRatio, RandomExit,
                       build_exit_policy)
from .rule import select_exits, select_exits_packed

__all__ = ['ConfidenceThreshold', 'ExitPolicy', 'FixedKeepRatio', 'RandomExit',
           'build_exit_policy', 'select_exits', 'select_exits_packed',
           'validate_prune_threshold']

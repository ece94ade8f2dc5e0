from .checkpoint import allow_full_checkpoint_unpickling

__all__ = ['allow_full_checkpoint_unpickling']

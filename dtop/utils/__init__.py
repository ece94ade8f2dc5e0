from .checkpoint import set_trust_checkpoint, torch_load_checkpoint

__all__ = ['set_trust_checkpoint', 'torch_load_checkpoint']

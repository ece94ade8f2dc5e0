from .atm_prune_head import ATMPruneHead

__all__ = ['ATMPruneHead']

from .atm_loss import ATMLoss

__all__ = ['ATMLoss']

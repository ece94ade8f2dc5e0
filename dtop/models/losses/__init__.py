from .atm_loss import ATMLoss
from .mask_classification_loss import MaskClassificationLoss, semantic_to_mask_targets

__all__ = ['ATMLoss', 'MaskClassificationLoss', 'semantic_to_mask_targets']

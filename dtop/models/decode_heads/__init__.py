from .atm_prune_head import ATMPruneHead
from .segmenter_head import DToPSegmenterMaskHead
from .setr_head import DToPSETRUPHead

__all__ = ['ATMPruneHead', 'DToPSETRUPHead', 'DToPSegmenterMaskHead']

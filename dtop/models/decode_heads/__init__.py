from .atm_prune_head import ATMPruneHead
from .eomt_head import EoMTHead
from .segmenter_head import DToPSegmenterMaskHead
from .setr_head import DToPSETRUPHead
from .stage_head import HeadOutput, StageHead, StageHeadMixin, TokenGrid, is_stage_head

__all__ = ['ATMPruneHead', 'EoMTHead', 'DToPSETRUPHead', 'DToPSegmenterMaskHead', 'HeadOutput',
           'StageHead', 'StageHeadMixin', 'TokenGrid', 'is_stage_head']

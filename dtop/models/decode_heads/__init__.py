from .atm_prune_head import ATMPruneHead
from .segmenter_head import DToPSegmenterMaskHead
from .setr_head import DToPSETRUPHead
from .stage_head import HeadOutput, StageHead, StageHeadMixin, is_stage_head

__all__ = ['ATMPruneHead', 'DToPSETRUPHead', 'DToPSegmenterMaskHead', 'HeadOutput',
           'StageHead', 'StageHeadMixin', 'is_stage_head']

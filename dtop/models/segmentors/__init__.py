from .dtop_encoder_decoder import DToPEncoderDecoder, StageOutputs
from .tta import DToPTTAModel  # noqa: F401  (issue 11: TTA keeps every pass's stats)

__all__ = ['DToPEncoderDecoder', 'StageOutputs']

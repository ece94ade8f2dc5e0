from .dtop_encoder_decoder import DToPEncoderDecoder
from .stage_loop import StageOutputs, run_stage_loop
from .tta import DToPTTAModel

__all__ = ['DToPEncoderDecoder', 'DToPTTAModel', 'StageOutputs', 'run_stage_loop']

from .dtop_encoder_decoder import DToPEncoderDecoder, StageOutputs

__all__ = ['DToPEncoderDecoder', 'StageOutputs']

"""Weight converters from other libraries' checkpoints to DToP backbone keys."""
from .dinov2 import (ConversionError, MissingPackageError, convert_hf_dinov2,
                     convert_hf_layer, convert_timm_dinov2, describe_dinov2,
                     resample_patch_embed)

__all__ = ['ConversionError', 'MissingPackageError', 'convert_hf_dinov2', 'convert_hf_layer',
           'convert_timm_dinov2', 'describe_dinov2', 'resample_patch_embed']

from .dinov2 import DToPDinov2
from .dtop_vit import DToPVisionTransformer

__all__ = ['DToPVisionTransformer', 'DToPDinov2']

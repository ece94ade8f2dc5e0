from .dtop_vit import DToPVisionTransformer

__all__ = ['DToPVisionTransformer']

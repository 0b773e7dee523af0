from .flora_convnextv2 import ARCHS, FLoRAConvNeXtV2

__all__ = ['ARCHS', 'FLoRAConvNeXtV2']

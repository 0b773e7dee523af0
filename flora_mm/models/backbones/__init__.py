from .flora_convnextv2 import ARCHS, FLoRAConvNeXtV2
from .flora_internvit import FLoRAInternViT

__all__ = ['ARCHS', 'FLoRAConvNeXtV2', 'FLoRAInternViT']

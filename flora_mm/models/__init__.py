"""OpenMMLab models of flora_mm (registered in ``flora_mm.registry.MODELS``)."""
from .backbones import FLoRAConvNeXtV2, FLoRAInternViT

__all__ = ['FLoRAConvNeXtV2', 'FLoRAInternViT']

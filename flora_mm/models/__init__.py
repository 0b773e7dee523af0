"""OpenMMLab models of flora_mm (registered in ``flora_mm.registry.MODELS``)."""
from .backbones import FLoRAConvNeXtV2

__all__ = ['FLoRAConvNeXtV2']

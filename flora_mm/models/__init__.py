"""OpenMMLab models of flora_mm (registered in ``flora_mm.registry.MODELS``)."""
from ..stack import require

require('timm', part='flora_mm.models (timm backbones)')

from .backbones import FLoRAConvNeXtV2, FLoRAInternViT  # noqa: E402  (after the version check)

__all__ = ['FLoRAConvNeXtV2', 'FLoRAInternViT']

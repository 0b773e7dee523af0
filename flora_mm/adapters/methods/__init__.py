"""The built-in adapter methods, one module each; importing a module registers its method."""
# isort: off  (registration order is the order in which methods are listed)
from .flora import FLoRALayer
from .lora import LoRALayer
from .dora import DoRALayer
# isort: on

__all__ = ['DoRALayer', 'FLoRALayer', 'LoRALayer']

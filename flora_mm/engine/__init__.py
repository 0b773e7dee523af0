"""Runner-side parts of flora_mm: hooks, optimizer wrappers and constructors (registered on
import)."""
from .hooks import AdapterAnalysisHook, FLoRAHook
from .optimizers import AmpOptimWrapper, LayerDecayOptimizerConstructor

__all__ = [
    'AdapterAnalysisHook', 'AmpOptimWrapper', 'FLoRAHook', 'LayerDecayOptimizerConstructor'
]

from .adapter_analysis_hook import AdapterAnalysisHook
from .adapter_checkpoint_hook import AdapterCheckpointHook
from .flora_hook import FLoRAHook

__all__ = ['AdapterAnalysisHook', 'AdapterCheckpointHook', 'FLoRAHook']

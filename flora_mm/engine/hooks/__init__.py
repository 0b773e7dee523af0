from .adapter_analysis_hook import AdapterAnalysisHook
from .adapter_checkpoint_hook import AdapterCheckpointHook
from .flora_hook import FLoRAHook
from .utils import unwrap_model

__all__ = ['AdapterAnalysisHook', 'AdapterCheckpointHook', 'FLoRAHook', 'unwrap_model']

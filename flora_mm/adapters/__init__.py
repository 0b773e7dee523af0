"""Pure-PyTorch adapters for frozen N-d weights: FLoRA (Tucker core space), LoRA and DoRA.

No OpenMMLab imports: works on any ``nn.Module`` (timm, torchvision, mmdet, ...).
"""
from .adapt import AdaptReport, adapt_model, param_table
from .budget import count_adapter_params, layer_param_count, solve_rank
from .inject import adapter_layers, cast_frozen_weights, freeze_base, inject_adapters, \
    merge_adapters, parse_adapter_cfg, select_layers, set_forward_mode, unmerge_adapters
from .io import ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, adapter_state_dict, \
    atomic_write, load_adapter_state_dict, load_adapters, save_adapters
from .layers import ADAPTER_METHODS, FORWARD_MODES, AdapterLayer, DoRALayer, FLoRALayer, \
    LoRALayer
from .tucker import mode_product, tucker_conv, tucker_to_tensor

__all__ = [
    'ADAPTER_CONFIG_NAME', 'ADAPTER_METHODS', 'ADAPTER_WEIGHTS_NAME', 'FORWARD_MODES',
    'AdaptReport', 'AdapterLayer', 'DoRALayer', 'FLoRALayer', 'LoRALayer', 'adapt_model',
    'adapter_layers', 'adapter_state_dict', 'atomic_write', 'cast_frozen_weights',
    'count_adapter_params', 'freeze_base', 'inject_adapters', 'layer_param_count',
    'load_adapter_state_dict', 'load_adapters', 'merge_adapters', 'mode_product', 'param_table',
    'parse_adapter_cfg', 'save_adapters', 'select_layers', 'set_forward_mode', 'solve_rank',
    'tucker_conv', 'tucker_to_tensor', 'unmerge_adapters',
]

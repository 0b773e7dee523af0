"""Pure-PyTorch adapters for frozen N-d weights: FLoRA (Tucker core space), LoRA, DoRA, LoHa,
LoKr and any method registered with :func:`register_adapter` (see ``methods/``).

No OpenMMLab imports: works on any ``nn.Module`` (timm, torchvision, mmdet, ...).
"""
from .adapt import AdaptReport, adapt_model, param_table
from .budget import count_adapter_params, layer_param_count, solve_rank
from .cost import FORWARD_MODES, Cost
from .inject import adapter_layers, cast_frozen_weights, freeze_base, inject_adapters, \
    merge_adapters, parse_adapter_cfg, select_layers, set_forward_mode, unmerge_adapters
from .io import ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, adapter_state_dict, \
    atomic_write, load_adapter_state_dict, load_adapters, save_adapters
from .layers import ALPHA, AdapterLayer, Option, boolean, finite_number, positive_int
from .methods.dora import DoRALayer
from .methods.flora import FLoRALayer
from .methods.lora import LoRALayer
from .registry import ADAPTER_METHODS, ADAPTERS_POLICY, POLICY_METHODS, SHARED_KEYS, \
    adapter_method, register_adapter
from .tucker import mode_product, tucker_conv, tucker_to_tensor

__all__ = [
    'ADAPTER_CONFIG_NAME', 'ADAPTER_METHODS', 'ADAPTER_WEIGHTS_NAME', 'ADAPTERS_POLICY', 'ALPHA',
    'FORWARD_MODES', 'POLICY_METHODS', 'SHARED_KEYS', 'AdaptReport', 'AdapterLayer', 'Cost',
    'DoRALayer', 'FLoRALayer', 'LoRALayer', 'Option', 'adapt_model', 'adapter_layers',
    'adapter_method', 'adapter_state_dict', 'atomic_write', 'boolean', 'cast_frozen_weights',
    'count_adapter_params', 'finite_number', 'freeze_base', 'inject_adapters',
    'layer_param_count', 'load_adapter_state_dict', 'load_adapters', 'merge_adapters',
    'mode_product', 'param_table', 'parse_adapter_cfg', 'positive_int', 'register_adapter',
    'save_adapters', 'select_layers', 'set_forward_mode', 'solve_rank', 'tucker_conv',
    'tucker_to_tensor', 'unmerge_adapters',
]

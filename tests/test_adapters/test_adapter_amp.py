"""Mixed precision: autocast bfloat16 on CPU."""
import pytest
import torch
import torch.nn as nn

from flora_mm.adapters import adapter_layers, inject_adapters, set_forward_mode

from .helpers import randomize_adapters


def _model():
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.GELU(),
                         nn.Conv2d(16, 16, 5, padding=2, groups=16),
                         nn.Conv2d(16, 16, 3, padding=1, groups=4), nn.Flatten(1),
                         nn.Linear(16 * 64, 10))


@pytest.mark.parametrize('method', ['FLoRA', 'LoRA', 'DoRA'])
@pytest.mark.parametrize('mode', ['factorized', 'merged', 'auto'])
def test_autocast_bfloat16(method, mode):
    torch.manual_seed(0)
    model = _model()
    inject_adapters(model, {'type': method, 'rank': 4, 'forward_mode': mode})
    for layer in adapter_layers(model).values():
        randomize_adapters(layer, std=0.1)
    x = torch.randn(4, 3, 8, 8)
    reference = model(x).detach()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = model(x)
    assert out.dtype == torch.bfloat16
    out.float().square().mean().backward()
    scale = reference.abs().max()
    assert (out.float() - reference).abs().max() < 0.05 * scale
    for layer in adapter_layers(model).values():
        for name, param in layer.adapter_named_parameters():
            assert param.dtype == torch.float32, name
            assert param.grad is not None and param.grad.dtype == torch.float32, name


def test_half_precision_base_weights_keep_fp32_adapters():
    model = _model().to(torch.bfloat16)
    inject_adapters(model, {'type': 'FLoRA', 'rank': 4})
    for layer in adapter_layers(model).values():
        assert layer.flora_core.dtype == torch.float32
        randomize_adapters(layer, std=0.1)
    x = torch.randn(2, 3, 8, 8, dtype=torch.bfloat16)
    for mode in ('factorized', 'merged'):
        set_forward_mode(model, mode)
        out = model(x)
        assert out.dtype == torch.bfloat16
        out.float().sum().backward()

"""LoRA (paper eq. 3) and DoRA against independent formulas."""
import pytest
import torch
import torch.nn as nn

from flora_mm.adapters import count_adapter_params, inject_adapters, merge_adapters, \
    unmerge_adapters
from flora_mm.adapters.budget import layer_param_count

from .helpers import assert_close, make_case, randomize_adapters, reference_forward

CASES = ['linear', 'conv1d', 'conv2d', 'conv2d_grouped', 'conv2d_depthwise', 'conv2d_strided',
         'conv2d_reflect', 'conv2d_dilated', 'conv3d']
ALPHA = 6.0


def _inject(name, method):
    layer, x, rank, _ = make_case(name)
    w0 = layer.weight.detach().clone()
    plain = reference_forward(layer, x, w0).detach()
    inject_adapters(layer, {'type': method, 'rank': rank, 'alpha': ALPHA})
    return layer, x, rank, w0, plain


def _lora_delta(a, b, rank, shape):
    """Eq. 3: reshape(B A) to the weight shape, scaled by alpha / rank."""
    return (ALPHA / rank) * (b @ a).reshape(shape)


@pytest.mark.parametrize('name', CASES)
def test_lora_matches_reshaped_matrix_product(name):
    layer, x, rank, w0, plain = _inject(name, 'LoRA')
    r = min(rank, w0.shape[0], w0[0].numel())
    assert layer.lora_A.shape == (r, w0[0].numel()) and layer.lora_B.shape == (w0.shape[0], r)
    assert torch.equal(layer(x), plain)  # B = 0 at init
    randomize_adapters(layer)
    delta = _lora_delta(layer.lora_A.detach(), layer.lora_B.detach(), rank, w0.shape)
    assert_close(layer.delta_weight(), delta)
    expected = reference_forward(layer, x, w0 + delta)
    for mode in ('factorized', 'merged', 'auto'):
        layer.forward_mode = mode
        assert_close(layer(x), expected)
    assert count_adapter_params(layer)['total'] == r * (w0[0].numel() + w0.shape[0])
    assert layer_param_count(tuple(w0.shape), 'LoRA', rank) == r * (w0[0].numel() + w0.shape[0])


@pytest.mark.parametrize('name', CASES)
def test_dora_matches_magnitude_direction_formula(name):
    layer, x, rank, w0, plain = _inject(name, 'DoRA')
    norm0 = w0.flatten(1).norm(dim=1)
    torch.testing.assert_close(layer.dora_magnitude.detach(), norm0)
    for mode in ('factorized', 'merged'):
        layer.forward_mode = mode
        assert_close(layer(x), plain, rtol=1e-5)  # W = W0 at init
    randomize_adapters(layer)
    direction = w0 + _lora_delta(layer.dora_A.detach(), layer.dora_B.detach(), rank, w0.shape)
    view = (-1,) + (1,) * (w0.dim() - 1)
    effective = layer.dora_magnitude.detach().reshape(view) * direction / \
        direction.flatten(1).norm(dim=1).reshape(view)
    assert_close(layer.delta_weight(), effective - w0)
    expected = reference_forward(layer, x, effective)
    for mode in ('factorized', 'merged', 'auto'):
        layer.forward_mode = mode
        assert_close(layer(x), expected)
    r = layer.dora_A.shape[0]
    assert count_adapter_params(layer)['total'] == r * (w0[0].numel() + w0.shape[0]) + w0.shape[0]


@pytest.mark.parametrize('mode', ['factorized', 'merged'])
@pytest.mark.parametrize('name', ['linear', 'conv2d_grouped'])
def test_dora_gradients_detach_norm(mode, name):
    """Gradients equal those of the DoRA formula with ||V||_c detached (DoRA paper 4.3)."""
    layer, x, rank, _ = make_case(name)
    w0 = layer.weight.detach().clone()
    inject_adapters(layer, {'type': 'DoRA', 'rank': rank, 'alpha': ALPHA, 'forward_mode': mode})
    randomize_adapters(layer)
    layer(x).square().sum().backward()
    assert layer.weight.grad is None
    a, b, m = (layer.dora_A.detach().requires_grad_(), layer.dora_B.detach().requires_grad_(),
               layer.dora_magnitude.detach().requires_grad_())
    direction = w0 + _lora_delta(a, b, rank, w0.shape)
    view = (-1,) + (1,) * (w0.dim() - 1)
    norm = direction.flatten(1).norm(dim=1).detach().reshape(view)
    reference_forward(layer, x, m.reshape(view) * direction / norm).square().sum().backward()
    for ref, param in ((a, layer.dora_A), (b, layer.dora_B), (m, layer.dora_magnitude)):
        assert ref.grad.abs().sum() > 0
        assert_close(param.grad, ref.grad, rtol=1e-4)


@pytest.mark.parametrize('method', ['FLoRA', 'LoRA', 'DoRA'])
def test_merge_unmerge_round_trip(method):
    model = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.Conv2d(8, 8, 5, padding=2, groups=8),
                          nn.Conv2d(8, 8, 3, padding=1, groups=2), nn.Flatten(1),
                          nn.Linear(8 * 36, 5))
    x = torch.randn(2, 4, 6, 6)
    cfg = {'type': method, 'rank': 3}
    layers = inject_adapters(model, cfg)
    weights0 = {n: m.weight.detach().clone() for n, m in layers.items()}
    for layer in layers.values():
        randomize_adapters(layer)
    with torch.no_grad():
        expected = model(x)
        merge_adapters(model)
        merged_weights = {n: m.weight.detach().clone() for n, m in layers.items()}
        merge_adapters(model)  # idempotent
        for n, m in layers.items():
            assert torch.equal(m.weight, merged_weights[n])
            assert_close(m.weight, weights0[n] + m.delta_weight(), rtol=1e-5)
        assert_close(model(x), expected, rtol=1e-5)
        unmerge_adapters(model)
        unmerge_adapters(model)  # idempotent
        for n, m in layers.items():
            assert_close(m.weight, weights0[n], rtol=1e-5)
        assert_close(model(x), expected, rtol=1e-5)


@pytest.mark.parametrize('name', ['linear', 'conv2d'])
def test_dora_all_zero_output_channel(name):
    """A base weight with an all-zero output channel (m = 0, ||V||_c = 0) gives no NaN: the
    channel stays exactly dead (bias only) through training, merging and unmerging."""
    layer, x, rank, _ = make_case(name)
    with torch.no_grad():
        layer.weight[1] = 0
    w0 = layer.weight.detach().clone()
    plain = reference_forward(layer, x, w0).detach()
    inject_adapters(layer, {'type': 'DoRA', 'rank': rank, 'alpha': ALPHA})
    assert layer.dora_magnitude[1] == 0
    opt = torch.optim.SGD([p for _, p in layer.adapter_named_parameters()], lr=0.1)
    for mode in ('factorized', 'merged', 'factorized'):
        layer.forward_mode = mode
        out = layer(x)
        assert torch.isfinite(out).all()
        opt.zero_grad()
        out.square().mean().backward()
        assert all(torch.isfinite(p.grad).all() for _, p in layer.adapter_named_parameters())
        opt.step()
    channel = (slice(None), 1) if name != 'linear' else (..., 1)
    with torch.no_grad():
        trained = layer(x)
        assert torch.equal(trained[channel], plain[channel])  # the bias alone
        assert not torch.allclose(trained, plain)  # the other channels did train
        layer.merge()
        assert torch.isfinite(layer.weight).all() and not layer.weight[1].any()
        assert_close(layer(x), trained, rtol=1e-5)
        layer.unmerge()
        assert_close(layer.weight, w0, rtol=1e-5)
        assert not layer.weight[1].any()

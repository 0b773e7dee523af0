"""Mixed precision on CPU: autocast bfloat16 and frozen base weights stored in bfloat16.

Outputs are compared with float64 references (helpers.reference_weight) through
helpers.assert_adapted_close, with adapters strong enough (helpers.strengthen_adapters) that the
comparison would see a missing or wrong adapter at the tolerance of the reduced precision."""
import pytest
import torch
import torch.nn as nn

from flora_mm.adapters import adapter_layers, adapter_state_dict, cast_frozen_weights, \
    inject_adapters, load_adapters, merge_adapters, save_adapters, set_forward_mode, \
    unmerge_adapters

from .helpers import assert_adapted_close, randomize_adapters, reference_weight, \
    strengthen_adapters


def _model():
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.GELU(),
                         nn.Conv2d(16, 16, 5, padding=2, groups=16),
                         nn.Conv2d(16, 16, 3, padding=1, groups=4), nn.Flatten(1),
                         nn.Linear(16 * 64, 10))


# bfloat16 keeps 8 significant bits: a few rounding errors per layer over the model's 4 layers
BF16_TOL = 0.05


def _strengthen(model):
    for layer in adapter_layers(model).values():
        strengthen_adapters(layer)


@pytest.mark.parametrize('method', ['FLoRA', 'LoRA', 'DoRA'])
@pytest.mark.parametrize('mode', ['factorized', 'merged', 'auto'])
def test_autocast_bfloat16(method, mode):
    torch.manual_seed(0)
    model = _model()
    inject_adapters(model, {'type': method, 'rank': 4, 'forward_mode': mode})
    _strengthen(model)
    x = torch.randn(4, 3, 8, 8)
    expected = _reference_model(model)(x.double())
    base = _reference_model(model, adapted=False)(x.double())
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = model(x)
    assert out.dtype == torch.bfloat16
    assert_adapted_close(out.double(), expected, base, rtol=BF16_TOL)
    out.float().square().mean().backward()
    for layer in adapter_layers(model).values():
        for name, param in layer.adapter_named_parameters():
            assert param.dtype == torch.float32, name
            assert param.grad is not None and param.grad.dtype == torch.float32, name


def test_half_precision_base_weights_keep_fp32_adapters():
    model = _model().to(torch.bfloat16)
    inject_adapters(model, {'type': 'FLoRA', 'rank': 4})
    for layer in adapter_layers(model).values():
        assert layer.flora_core.dtype == torch.float32
    _strengthen(model)
    x = torch.randn(2, 3, 8, 8, dtype=torch.bfloat16)
    expected = _reference_model(model)(x.double())
    base = _reference_model(model, adapted=False)(x.double())
    for mode in ('factorized', 'merged'):
        set_forward_mode(model, mode)
        model.zero_grad()
        out = model(x)
        assert out.dtype == torch.bfloat16
        assert_adapted_close(out.double(), expected, base, rtol=BF16_TOL)
        out.float().sum().backward()
        for layer in adapter_layers(model).values():
            assert layer.flora_core.grad.dtype == torch.float32
            assert layer.flora_core.grad.abs().sum() > 0


# ------------------------------------------------------------------ float64 references
def _reference_model(model, adapted=True):
    """A float64 plain copy of ``model`` whose adapted layers carry the reference weight built
    on the layer's CURRENT (possibly bfloat16-rounded) base weight (that base weight alone for
    ``adapted=False``)."""
    layers = adapter_layers(model)
    ref = _model().double()
    plain = dict(ref.named_modules())
    for name, module in model.named_modules():
        if name in layers:
            w0 = module.weight.detach().double()
            plain[name].weight.data = reference_weight(module, w0) if adapted else w0
            plain[name].bias.data = module.bias.detach().double()
        elif isinstance(module, (nn.Conv2d, nn.Linear)):
            plain[name].load_state_dict({k: v.double() for k, v in module.state_dict().items()})
    return ref


def _adapted(method, mode='auto'):
    torch.manual_seed(0)
    model = _model()
    inject_adapters(model, {'type': method, 'rank': 4, 'kernel_rank': 2, 'forward_mode': mode}
                    if method == 'FLoRA' else {'type': method, 'rank': 4, 'forward_mode': mode})
    _strengthen(model)
    return model


@pytest.mark.parametrize('method', ['FLoRA', 'LoRA', 'DoRA'])
@pytest.mark.parametrize('mode', ['factorized', 'merged', 'auto'])
def test_bf16_frozen_weights_against_float64(method, mode):
    model = _adapted(method, mode)
    assert cast_frozen_weights(model, 'bfloat16') == sum(
        layer.weight.numel() + layer.bias.numel() for layer in adapter_layers(model).values())
    for layer in adapter_layers(model).values():
        assert layer.weight.dtype == layer.bias.dtype == torch.bfloat16
        assert all(p.dtype == torch.float32 for _, p in layer.adapter_named_parameters())
    x = torch.randn(4, 3, 8, 8)
    ref = _reference_model(model)(x.double())
    base = _reference_model(model, adapted=False)(x.double())
    # Without autocast every op runs in fp32 (the input's dtype): only W0 is rounded, once.
    out = model(x)
    assert out.dtype == torch.float32
    assert_adapted_close(out.double(), ref, base, rtol=1e-4)
    # Under autocast the convs run in bfloat16; adapter params and their grads stay fp32.
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = model(x)
    assert out.dtype == torch.bfloat16
    assert_adapted_close(out.double(), ref, base, rtol=BF16_TOL)
    out.float().square().mean().backward()
    for layer in adapter_layers(model).values():
        assert layer.weight.grad is None and layer.weight.dtype == torch.bfloat16
        for name, param in layer.adapter_named_parameters():
            assert param.grad is not None and param.grad.dtype == torch.float32, name


@pytest.mark.parametrize('method', ['FLoRA', 'LoRA', 'DoRA'])
def test_auto_under_autocast_runs_the_mode_it_picks(method):
    """'auto' under autocast gives exactly the output of the per-layer modes it chooses, and
    chooses as it does without autocast (the cost model depends on shapes only)."""
    model = _adapted(method, 'auto')
    cast_frozen_weights(model, torch.bfloat16)
    layers = adapter_layers(model)
    inputs = {}
    hooks = [layer.register_forward_pre_hook(
        lambda m, args, name=name: inputs.__setitem__(name, args[0])) for name, layer in
        layers.items()]
    x = torch.randn(4, 3, 8, 8)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        auto = model(x)
        picks = {n: layers[n]._use_factorized(inputs[n]) for n in layers}
    assert picks == {n: layers[n]._use_factorized(inputs[n].float()) for n in layers}
    if method != 'DoRA':  # DoRA's rescaling makes every layer of this small model merged
        assert len(set(picks.values())) == 2, picks  # both paths are exercised
    for hook in hooks:
        hook.remove()
    for name, layer in layers.items():
        layer.forward_mode = 'factorized' if picks[name] else 'merged'
    with torch.autocast('cpu', dtype=torch.bfloat16):
        chosen = model(x)
    assert torch.equal(auto, chosen)


@pytest.mark.parametrize('method', ['FLoRA', 'LoRA', 'DoRA'])
def test_bf16_frozen_weights_merge_in_fp32(method):
    model = _adapted(method)
    cast_frozen_weights(model, 'bfloat16')
    layers = adapter_layers(model)
    stored = {n: layer.weight.detach().clone() for n, layer in layers.items()}
    expected = {n: reference_weight(layer, layer.weight.detach().double())
                for n, layer in layers.items()}
    merge_adapters(model)
    for name, layer in layers.items():
        assert layer.weight.dtype == torch.float32  # W0 + dW in the original dtype
        torch.testing.assert_close(layer.weight.double(), expected[name], rtol=1e-5, atol=1e-6)
    unmerge_adapters(model)
    for name, layer in layers.items():
        assert layer.weight.dtype == torch.bfloat16
        assert torch.equal(layer.weight, stored[name])
    x = torch.randn(2, 3, 8, 8)
    adapted_out = model(x)
    merge_adapters(model, unload=True)
    plain = _model()
    plain.load_state_dict(model.state_dict(), strict=True)
    assert all(p.dtype == torch.float32 for p in plain.parameters())
    torch.testing.assert_close(plain(x), adapted_out, rtol=1e-4, atol=1e-5)


def test_bf16_frozen_weights_adapter_io(tmp_path):
    model = _adapted('FLoRA')
    cast_frozen_weights(model, 'bfloat16')
    save_adapters(model, str(tmp_path / 'adapter'))
    fresh = _adapted('FLoRA')  # same frozen base, then other adapter values
    torch.manual_seed(1)
    for layer in adapter_layers(fresh).values():
        randomize_adapters(layer, std=0.1)
    cast_frozen_weights(fresh, 'bfloat16')
    x = torch.randn(2, 3, 8, 8)
    assert not torch.allclose(fresh(x), model(x))
    load_adapters(fresh, str(tmp_path / 'adapter'))
    for _, param in adapter_state_dict(fresh).items():
        assert param.dtype == torch.float32
    torch.testing.assert_close(fresh(x), model(x))


def test_cast_frozen_weights_errors():
    with pytest.raises(ValueError, match='has no adapters'):
        cast_frozen_weights(_model(), 'bfloat16')
    model = _adapted('LoRA')
    with pytest.raises(ValueError, match='dtype must be one of'):
        cast_frozen_weights(model, 'int8')
    model[0].bias.requires_grad_(True)
    with pytest.raises(ValueError, match=r'^0 \(LoRAConv2d\): .*bias \(16,\) is trainable'):
        cast_frozen_weights(model, 'bfloat16')
    model[0].bias.requires_grad_(False)
    merge_adapters(model)
    with pytest.raises(ValueError, match='unmerge the layer first'):
        cast_frozen_weights(model, 'bfloat16')


@pytest.mark.parametrize('method', ['LoHa', 'LoKr'])
def test_merged_only_methods_with_bfloat16_frozen_weights(method):
    torch.manual_seed(0)
    model = _model()
    inject_adapters(model, {'type': method, 'rank': 4, 'use_effective_conv2d': True})
    for layer in adapter_layers(model).values():
        randomize_adapters(layer, std=0.1)
    x = torch.randn(4, 3, 8, 8)
    reference = model(x).detach()
    cast_frozen_weights(model, 'bfloat16')
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = model(x)
    assert out.dtype == torch.bfloat16
    out.float().square().mean().backward()
    assert (out.float() - reference).abs().max() < 0.05 * reference.abs().max()
    for layer in adapter_layers(model).values():
        assert layer.weight.grad is None
        for name, param in layer.adapter_named_parameters():
            assert param.grad is not None and param.grad.dtype == torch.float32, name
    merge_adapters(model)
    assert {layer.weight.dtype for layer in adapter_layers(model).values()} == {torch.float32}
    unmerge_adapters(model)
    assert {layer.weight.dtype for layer in adapter_layers(model).values()} == {torch.bfloat16}

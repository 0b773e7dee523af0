"""FLoRA layers against an independent einsum Tucker reconstruction."""
import math

import pytest
import torch
import torch.nn as nn

from flora_mm.adapters import count_adapter_params, inject_adapters, set_forward_mode
from flora_mm.adapters.budget import layer_param_count

from .helpers import LAYER_CASES, assert_close, einsum_tucker, make_case, randomize_adapters, \
    reference_forward

SCALE = 0.4


def _flora(name, forward_mode='auto', seed=0):
    layer, x, rank, kernel_rank = make_case(name, seed)
    plain = reference_forward(layer, x, layer.weight).detach()
    w0 = layer.weight.detach().clone()
    inject_adapters(layer, {'type': 'FLoRA', 'rank': rank, 'kernel_rank': kernel_rank,
                            'scale': SCALE, 'forward_mode': forward_mode})
    return layer, x, rank, kernel_rank, w0, plain


def _expected_ranks(shape, rank, kernel_rank):
    return [min(rank, shape[0]), min(rank, shape[1]), *(min(kernel_rank, k) for k in shape[2:])]


@pytest.mark.parametrize('name', list(LAYER_CASES))
def test_delta_and_outputs_match_einsum(name):
    layer, x, rank, kernel_rank, w0, _ = _flora(name)
    assert list(layer.flora_core.shape) == _expected_ranks(tuple(w0.shape), rank, kernel_rank)
    randomize_adapters(layer)
    factors = [f.detach() for f in layer.flora_factors]
    expected_delta = SCALE * einsum_tucker(layer.flora_core.detach(), factors)
    delta = layer.delta_weight()
    assert delta.shape == w0.shape
    assert_close(delta, expected_delta)
    expected = reference_forward(layer, x, w0 + expected_delta)
    for mode in ('factorized', 'merged', 'auto'):
        layer.forward_mode = mode
        for training in (True, False):
            layer.train(training)
            assert_close(layer(x), expected)


def test_depthwise_ranks_are_clipped():
    conv = nn.Conv2d(32, 32, 7, padding=3, groups=32)
    inject_adapters(conv, {'type': 'FLoRA', 'rank': 8, 'kernel_rank': 2})
    assert tuple(conv.flora_core.shape) == (8, 1, 2, 2)
    assert [tuple(f.shape) for f in conv.flora_factors] == [(32, 8), (1, 1), (7, 2), (7, 2)]


@pytest.mark.parametrize('name', ['linear', 'conv2d', 'conv2d_grouped_wide', 'conv3d'])
def test_unfolding_ranks_bounded(name):
    layer, _, rank, kernel_rank, w0, _ = _flora(name)
    layer.double()  # float64 so that matrix_rank's tolerance sees no rounding noise
    randomize_adapters(layer)
    delta = layer.delta_weight().detach()
    ranks = _expected_ranks(tuple(w0.shape), rank, kernel_rank)
    for mode, bound in enumerate(ranks):
        unfolding = delta.movedim(mode, 0).reshape(delta.shape[mode], -1)
        observed = torch.linalg.matrix_rank(unfolding).item()
        assert observed <= bound
        # a random core reaches the bound whenever the other modes allow it
        other = math.prod(r for i, r in enumerate(ranks) if i != mode)
        assert observed == min(bound, other)


@pytest.mark.parametrize('name', list(LAYER_CASES))
def test_param_count(name):
    layer, _, rank, kernel_rank, w0, _ = _flora(name)
    ranks = _expected_ranks(tuple(w0.shape), rank, kernel_rank)
    expected = sum(i * j for i, j in zip(w0.shape, ranks)) + math.prod(ranks)
    assert count_adapter_params(layer)['total'] == expected
    assert layer_param_count(tuple(w0.shape), 'FLoRA', rank, kernel_rank) == expected
    assert count_adapter_params(layer)['trainable'] == expected  # base frozen by injection


@pytest.mark.parametrize('name', list(LAYER_CASES))
def test_zero_delta_at_init(name):
    layer, x, _, _, w0, plain = _flora(name)
    assert torch.count_nonzero(layer.delta_weight()) == 0
    for mode in ('factorized', 'merged'):
        layer.forward_mode = mode
        assert torch.equal(layer(x), plain)


def test_gradients_reach_core_and_factors():
    model = nn.Sequential(nn.Conv2d(4, 6, 3, padding=1), nn.Flatten(), nn.Linear(6 * 25, 3))
    x = torch.randn(2, 4, 5, 5)
    layers = inject_adapters(model, {'type': 'FLoRA', 'rank': 3, 'kernel_rank': 2})
    for mode in ('factorized', 'merged'):
        set_forward_mode(model, mode)
        model.zero_grad(set_to_none=True)
        model(x).square().sum().backward()
        for layer in layers.values():
            assert layer.weight.grad is None and layer.bias.grad is None
            assert layer.flora_core.grad.abs().sum() > 0  # G = 0: only the core moves at step 0
            for factor in layer.flora_factors:
                assert torch.count_nonzero(factor.grad) == 0
    for layer in layers.values():
        randomize_adapters(layer)
    model.zero_grad(set_to_none=True)
    model(x).square().sum().backward()
    for layer in layers.values():
        assert all(f.grad.abs().sum() > 0 for f in layer.flora_factors)


@pytest.mark.parametrize('name', ['linear', 'conv2d_grouped', 'conv2d_depthwise',
                                  'conv2d_reflect', 'conv1d'])
@pytest.mark.parametrize('mode', ['factorized', 'merged'])
def test_gradcheck_float64(name, mode):
    layer, x, rank, kernel_rank = make_case(name)
    layer.double()
    x = x.double()[:1]
    inject_adapters(layer, {'type': 'FLoRA', 'rank': min(rank, 2), 'kernel_rank': kernel_rank,
                            'scale': SCALE, 'forward_mode': mode})
    assert layer.flora_core.dtype == torch.float64
    randomize_adapters(layer)  # at G = 0 the factor gradients vanish: check at a random core
    names = [n for n, _ in layer.adapter_named_parameters()]
    params = [p.detach().clone().requires_grad_() for _, p in layer.adapter_named_parameters()]
    x.requires_grad_()

    def fn(x, *tensors):
        return torch.func.functional_call(layer, dict(zip(names, tensors)), (x,))

    assert torch.autograd.gradcheck(fn, (x, *params), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize('make,shape,train_choice,eval_choice', [
    (lambda: nn.Conv2d(64, 64, 7, padding=3, groups=64), (8, 64, 28, 28), False, False),  # dw
    (lambda: nn.Conv2d(256, 256, 3, padding=1), (8, 256, 28, 28), True, False),  # wide dense
    (lambda: nn.Linear(768, 3072), (8, 49, 768), True, True),  # wide linear, few tokens
    (lambda: nn.Linear(40, 160), (8, 3136, 40), False, False),  # narrow: branch memory bound
])
def test_auto_picks_cheaper_path(make, shape, train_choice, eval_choice):
    layer = make()
    inject_adapters(layer, {'type': 'FLoRA', 'rank': 8, 'kernel_rank': 2})
    x = torch.empty(shape)
    assert layer._use_factorized(x) is train_choice
    with torch.no_grad():
        assert layer._use_factorized(x) is eval_choice


def test_dropout_forces_factorized_in_training():
    layer = nn.Conv2d(8, 8, 7, padding=3, groups=8)  # depthwise: auto would merge
    inject_adapters(layer, {'type': 'FLoRA', 'rank': 2, 'dropout': 0.5})
    x = torch.randn(2, 8, 6, 6)
    assert layer._use_factorized(x)
    layer.eval()
    assert not layer._use_factorized(x)


def test_input_projection_folding_choice():
    from flora_mm.adapters.tucker import fold_input_projection
    # 1x1 kernel and patchify (stride = kernel): fold the input factor into the core kernel
    assert fold_input_projection(100, 100, 64, 8, 8, kernel_numel=1)
    assert fold_input_projection(400, 100, 64, 8, 8, kernel_numel=4)
    # 3x3 stride 1 with a wide input: project channels down first
    assert not fold_input_projection(100, 100, 64, 8, 8, kernel_numel=9)


@pytest.mark.parametrize('method', ['FLoRA', 'LoRA', 'DoRA'])
def test_geometry_changed_after_wrapping_is_followed(method):
    """The adapter branch reads the conv's geometry at call time, like the base op does: a
    ``padding_mode`` set after wrapping reaches both forward paths."""
    layer = nn.Conv2d(6, 8, 3, padding=1)
    x = torch.randn(2, 6, 9, 9)
    inject_adapters(layer, {'type': method, 'rank': 3})
    randomize_adapters(layer)
    layer.padding_mode = 'reflect'
    with torch.no_grad():
        expected = reference_forward(layer, x, layer.weight + layer.delta_weight())
        for mode in ('factorized', 'merged'):
            layer.forward_mode = mode
            assert_close(layer(x), expected)

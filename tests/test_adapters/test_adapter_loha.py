"""LoHa against independent einsum references (float64), as peft's LoHaModel defines it."""
import copy
import math

import pytest
import torch
import torch.nn as nn

from flora_mm.adapters import adapter_layers, count_adapter_params, inject_adapters, \
    merge_adapters, set_forward_mode, solve_rank, unmerge_adapters
from flora_mm.analysis.metrics import update_rank

from .helpers import assert_close, assert_merged_forward_exact, check_param_count, \
    loha_update, make_case, reference_forward

CASES = ['linear', 'conv1d', 'conv1d_circular', 'conv2d', 'conv2d_1x1', 'conv2d_grouped',
         'conv2d_depthwise', 'conv2d_dilated', 'conv2d_strided', 'conv2d_reflect', 'conv3d']
ALPHA = 6.0


def _reference_delta(layer, rank):
    """``s * (W1a W1b) ⊙ (W2a W2b)``, from the shared einsum reference."""
    params = {n: p.detach() for n, p in layer.adapter_named_parameters()}
    return ALPHA / rank * loha_update(params, layer.weight.shape)


@pytest.mark.parametrize('effective', [False, True])
@pytest.mark.parametrize('name', CASES)
def test_loha_matches_reference(name, effective):
    layer, x, rank, _ = make_case(name)
    layer.double()
    x = x.double()
    w0 = layer.weight.detach().clone()
    plain = reference_forward(layer, x, w0)
    inject_adapters(layer, {'type': 'LoHa', 'rank': rank, 'alpha': ALPHA,
                            'use_effective_conv2d': effective})
    spatial = math.prod(w0.shape[2:]) > 1
    assert hasattr(layer, 'hada_t1') == (effective and spatial)  # 1x1: the flat form
    out, rest = w0.shape[0], w0[0].numel()
    if effective and spatial:
        assert layer.hada_t1.shape == (rank, rank, *w0.shape[2:])
        assert layer.hada_w1_a.shape == (rank, out)
        assert layer.hada_w2_b.shape == (rank, w0.shape[1])
    else:
        assert layer.hada_w1_a.shape == (out, rank) and layer.hada_w2_b.shape == (rank, rest)
    assert torch.equal(layer.hada_w2_b, torch.zeros_like(layer.hada_w2_b))
    assert torch.equal(layer(x), plain)  # zero update at init
    assert layer.adapter_scale == ALPHA / rank
    check_param_count(layer, 'LoHa', rank, use_effective_conv2d=effective)
    with torch.no_grad():
        layer.hada_w2_b.normal_()
    delta = _reference_delta(layer, rank)
    assert_close(layer.delta_weight(), delta, rtol=1e-12)
    assert_merged_forward_exact(layer, x, w0, delta)
    assert update_rank(layer) == min(rank ** 2, out, rest)


def test_init_distribution_and_gradients():
    layer = nn.Conv2d(16, 32, 3, padding=1)
    inject_adapters(layer, {'type': 'LoHa', 'rank': 8, 'use_effective_conv2d': True})
    assert layer.adapter_scale == 1.0  # alpha defaults to the rank
    # kaiming-uniform a=sqrt(5): U(-b, b), b = 1 / sqrt(fan_in)
    for name, fan_in in (('hada_w1_a', 32), ('hada_w1_b', 16), ('hada_t1', 8 * 9)):
        param = getattr(layer, name)
        assert 0.8 / math.sqrt(fan_in) < param.abs().max() <= 1 / math.sqrt(fan_in)
    x = torch.randn(2, 16, 8, 8)
    layer(x).square().sum().backward()
    assert layer.hada_w2_b.grad.abs().sum() > 0  # the zero factor learns first
    assert layer.weight.grad is None


def _model():
    return nn.Sequential(nn.Conv2d(3, 32, 4, stride=4), nn.Conv2d(32, 32, 7, groups=32),
                         nn.Conv2d(32, 64, 3), nn.Flatten(1), nn.Linear(64, 128),
                         nn.Linear(128, 10))


@pytest.mark.parametrize('effective', [False, True])
@pytest.mark.parametrize('budget', [2000, 12345])
def test_solve_rank_is_closest_among_neighbours(effective, budget):
    model = _model()
    cfg = {'type': 'LoHa', 'rank': 1, 'use_effective_conv2d': effective}
    rank = solve_rank(model, cfg, budget)
    assert adapter_layers(model) == {}

    def count(r):
        clone = copy.deepcopy(model)
        inject_adapters(clone, {**cfg, 'rank': r})
        return count_adapter_params(clone)['total']

    gap = abs(count(rank) - budget)
    for other in (rank - 1, rank + 1):
        if 1 <= other <= 10:  # 10: the largest rank of the head (10, 128)
            assert gap <= abs(count(other) - budget)


def test_solve_rank_stops_at_the_largest_rank_every_layer_allows():
    assert solve_rank(_model(), {'type': 'LoHa'}, 10 ** 9) == 10


@pytest.mark.parametrize('cfg,fragments', [
    ({'type': 'LoHa', 'rank': 4, 'kernel_rank': 2},
     ["cfg['kernel_rank'] is only valid for ['FLoRA']", "'alpha'", "'use_effective_conv2d'"]),
    ({'type': 'LoHa', 'rank': 4, 'decompose_both': True},
     ["'decompose_both'", "allowed for LoHa", "'use_effective_conv2d'"]),
    ({'type': 'LoHa', 'rank': 4, 'use_effective_conv2d': 'yes'},
     ["cfg['use_effective_conv2d']='yes'", "'0'", '(32, 3, 4, 4)']),
    ({'type': 'LoHa', 'rank': 11}, ["cfg['rank']=11", 'above 10', "'5'", '(10, 128)']),
    ({'type': 'LoHa', 'rank': 2, 'rank_pattern': {'1': 50}},
     ["cfg['rank_pattern']['1']=50", 'above 32', "'1'", '(32, 1, 7, 7)']),
    ({'type': 'LoHa', 'rank': 2, 'forward_mode': 'factorized'}, ['LoHa', 'runs merged']),
])
def test_bad_input_names_key_layer_and_shape(cfg, fragments):
    model = _model()
    with pytest.raises(ValueError) as info:
        inject_adapters(model, cfg)
    assert all(f in str(info.value) for f in fragments), str(info.value)
    assert adapter_layers(model) == {}


def test_model_merge_unmerge_and_modes():
    torch.manual_seed(0)
    model = _model().double()
    inject_adapters(model, {'type': 'LoHa', 'rank': 3, 'use_effective_conv2d': True})
    with torch.no_grad():
        for layer in adapter_layers(model).values():
            layer.hada_w2_b.normal_()
    x = torch.randn(2, 3, 36, 36, dtype=torch.float64)
    expected = model(x)
    with pytest.raises(ValueError, match='no factorized forward'):
        set_forward_mode(model, 'factorized')
    merge_adapters(model)
    assert_close(model(x), expected, rtol=1e-12)
    unmerge_adapters(model)
    assert_close(model(x), expected, rtol=1e-12)

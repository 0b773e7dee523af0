"""LoKr against independent einsum references (float64), as peft's LoKrModel defines it."""
import copy

import pytest
import torch
import torch.nn as nn

from flora_mm.adapters import adapter_layers, count_adapter_params, inject_adapters, \
    solve_rank
from flora_mm.adapters.methods.lokr import factorize
from flora_mm.analysis.metrics import update_rank

from .helpers import LAYER_CASES, assert_close, assert_merged_forward_exact, check_param_count, \
    lokr_update, reference_forward

ALPHA = 6.0
LAYERS = {
    **{name: factory for name, (factory, _, _, _) in LAYER_CASES.items()},
    'linear_wide': lambda: nn.Linear(48, 96),
    'conv2d_grouped_big': lambda: nn.Conv2d(32, 64, 3, padding=1, groups=2),
    'conv3d_wide': lambda: nn.Conv3d(16, 24, 3, padding=1),
}
INPUTS = {'linear_wide': (3, 48), 'conv2d_grouped_big': (2, 32, 6, 6),
          'conv3d_wide': (1, 16, 4, 4, 4), **{n: c[1] for n, c in LAYER_CASES.items()}}
# (layer, rank, options, expected parameter shapes): hand-derived from peft's rules
SHAPES = [
    ('linear_wide', 2, {}, {'lokr_w1': (8, 6), 'lokr_w2_a': (12, 2), 'lokr_w2_b': (2, 8)}),
    ('linear_wide', 6, {}, {'lokr_w1': (8, 6), 'lokr_w2': (12, 8)}),
    ('linear_wide', 2, {'decompose_both': True},
     {'lokr_w1_a': (8, 2), 'lokr_w1_b': (2, 6), 'lokr_w2_a': (12, 2), 'lokr_w2_b': (2, 8)}),
    ('linear_wide', 2, {'decompose_factor': 4},
     {'lokr_w1': (4, 4), 'lokr_w2_a': (24, 2), 'lokr_w2_b': (2, 12)}),
    ('conv2d_grouped_big', 2, {},
     {'lokr_w1': (8, 4), 'lokr_w2_a': (8, 2), 'lokr_w2_b': (2, 36)}),
    ('conv2d_grouped_big', 2, {'use_effective_conv2d': True},
     {'lokr_w1': (8, 4), 'lokr_t2': (2, 2, 3, 3), 'lokr_w2_a': (2, 8), 'lokr_w2_b': (2, 4)}),
    ('conv2d_depthwise', 2, {'use_effective_conv2d': True},
     {'lokr_w1': (2, 1), 'lokr_w2': (4, 1, 7, 7)}),
    ('conv2d_depthwise', 1, {'use_effective_conv2d': True},
     {'lokr_w1': (2, 1), 'lokr_t2': (1, 1, 7, 7), 'lokr_w2_a': (1, 4), 'lokr_w2_b': (1, 1)}),
    ('conv2d_1x1', 1, {'use_effective_conv2d': True},
     {'lokr_w1': (2, 2), 'lokr_w2_a': (4, 1), 'lokr_w2_b': (1, 3)}),
]
OPTIONS = [{}, {'decompose_both': True}, {'decompose_factor': 2}, {'decompose_factor': 4},
           {'use_effective_conv2d': True}, {'use_effective_conv2d': True, 'decompose_both': True}]


def _reference_delta(layer, rank):
    """``s * kron(W1, W2)``, from the shared einsum reference."""
    params = {n: p.detach() for n, p in layer.adapter_named_parameters()}
    return ALPHA / rank * lokr_update(params, layer.weight.shape)


def _case(name, seed=0):
    torch.manual_seed(seed)
    return LAYERS[name]().double(), torch.randn(INPUTS[name], dtype=torch.float64)


@pytest.mark.parametrize('name,rank,options,shapes', SHAPES)
def test_parameter_shapes_follow_peft(name, rank, options, shapes):
    layer, _ = _case(name)
    inject_adapters(layer, {'type': 'LoKr', 'rank': rank, **options})
    assert {n: tuple(p.shape) for n, p in layer.adapter_named_parameters()} == shapes
    check_param_count(layer, 'LoKr', rank, **options)


@pytest.mark.parametrize('options', OPTIONS)
@pytest.mark.parametrize('rank', [1, 2, 8])
@pytest.mark.parametrize('name', ['linear', 'linear_wide', 'conv1d', 'conv1d_circular',
                                  'conv2d', 'conv2d_grouped', 'conv2d_grouped_big',
                                  'conv2d_depthwise', 'conv2d_dilated', 'conv2d_strided',
                                  'conv3d', 'conv3d_wide'])
def test_lokr_matches_reference(name, rank, options):
    layer, x = _case(name)
    w0 = layer.weight.detach().clone()
    plain = reference_forward(layer, x, w0)
    inject_adapters(layer, {'type': 'LoKr', 'rank': rank, 'alpha': ALPHA, **options})
    assert torch.equal(layer(x), plain)  # zero update at init (W1 or W1a is zero)
    check_param_count(layer, 'LoKr', rank, **options)
    with torch.no_grad():
        for n, p in layer.adapter_named_parameters():
            if n in ('lokr_w1', 'lokr_w1_a'):
                p.normal_()
    delta = _reference_delta(layer, rank)
    assert delta.shape == w0.shape
    assert_close(layer.delta_weight(), delta, rtol=1e-12)
    assert_merged_forward_exact(layer, x, w0, delta)
    unfolded = delta.reshape(delta.shape[0], -1)
    assert update_rank(layer) >= torch.linalg.matrix_rank(unfolded).item()


def test_factorize_examples():
    # peft's documented examples, and a bound that does not divide
    assert [factorize(256), factorize(128), factorize(127), factorize(128, 4)] == [
        (16, 16), (8, 16), (1, 127), (4, 32)]
    assert factorize(128, 3) == (2, 64) and factorize(12, 5) == (3, 4)
    assert factorize(128, 64) == (64, 2)  # a dividing factor is taken as is, as in peft


def _model():
    return nn.Sequential(nn.Conv2d(3, 32, 4, stride=4), nn.Conv2d(32, 32, 7, groups=32),
                         nn.Conv2d(32, 64, 3), nn.Flatten(1), nn.Linear(64, 128),
                         nn.Linear(128, 10))


@pytest.mark.parametrize('options', [{}, {'decompose_both': True, 'decompose_factor': 4}])
@pytest.mark.parametrize('budget', [3000, 9000, 30000])
def test_solve_rank_finds_the_closest_count(options, budget):
    model = _model()
    cfg = {'type': 'LoKr', 'rank': 1, **options}
    rank = solve_rank(model, cfg, budget)
    assert adapter_layers(model) == {}
    counts = {}
    for r in range(1, 40):  # past every layer's saturation rank: counts stay constant
        clone = copy.deepcopy(model)
        inject_adapters(clone, {**cfg, 'rank': r})
        counts[r] = count_adapter_params(clone)['total']
    assert counts[39] == counts[38]
    best = min(counts, key=lambda r: (abs(counts[r] - budget), r))
    assert rank == best


@pytest.mark.parametrize('cfg,fragments', [
    ({'type': 'LoKr', 'rank': 4, 'decompose_factor': 0},
     ["cfg['decompose_factor']=0", '-1', 'positive integer', "'0'", '(32, 3, 4, 4)']),
    ({'type': 'LoKr', 'rank': 4, 'decompose_factor': -2}, ["cfg['decompose_factor']=-2"]),
    ({'type': 'LoKr', 'rank': 4, 'decompose_factor': 2.0}, ["cfg['decompose_factor']=2.0"]),
    ({'type': 'LoKr', 'rank': 4, 'decompose_factor': True}, ["cfg['decompose_factor']=True"]),
    ({'type': 'LoKr', 'rank': 4, 'decompose_both': 1}, ["cfg['decompose_both']=1", "'0'"]),
    ({'type': 'LoKr', 'rank': 4, 'kernel_rank': 2},
     ["cfg['kernel_rank'] is only valid for ['FLoRA']", "'decompose_factor'"]),
    ({'type': 'LoKr', 'rank': 4, 'factor': 2}, ["unknown adapter cfg keys ['factor']",
                                                "'decompose_factor'"]),
    ({'type': 'LoKr', 'rank': 4, 'dropout': 0.1}, ["cfg['dropout']", 'LoKr']),
])
def test_bad_input_names_key_layer_and_shape(cfg, fragments):
    model = _model()
    with pytest.raises(ValueError) as info:
        inject_adapters(model, cfg)
    assert all(f in str(info.value) for f in fragments), str(info.value)
    assert adapter_layers(model) == {}


def test_any_rank_is_accepted():
    model = _model()
    layers = inject_adapters(model, {'type': 'LoKr', 'rank': 10 ** 4})
    assert all(hasattr(m, 'lokr_w1') and hasattr(m, 'lokr_w2') for m in layers.values())

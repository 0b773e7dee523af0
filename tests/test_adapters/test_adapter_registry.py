"""The registration API, proven end to end by a method defined here, outside the package."""
import copy
import io
import math

import pytest
import torch
import torch.nn as nn

from flora_mm.adapters import ADAPTER_METHODS, ALPHA, AdapterLayer, Option, adapter_layers, \
    adapter_state_dict, count_adapter_params, finite_number, freeze_base, inject_adapters, \
    layer_param_count, load_adapters, merge_adapters, register_adapter, save_adapters, \
    set_forward_mode, solve_rank, unmerge_adapters
from flora_mm.analysis.metrics import update_rank

from .helpers import assert_close, assert_merged_forward_exact, make_case, reference_forward


@register_adapter
class GatedLowRankLayer(AdapterLayer):
    """``dW = s * reshape(U diag(g) V)``: a rank-r update with a per-rank gate ``g`` that
    starts at ``init_gate`` (0: the update starts at zero). Merged forward only."""

    adapter_type = 'GatedLR'
    adapter_prefix = 'glr_'
    adapter_layer_names = ('glr_up', 'glr_gate', 'glr_down')
    adapter_keys = {'alpha': ALPHA,
                    'init_gate': Option(0.0, finite_number, 'initial gate value', float)}

    @classmethod
    def adapter_shapes(cls, weight_shape, rank, options):
        return {'glr_up': (weight_shape[0], rank), 'glr_gate': (rank,),
                'glr_down': (rank, math.prod(weight_shape[1:]))}

    @classmethod
    def max_rank(cls, weight_shape, options):
        return min(weight_shape[0], math.prod(weight_shape[1:]))

    def reset_adapter_parameters(self):
        nn.init.normal_(self.glr_up, std=0.5)
        nn.init.constant_(self.glr_gate, self.adapter_options['init_gate'])
        nn.init.normal_(self.glr_down, std=0.5)

    def compute_delta_weight(self):
        update = (self.glr_up * self.glr_gate) @ self.glr_down
        return (self.adapter_scale * update).reshape(self.weight.shape)


def _reference_delta(layer, alpha, rank):
    """Independent of the class above: an einsum over the parameter values."""
    update = torch.einsum('or,r,rn->on', layer.glr_up, layer.glr_gate, layer.glr_down)
    return (alpha / rank) * update.reshape(layer.weight.shape)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 4, stride=2, padding=1)
        self.dw = nn.Conv2d(8, 8, 5, padding=2, groups=8)
        self.pw = nn.Conv2d(8, 12, 1)
        self.head = nn.Linear(12, 4)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.dw(x)
        return self.head(self.pw(x).mean((2, 3)))


def _net(seed=0):
    torch.manual_seed(seed)
    return Net()


CFG = {'type': 'GatedLR', 'rank': 3, 'alpha': 6.0, 'init_gate': 0.0}
X = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(1))


def _randomize(model):
    with torch.no_grad():
        for layer in adapter_layers(model).values():
            layer.glr_gate.normal_()


def test_registered_with_classes_per_base_layer():
    assert 'GatedLR' in ADAPTER_METHODS and list(ADAPTER_METHODS)[:3] == ['FLoRA', 'LoRA',
                                                                          'DoRA']
    model = _net()
    layers = inject_adapters(model, CFG)
    assert type(layers['dw']).__name__ == 'GatedLRConv2d'
    assert type(layers['head']).__module__ == 'flora_mm.adapters.layers'
    assert isinstance(layers['dw'], nn.Conv2d) and not layers['dw'].has_factorized()
    assert set(adapter_state_dict(model)) == {f'{n}.glr_{p}' for n in layers
                                              for p in ('up', 'gate', 'down')}


@pytest.mark.parametrize('name', ['linear', 'conv1d', 'conv2d_grouped', 'conv2d_depthwise',
                                  'conv2d_strided', 'conv2d_reflect', 'conv3d'])
def test_delta_and_forward_against_reference(name):
    layer, x, rank, _ = make_case(name)
    layer.double()
    x = x.double()
    w0 = layer.weight.detach().clone()
    plain = reference_forward(layer, x, w0)
    rank = min(rank, w0.shape[0], w0[0].numel())
    inject_adapters(layer, {**CFG, 'rank': rank})
    assert torch.equal(layer(x), plain)  # gate 0: unchanged at init
    with torch.no_grad():
        layer.glr_gate.normal_()
    delta = _reference_delta(layer, 6.0, rank)
    assert_close(layer.delta_weight(), delta, rtol=1e-12)
    for mode in ('auto', 'merged'):
        layer.forward_mode = mode
        assert not layer._use_factorized(x)
    assert_merged_forward_exact(layer, x, w0, delta)
    assert update_rank(layer) == rank  # numerical rank from delta_weight()


def test_train_step_reaches_only_its_parameters():
    model = _net()
    inject_adapters(model, {**CFG, 'init_gate': 0.1})
    trainable = freeze_base(model, 'adapters')
    assert trainable == count_adapter_params(model)['total']
    assert {n.rsplit('.', 1)[-1] for n, p in model.named_parameters() if p.requires_grad} == {
        'glr_up', 'glr_gate', 'glr_down'}
    target = torch.randn(2, 4, generator=torch.Generator().manual_seed(2))
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
    losses = []
    for _ in range(3):
        loss = (model(X) - target).square().mean()
        optimizer.zero_grad()
        loss.backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0
                   for p in model.parameters() if p.requires_grad)
        optimizer.step()
        losses.append(loss.item())
    assert losses[2] < losses[1] < losses[0]


def test_merge_unmerge_save_load_and_pickle(tmp_path):
    pytest.importorskip('safetensors')
    model = _net().double()
    inject_adapters(model, CFG)
    _randomize(model)
    weights = [p.detach().clone() for p in model.parameters()]
    x = X.double()
    expected = model(x)
    merge_adapters(model)
    assert_close(model(x), expected, rtol=1e-12)
    unmerge_adapters(model)
    for before, after in zip(weights, model.parameters()):
        assert_close(after, before, rtol=1e-14)
    save_adapters(model, str(tmp_path))
    fresh = _net().double()
    loaded = load_adapters(fresh, str(tmp_path))
    assert set(loaded) == set(adapter_layers(model))
    assert loaded['head'].adapter_options == {'alpha': 6.0, 'init_gate': 0.0}
    assert torch.equal(fresh(x), expected)
    buffer = io.BytesIO()
    torch.save(fresh, buffer)
    buffer.seek(0)
    assert torch.equal(torch.load(buffer, weights_only=False)(x), expected)
    assert torch.equal(copy.deepcopy(fresh)(x), expected)
    merge_adapters(fresh, unload=True)
    assert set(fresh.state_dict()) == set(_net().state_dict())


def test_param_counts_and_solve_rank():
    model = _net()
    layers = inject_adapters(copy.deepcopy(model), CFG)
    for layer in layers.values():
        created = sum(p.numel() for _, p in layer.adapter_named_parameters())
        assert layer_param_count(tuple(layer.weight.shape), 'GatedLR', 3) == created
    budget = 300
    rank = solve_rank(model, CFG, budget)
    assert 1 < rank < 4
    assert adapter_layers(model) == {}

    counts = {}
    for r in (rank - 1, rank, rank + 1):
        if 1 <= r <= 4:  # 4: the largest rank the head (4, 12) allows
            clone = copy.deepcopy(model)
            inject_adapters(clone, {**CFG, 'rank': r})
            counts[r] = count_adapter_params(clone)['total']
    assert all(abs(counts[rank] - budget) <= abs(n - budget) for n in counts.values())


@pytest.mark.parametrize('cfg,fragments', [
    ({**CFG, 'kernel_rank': 2}, ["cfg['kernel_rank'] is only valid for ['FLoRA']",
                                 "'alpha'", "'init_gate'"]),
    ({**CFG, 'gate': 1}, ["unknown adapter cfg keys ['gate']", "'init_gate'"]),
    ({**CFG, 'init_gate': 'open'}, ["cfg['init_gate']='open'", "'stem'", '(8, 3, 4, 4)']),
    ({**CFG, 'rank': 40}, ["cfg['rank']=40", 'above 8', "'stem'", '(8, 3, 4, 4)']),
    ({**CFG, 'rank_pattern': {'pw': 9}}, ["cfg['rank_pattern']['pw']=9", 'above 8', "'pw'",
                                          '(12, 8, 1, 1)']),
    ({**CFG, 'forward_mode': 'factorized'}, ["cfg['forward_mode']", 'GatedLR']),
    ({**CFG, 'dropout': 0.1}, ["cfg['dropout']", 'factorized forward']),
])
def test_errors_name_key_layer_and_shape(cfg, fragments):
    model = _net()
    with pytest.raises(ValueError) as info:
        inject_adapters(model, cfg)
    assert all(f in str(info.value) for f in fragments), str(info.value)
    assert adapter_layers(model) == {}


def test_factorized_mode_is_refused_for_a_merged_only_method():
    model = _net()
    inject_adapters(model, CFG)
    with pytest.raises(ValueError, match='GatedLR.*no factorized forward'):
        set_forward_mode(model, 'factorized')
    assert {layer.forward_mode for layer in adapter_layers(model).values()} == {'auto'}


def test_incomplete_declarations_are_refused():
    class NoDelta(AdapterLayer):
        adapter_type = 'NoDelta'
        adapter_prefix = 'nd_'
        adapter_layer_names = ('nd_a',)

        @classmethod
        def adapter_shapes(cls, weight_shape, rank, options):
            return {'nd_a': (rank,)}

        def reset_adapter_parameters(self):
            pass

    with pytest.raises(TypeError, match='compute_delta_weight'):
        register_adapter(NoDelta)
    with pytest.raises(TypeError, match="'lora' is taken by 'LoRA'"):
        register_adapter(type('Clash', (GatedLowRankLayer,), {'adapter_type': 'lora'}))
    assert 'NoDelta' not in ADAPTER_METHODS


def test_freeze_policy_names():
    model = _net()
    with pytest.raises(ValueError, match='no adapters'):
        freeze_base(model, 'adapters')
    inject_adapters(model, CFG)
    n_adapter = count_adapter_params(model)['total']
    assert freeze_base(model) == n_adapter  # default: adapter parameters only
    for name in ('adapters', 'GatedLR', 'FLoRA', 'lora'):  # any method's name means the same
        freeze_base(model, 'Full')
        assert freeze_base(model, name) == n_adapter
    with pytest.raises(ValueError, match="'adapters'"):
        freeze_base(model, 'QLoRA')


def test_backbone_config_with_the_method():
    pytest.importorskip('timm')
    mmengine_registry = pytest.importorskip('mmengine.registry')
    import flora_mm  # noqa: F401  (registers the backbone)
    cfg = dict(type='flora_mm.FLoRAConvNeXtV2', arch='atto', out_indices=(0, 1, 2, 3),
               adapter=dict(type='GatedLR', rank=2, alpha=4.0, init_gate=0.5,
                            targets=[r'stages\.\d\.blocks\.\d\.conv_dw']))
    backbone = mmengine_registry.MODELS.build(cfg)
    layers = adapter_layers(backbone)
    assert len(layers) == 2 + 2 + 6 + 2  # the depthwise convs of the atto blocks
    assert {type(m).__name__ for m in layers.values()} == {'GatedLRConv2d'}
    assert {m.adapter_scale for m in layers.values()} == {2.0}
    trainable = {n for n, p in backbone.named_parameters() if p.requires_grad}
    assert {n for n in trainable if 'glr_' in n} == {
        f'{n}.glr_{p}' for n in layers for p in ('up', 'gate', 'down')}
    assert all('glr_' in n or n.startswith('norm') for n in trainable)
    feats = backbone(torch.randn(1, 3, 64, 64))
    sum(f.square().mean() for f in feats).backward()
    assert all(layer.glr_gate.grad is not None for layer in layers.values())

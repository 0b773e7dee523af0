"""Targeting, config validation, freeze policies and state-dict keys."""
import copy
import re

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from flora_mm.adapters import adapter_layers, freeze_base, inject_adapters, merge_adapters
from flora_mm.adapters.layers import FLoRAConv2d


class Net(nn.Module):
    """A miniature backbone + head with the layer kinds of a dense-prediction model."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 4, stride=4), nn.BatchNorm2d(8))
        self.blocks = nn.ModuleList([
            nn.Sequential(nn.Conv2d(8, 8, 7, padding=3, groups=8), nn.Conv2d(8, 16, 1),
                          nn.GELU(), nn.Conv2d(16, 8, 1)) for _ in range(2)])
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = x + block(x)
        return self.head(x.mean((2, 3)))


def _net():
    torch.manual_seed(0)
    return Net()


def test_keys_unchanged_and_classes_kept():
    model = _net()
    plain_keys = set(model.state_dict())
    x = torch.randn(2, 3, 16, 16)
    expected = model(x)
    weight = model.stem[0].weight
    layers = inject_adapters(model, {'type': 'FLoRA', 'rank': 4})
    assert set(layers) == {'stem.0', 'blocks.0.0', 'blocks.0.1', 'blocks.0.3', 'blocks.1.0',
                           'blocks.1.1', 'blocks.1.3', 'head'}
    assert plain_keys < set(model.state_dict())
    assert {'stem.0.flora_core', 'stem.0.flora_factors.0', 'stem.0.flora_factors.3'} <= \
        set(model.state_dict())
    assert isinstance(model.stem[0], nn.Conv2d) and type(model.stem[0]) is FLoRAConv2d
    assert model.stem[0].weight is weight  # the same Parameter object
    assert not weight.requires_grad and not model.stem[0].bias.requires_grad
    assert model.stem[1].weight.requires_grad  # only adapted layers are frozen
    assert torch.equal(model(x), expected)


def test_targets_exclude_rank_pattern():
    model = _net()
    layers = inject_adapters(model, {
        'type': 'LoRA', 'rank': 2, 'targets': [r'blocks\..*'], 'exclude': [r'blocks\.\d\.0'],
        'rank_pattern': {r'blocks\.1\..*': 3, r'blocks\..*': 1}})
    assert set(layers) == {'blocks.0.1', 'blocks.0.3', 'blocks.1.1', 'blocks.1.3'}
    assert layers['blocks.1.1'].lora_A.shape[0] == 3  # first fullmatch wins
    assert layers['blocks.0.1'].lora_A.shape[0] == 1


@pytest.mark.parametrize('method', ['BitFit', 'Full', 'Frozen', 'bitfit'])
def test_policy_methods_inject_nothing(method):
    model = _net()
    keys = set(model.state_dict())
    assert inject_adapters(model, {'type': method, 'rank': 8, 'scale': 0.4,
                                   'targets': ['nothing']}) == {}
    assert set(model.state_dict()) == keys


def _error(cfg, model=None):
    with pytest.raises(ValueError) as info:
        inject_adapters(model or _net(), cfg)
    return str(info.value)


def test_errors_name_key_module_and_shape():
    msg = _error({'type': 'FLoRA', 'rank': 4, 'targets': [r'stem\.0', r'neck\..*']})
    assert "cfg['targets'][1]" in msg and 'neck' in msg and 'matches no module' in msg
    msg = _error({'type': 'FLoRA', 'rank': 4, 'targets': [r'stem\.1']})
    assert "cfg['targets'][0]" in msg and "'stem.1'" in msg and 'BatchNorm2d' in msg
    assert '(8,)' in msg
    msg = _error({'type': 'FLoRA', 'rank': 0, 'targets': [r'stem\.0']})
    assert "cfg['rank']=0" in msg and "'stem.0'" in msg and '(8, 3, 4, 4)' in msg
    msg = _error({'type': 'LoRA', 'rank': 2, 'rank_pattern': {'head': -1}})
    assert "cfg['rank_pattern']['head']=-1" in msg and "'head'" in msg and '(5, 8)' in msg
    msg = _error({'type': 'FLoRA', 'rank': 2, 'kernel_rank': 0, 'targets': ['head']})
    assert "cfg['kernel_rank']=0" in msg and "'head'" in msg and '(5, 8)' in msg
    msg = _error({'type': 'FLoRA', 'rank': 2, 'scale': 'big', 'targets': ['head']})
    assert "cfg['scale']='big'" in msg and "'head'" in msg and '(5, 8)' in msg
    msg = _error({'type': 'LoRA', 'rank': 2, 'alpha': '8', 'targets': ['head']})
    assert "cfg['alpha']='8'" in msg and "'head'" in msg
    msg = _error({'type': 'DoRA', 'rank': 2.5, 'targets': ['head']})
    assert "cfg['rank']=2.5" in msg and "'head'" in msg


@pytest.mark.parametrize('cfg,fragment', [
    ({'type': 'FLoRA', 'rank': 2, 'ranks': 3}, "unknown adapter cfg keys ['ranks']"),
    ({'type': 'QLoRA', 'rank': 2}, "cfg['type']='QLoRA'"),
    ({'rank': 2}, "'type'"),
    ({'type': 'FLoRA'}, "'rank'"),
    ({'type': 'FLoRA', 'rank': 2, 'alpha': 4}, "cfg['alpha'] is only valid"),
    ({'type': 'LoRA', 'rank': 2, 'scale': 4}, "cfg['scale'] is only valid"),
    ({'type': 'LoRA', 'rank': 2, 'kernel_rank': 2}, "cfg['kernel_rank'] is only valid"),
    ({'type': 'FLoRA', 'rank': 2, 'forward_mode': 'fast'}, "cfg['forward_mode']='fast'"),
    ({'type': 'FLoRA', 'rank': 2, 'dropout': 1.5}, "cfg['dropout']=1.5"),
    ({'type': 'FLoRA', 'rank': 2, 'dropout': 0.1, 'forward_mode': 'merged'}, "cfg['dropout']"),
    ({'type': 'FLoRA', 'rank': 2, 'targets': 'head'}, "cfg['targets'] must be a list"),
    ({'type': 'FLoRA', 'rank': 2, 'exclude': ['(']}, "cfg['exclude'] has an invalid regex"),
    ({'type': 'FLoRA', 'rank': 2, 'rank_pattern': {'neck': 2}}, "cfg['rank_pattern'] keys"),
])
def test_config_errors(cfg, fragment):
    assert fragment in _error(cfg)


def test_nothing_modified_on_error():
    model = _net()
    _error({'type': 'FLoRA', 'rank': 2, 'rank_pattern': {'head': 0}}, model)
    assert adapter_layers(model) == {}


def test_inject_twice_is_an_error():
    model = _net()
    inject_adapters(model, {'type': 'FLoRA', 'rank': 2, 'targets': ['head']})
    msg = _error({'type': 'LoRA', 'rank': 2, 'targets': ['head']}, model)
    assert "'head'" in msg and 'already has a FLoRA adapter' in msg
    assert 'already has a FLoRA adapter' in _error({'type': 'FLoRA', 'rank': 2}, model)
    # other layers can still get adapters
    inject_adapters(model, {'type': 'LoRA', 'rank': 2, 'targets': [r'stem\.0']})


class SamePadConv(nn.Conv2d):
    """Overrides forward with different semantics (like timm's Conv2dSame)."""

    def forward(self, x):
        return self._conv_forward(F.pad(x, (0, 1, 0, 1)), self.weight, self.bias)


class TaggedConv(nn.Conv2d):
    """A subclass that keeps nn.Conv2d.forward: supported."""


def test_subclasses():
    model = nn.Sequential(TaggedConv(3, 4, 3), SamePadConv(4, 4, 2))
    msg = _error({'type': 'FLoRA', 'rank': 2}, model)
    assert "'1'" in msg and 'SamePadConv' in msg and 'overrides forward()' in msg
    assert "cfg['exclude']" in msg
    layers = inject_adapters(model, {'type': 'FLoRA', 'rank': 2, 'exclude': ['1']})
    assert isinstance(layers['0'], TaggedConv) and set(layers) == {'0'}


def test_multihead_attention_out_proj_is_rejected():
    model = nn.Sequential(nn.MultiheadAttention(8, 2))
    msg = _error({'type': 'LoRA', 'rank': 2, 'targets': [r'0\.out_proj']}, model)
    assert 'out_proj' in msg and 'MultiheadAttention' in msg


def test_root_module_can_be_adapted():
    layer = nn.Linear(6, 4)
    assert set(inject_adapters(layer, {'type': 'DoRA', 'rank': 2})) == {''}
    merge_adapters(layer, unload=True)
    assert type(layer) is nn.Linear and set(layer.state_dict()) == {'weight', 'bias'}


def _trainable(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_freeze_policies():
    model = _net()
    n_params = sum(p.numel() for p in model.parameters())
    with pytest.raises(ValueError, match='no adapters'):
        freeze_base(model, 'FLoRA')
    assert freeze_base(model, 'Full') == n_params
    assert freeze_base(model, 'Frozen') == 0
    n_bias = freeze_base(model, 'BitFit')
    assert _trainable(model) == {n for n, _ in model.named_parameters() if n.endswith('bias')}
    assert n_bias == sum(p.numel() for n, p in model.named_parameters() if n.endswith('bias'))
    layers = inject_adapters(model, {'type': 'FLoRA', 'rank': 2})
    n_adapter = sum(p.numel() for m in layers.values() for _, p in m.adapter_named_parameters())
    assert freeze_base(model, 'FLoRA') == n_adapter
    assert all(n.split('.')[-1].startswith('flora_') or '.flora_factors.' in n
               for n in _trainable(model))
    # trainable: module names (whole subtree) and parameter names
    count = freeze_base(model, 'FLoRA', trainable=['head', r'stem\.1\.weight'])
    trainable = _trainable(model)
    assert {'head.weight', 'head.bias', 'stem.1.weight'} <= trainable
    assert 'stem.1.bias' not in trainable
    assert count == n_adapter + 5 * 8 + 5 + 8  # head weight + head bias + stem.1.weight
    with pytest.raises(ValueError, match=re.escape("'neck'")):
        freeze_base(model, 'FLoRA', trainable=['neck'])


def test_deepcopy_and_pickle():
    import io
    model = _net()
    inject_adapters(model, {'type': 'FLoRA', 'rank': 2})
    clone = copy.deepcopy(model)
    x = torch.randn(1, 3, 16, 16)
    assert torch.equal(clone(x), model(x))
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    restored = torch.load(buffer, weights_only=False)
    assert torch.equal(restored(x), model(x))


def test_mmcv_wrappers_are_supported():
    wrappers = pytest.importorskip('mmcv.cnn.bricks.wrappers')
    model = nn.Sequential(wrappers.Conv2d(3, 8, 3), nn.Flatten(1), wrappers.Linear(8 * 9, 4))
    x = torch.randn(2, 3, 5, 5)
    expected = model(x)
    layers = inject_adapters(model, {'type': 'FLoRA', 'rank': 2})
    assert set(layers) == {'0', '2'} and isinstance(layers['0'], wrappers.Conv2d)
    assert torch.equal(model(x), expected)


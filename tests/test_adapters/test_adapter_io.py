"""Adapter state dicts, safetensors + JSON checkpoints, unloading."""
import json
import os

import pytest
import torch
import torch.nn as nn

from flora_mm import __version__
from flora_mm.adapters import ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, adapter_layers, \
    adapter_state_dict, inject_adapters, load_adapter_state_dict, load_adapters, merge_adapters, \
    save_adapters

from .helpers import randomize_adapters


def _plain(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 5, padding=2, groups=8),
                         nn.Conv2d(8, 8, 3, padding=1, groups=2, padding_mode='reflect'),
                         nn.Flatten(1), nn.Linear(8 * 16, 4))


def _adapted(seed=0):
    """Mixed methods: FLoRA on the convs, DoRA on the head (with its own rank)."""
    model = _plain(seed)
    inject_adapters(model, {'type': 'FLoRA', 'rank': 3, 'kernel_rank': 2, 'scale': 0.4,
                            'targets': [r'[0-2]'], 'rank_pattern': {'1': 2},
                            'forward_mode': 'factorized'})
    inject_adapters(model, {'type': 'DoRA', 'rank': 2, 'alpha': 4, 'targets': ['4']})
    torch.manual_seed(seed + 1)
    for layer in adapter_layers(model).values():
        randomize_adapters(layer)
    return model


X = torch.randn(2, 3, 4, 4)


def test_state_dict_keys_and_round_trip():
    model = _adapted()
    state = adapter_state_dict(model)
    assert set(state) == {'0.flora_core', '0.flora_factors.0', '0.flora_factors.1',
                          '0.flora_factors.2', '0.flora_factors.3', '1.flora_core',
                          '1.flora_factors.0', '1.flora_factors.1', '1.flora_factors.2',
                          '1.flora_factors.3', '2.flora_core', '2.flora_factors.0',
                          '2.flora_factors.1', '2.flora_factors.2', '2.flora_factors.3',
                          '4.dora_A', '4.dora_B', '4.dora_magnitude'}
    other = _adapted(seed=5)
    for name, module in other.named_modules():  # same frozen base, different adapters
        if hasattr(module, 'weight'):
            module.weight.data.copy_(model.get_submodule(name).weight)
            module.bias.data.copy_(model.get_submodule(name).bias)
    assert not torch.equal(other(X), model(X))
    assert load_adapter_state_dict(other, state) == ([], [])
    assert torch.equal(other(X), model(X))


def test_strict_errors_and_non_strict():
    model = _adapted()
    state = dict(adapter_state_dict(model))
    core = state.pop('0.flora_core')
    state['9.lora_A'] = torch.zeros(1)
    with pytest.raises(RuntimeError) as info:
        load_adapter_state_dict(model, state)
    assert "'0.flora_core'" in str(info.value) and "'9.lora_A'" in str(info.value)
    assert load_adapter_state_dict(model, state, strict=False) == (['0.flora_core'], ['9.lora_A'])
    state = {'0.flora_core': torch.zeros(4, 3, 2, 2)}
    with pytest.raises(RuntimeError) as info:
        load_adapter_state_dict(model, state, strict=False)
    msg = str(info.value)
    assert "'0.flora_core'" in msg and '(4, 3, 2, 2)' in msg and str(tuple(core.shape)) in msg


def test_load_into_merged_model_stays_merged():
    model, source = _adapted(), _adapted()
    expected = source(X)
    merge_adapters(model)
    load_adapter_state_dict(model, adapter_state_dict(source))
    assert all(layer.merged for layer in adapter_layers(model).values())
    torch.testing.assert_close(model(X), expected, rtol=1e-5, atol=1e-5)


def test_save_load_round_trip_on_fresh_model(tmp_path):
    pytest.importorskip('safetensors')
    model = _adapted()
    expected = model(X)
    save_adapters(model, str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == [ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME]
    config = json.loads((tmp_path / ADAPTER_CONFIG_NAME).read_text())
    assert config['flora_mm_version'] == __version__
    assert config['layers']['1'] == {
        'type': 'FLoRA', 'rank': 2, 'kernel_rank': 2, 'ranks': [2, 1, 2, 2], 'scale': 0.4,
        'dropout': 0.0, 'forward_mode': 'factorized', 'weight_shape': [8, 1, 5, 5],
        'base_class': 'torch.nn.modules.conv.Conv2d'}
    assert config['layers']['4']['type'] == 'DoRA' and config['layers']['4']['alpha'] == 4.0
    fresh = _plain()
    loaded = load_adapters(fresh, str(tmp_path))
    assert set(loaded) == {'0', '1', '2', '4'}
    assert fresh[1].forward_mode == 'factorized' and fresh[4].adapter_scale == 2.0
    assert torch.equal(fresh(X), expected)
    # loading again into the now-adapted model is allowed (same config)
    load_adapters(fresh, str(tmp_path))
    assert torch.equal(fresh(X), expected)


def test_load_adapters_rejects_other_architecture(tmp_path):
    pytest.importorskip('safetensors')
    save_adapters(_adapted(), str(tmp_path))
    other = _plain()
    other[4] = nn.Linear(8 * 16, 7)
    with pytest.raises(ValueError) as info:
        load_adapters(other, str(tmp_path))
    assert "'4'" in str(info.value) and '[7, 128]' in str(info.value)
    assert adapter_layers(other) == {}  # nothing half-applied


def test_interrupted_save_keeps_previous_files(tmp_path, monkeypatch):
    safetensors_torch = pytest.importorskip('safetensors.torch')
    model = _adapted()
    save_adapters(model, str(tmp_path))
    before = (tmp_path / ADAPTER_WEIGHTS_NAME).read_bytes()

    def crash(tensors, filename, metadata=None):
        with open(filename, 'wb') as f:
            f.write(b'half a file')
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors_torch, 'save_file', crash)
    with torch.no_grad():
        model[0].flora_core.add_(1)
    with pytest.raises(KeyboardInterrupt):
        save_adapters(model, str(tmp_path))
    assert (tmp_path / ADAPTER_WEIGHTS_NAME).read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == [ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME]


def test_unload_gives_plain_model_state_dict():
    model = _adapted()
    expected = model(X)
    merge_adapters(model, unload=True)
    assert adapter_layers(model) == {}
    assert [type(m) for m in model] == [type(m) for m in _plain()]
    plain = _plain(seed=3)
    assert plain.load_state_dict(model.state_dict(), strict=True)
    torch.testing.assert_close(plain(X), expected, rtol=1e-5, atol=1e-5)
    assert all(p.requires_grad for p in model.parameters())  # original flags restored

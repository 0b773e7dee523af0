"""Adapters to and from Hugging Face peft, checked against peft itself (a pinned test dependency).

Both directions on the same base weights in float64: flora_mm adapters saved with
``format='peft'`` and loaded by ``PeftModel.from_pretrained``, and peft adapters saved by
``save_pretrained`` and loaded by ``load_adapters``, give the outputs of the library that
trained them. Adapter values are random (B and the magnitude included), so that the adapted
output differs from the base output by far more than the tolerance.
"""
import copy
import json
import math
import os
import sys
from collections import OrderedDict

import pytest
import torch
import torch.nn as nn

from flora_mm.adapters import ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, adapter_layers, \
    inject_adapters, load_adapters, save_adapters

from .helpers import randomize_adapters

os.environ.setdefault('HF_HUB_OFFLINE', '1')  # everything here is local; never ask the hub
# tools/setup_env.sh installs peft off the default sys.path (requirements/peft.txt says why).
PEFT_SITE = os.path.join(sys.prefix, 'peft-site')
if not os.path.isdir(PEFT_SITE):
    raise ImportError(f'no {PEFT_SITE}: run `bash tools/setup_env.sh`, which installs the peft '
                      'these tests compare with')
sys.path.append(PEFT_SITE)
import peft  # noqa: E402
import safetensors.torch as safetensors_torch  # noqa: E402

TOL = dict(rtol=1e-10, atol=1e-10)


class Net(nn.Module):
    """Linear and conv layers of one dimensionality (1x1, 3x3, strided, depthwise), with a
    top-level ``proj`` whose name is also the tail of ``head.proj`` (peft matches suffixes)."""

    def __init__(self, dims=2):
        super().__init__()
        conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims]
        self.dims = dims
        self.stem = conv(3, 8, 3, padding=1)
        self.blocks = nn.Sequential(conv(8, 8, 1), nn.GELU(), conv(8, 6, 3, stride=2, padding=1))
        self.dw = conv(6, 6, 3, padding=1, groups=6)
        self.proj = nn.Linear(6, 6)
        self.head = nn.Sequential(OrderedDict(proj=nn.Linear(6, 6), out=nn.Linear(6, 4)))

    def forward(self, x):
        x = self.dw(self.blocks(self.stem(x)))
        return self.head(self.proj(x.mean(tuple(range(2, 2 + self.dims)))))


def _base(dims=2, seed=0):
    torch.manual_seed(seed)
    return Net(dims).double().eval()


def _input(dims=2):
    return torch.randn(2, 3, *[6] * dims, dtype=torch.float64)


# everything peft's LoRA can hold: not the depthwise conv, not head.proj (so the exact
# target list needs a regex); per-layer ranks, a rank clipped by its weight (head.out: 4)
LORA_TARGETS = [r'stem', r'blocks\.[02]', r'proj', r'head\.out']


def _flora_lora(base, method):
    model = copy.deepcopy(base)
    inject_adapters(model, {'type': method, 'rank': 3, 'alpha': 5, 'targets': LORA_TARGETS,
                            'rank_pattern': {r'blocks\.0': 2, r'head\.out': 7}})
    torch.manual_seed(1)
    for layer in adapter_layers(model).values():
        randomize_adapters(layer)
    return model


def _peft_layers(peft_model):
    return {name.removeprefix('base_model.model.'): m
            for name, m in peft_model.named_modules()
            if isinstance(m, peft.tuners.tuners_utils.BaseTunerLayer)}


def _assert_same_adapted_outputs(actual, expected, base_out):
    torch.testing.assert_close(actual, expected, **TOL)
    assert (expected - base_out).abs().max() > 1e6 * TOL['atol']  # the adapters do change it


def _assert_writes_peft_files(model, tmp_path):
    """flora_mm writes the adapters of ``model`` back under peft's own keys and shapes,
    tensor for tensor what peft wrote to ``tmp_path / 'peft'``."""
    save_adapters(model, str(tmp_path / 'again'), format='peft')
    ours = safetensors_torch.load_file(str(tmp_path / 'again' / ADAPTER_WEIGHTS_NAME))
    theirs = safetensors_torch.load_file(str(tmp_path / 'peft' / ADAPTER_WEIGHTS_NAME))
    assert sorted(ours) == sorted(theirs)
    for key in theirs:
        assert torch.equal(ours[key], theirs[key]), key


@pytest.mark.parametrize('method', ['LoRA', 'DoRA'])
@pytest.mark.parametrize('dims', [1, 2, 3])
def test_flora_to_peft(tmp_path, method, dims):
    base = _base(dims)
    x = _input(dims)
    model = _flora_lora(base, method)
    save_adapters(model, str(tmp_path), format='peft')
    assert sorted(os.listdir(tmp_path)) == [ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME]
    config = json.loads((tmp_path / ADAPTER_CONFIG_NAME).read_text())
    assert (config['peft_type'], config['use_dora'], config['r']) == ('LORA', method == 'DoRA', 3)
    assert config['rank_pattern'] == {'blocks.0': 2, 'head.out': 4}
    # head.out: s = 5 / 7 on its clipped rank 4, so peft's alpha there is 20 / 7
    assert config['lora_alpha'] == 5 and list(config['alpha_pattern']) == ['head.out']

    # 'proj' as a list entry would also select head.proj (peft matches suffixes)
    assert config['target_modules'] == r'(?:stem|blocks\.0|blocks\.2|proj|head\.out)'

    peft_model = peft.PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path)).eval()
    assert set(_peft_layers(peft_model)) == set(adapter_layers(model))
    with torch.no_grad():
        _assert_same_adapted_outputs(peft_model(x), model(x), base(x))


def test_flora_to_peft_pattern_keys_select_one_module(tmp_path):
    base = _base()
    x = _input()
    model = copy.deepcopy(base)
    inject_adapters(model, {'type': 'LoRA', 'rank': 3, 'targets': ['stem', 'proj', r'head\.proj'],
                            'rank_pattern': {'proj': 2}})
    for layer in adapter_layers(model).values():
        randomize_adapters(layer)
    save_adapters(model, str(tmp_path), format='peft')
    config = json.loads((tmp_path / ADAPTER_CONFIG_NAME).read_text())
    assert config['target_modules'] == ['head.proj', 'proj', 'stem']
    # a key 'proj' would also set head.proj's rank in peft
    assert config['rank_pattern'] == {'^proj': 2} and config['alpha_pattern'] == {'^proj': 2}
    peft_model = peft.PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path)).eval()
    assert _peft_layers(peft_model)['head.proj'].r == {'default': 3}
    with torch.no_grad():
        _assert_same_adapted_outputs(peft_model(x), model(x), base(x))


@pytest.mark.parametrize('method', ['LoRA', 'DoRA'])
@pytest.mark.parametrize('rslora', [False, True])
def test_peft_to_flora(tmp_path, method, rslora):
    base = _base()
    x = _input()
    config = peft.LoraConfig(
        r=3, lora_alpha=5, target_modules=['stem', 'blocks.0', 'blocks.2', 'out'],
        rank_pattern={'stem': 2}, alpha_pattern={'blocks.2': 1.5}, use_rslora=rslora,
        use_dora=method == 'DoRA')
    peft_model = peft.get_peft_model(copy.deepcopy(base), config)
    torch.manual_seed(2)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if 'lora_' in name:
                param.copy_(param * (1 + 0.2 * torch.rand_like(param)) if 'magnitude' in name
                            else torch.randn_like(param) * 0.5)
    peft_model.eval()
    peft_model.save_pretrained(str(tmp_path / 'peft'))

    model = copy.deepcopy(base)
    loaded = load_adapters(model, str(tmp_path / 'peft'))
    assert set(loaded) == {'stem', 'blocks.0', 'blocks.2', 'head.out'}
    assert {type(layer).__name__ for layer in loaded.values()} == {
        f'{method}Conv2d', f'{method}Linear'}
    assert loaded['stem'].adapter_scale == (5 / math.sqrt(2) if rslora else 5 / 2)
    assert loaded['blocks.2'].adapter_scale == (1.5 / math.sqrt(3) if rslora else 1.5 / 3)
    with torch.no_grad():
        _assert_same_adapted_outputs(model(x), peft_model(x), base(x))

    # and back: flora_mm writes the tensors under peft's own keys and shapes
    _assert_writes_peft_files(model, tmp_path)


def test_timm_convnextv2_round_trip(tmp_path):
    timm = pytest.importorskip('timm')
    torch.manual_seed(0)
    base = timm.create_model('convnextv2_atto', pretrained=False, num_classes=5).double().eval()
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    model = copy.deepcopy(base)
    inject_adapters(model, {'type': 'LoRA', 'rank': 4, 'targets': [r'stages\.[23]\..*'],
                            'exclude': [r'.*conv_dw']})
    for layer in adapter_layers(model).values():
        randomize_adapters(layer, std=0.2)
    save_adapters(model, str(tmp_path), format='peft')
    config = json.loads((tmp_path / ADAPTER_CONFIG_NAME).read_text())
    assert config['target_modules'] == sorted(adapter_layers(model))
    peft_model = peft.PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path)).eval()
    assert set(_peft_layers(peft_model)) == set(adapter_layers(model))
    with torch.no_grad():
        _assert_same_adapted_outputs(peft_model(x), model(x), base(x))

    # the depthwise 7x7 convs are grouped: refused by name
    plain = copy.deepcopy(base)
    inject_adapters(plain, {'type': 'LoRA', 'rank': 4, 'targets': [r'stages\.3\..*']})
    with pytest.raises(ValueError, match=r"'stages\.3\.blocks\.0\.conv_dw' \(LoRAConv2d, weight "
                                         r'shape \(320, 1, 7, 7\)\): groups=320'):
        save_adapters(plain, str(tmp_path / 'dw'), format='peft')
    assert not (tmp_path / 'dw').exists()


@pytest.mark.parametrize('kwargs, why', [
    (dict(padding=1, groups=2), 'groups=2'),
    (dict(padding=2, dilation=2), r'dilation=\(2, 2\)'),
    (dict(padding=1, padding_mode='reflect'), "padding_mode='reflect'"),
])
def test_save_refuses_layers_peft_runs_differently(tmp_path, kwargs, why):
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 3, **kwargs))
    inject_adapters(model, {'type': 'DoRA', 'rank': 2})
    with pytest.raises(ValueError, match=rf"'1' \(DoRAConv2d, weight shape \(8, \d, 3, 3\)\): "
                                         rf'{why}') as info:
        save_adapters(model, str(tmp_path / 'out'), format='peft')
    assert "'0'" not in str(info.value)
    assert not (tmp_path / 'out').exists()


def test_save_refuses_flora_and_mixed_methods(tmp_path):
    model = _base()
    inject_adapters(model, {'type': 'FLoRA', 'rank': 2, 'targets': ['stem']})
    with pytest.raises(ValueError, match=r"peft has no \['FLoRA'\] method.*'stem'"):
        save_adapters(model, str(tmp_path), format='peft')
    model = _base()
    inject_adapters(model, {'type': 'LoRA', 'rank': 2, 'targets': ['stem']})
    inject_adapters(model, {'type': 'DoRA', 'rank': 2, 'targets': ['proj']})
    with pytest.raises(ValueError, match=r"one method.*'LoRA': \['stem'\]"):
        save_adapters(model, str(tmp_path), format='peft')
    with pytest.raises(ValueError, match="format='safetensors'"):
        save_adapters(model, str(tmp_path), format='safetensors')
    assert os.listdir(tmp_path) == []


def _peft_dir(tmp_path, base, config, name='peft'):
    peft_model = peft.get_peft_model(copy.deepcopy(base), config)
    peft_model.save_pretrained(str(tmp_path / name))
    return str(tmp_path / name)


def _assert_untouched(model, base):
    assert adapter_layers(model) == {}
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                  base.state_dict().values()))


def test_load_rejects_other_peft_methods(tmp_path):
    base = _base()
    path = _peft_dir(tmp_path, base, peft.IA3Config(target_modules=['stem', 'proj'],
                                                    feedforward_modules=['proj']))
    model = copy.deepcopy(base)
    with pytest.raises(ValueError, match=r"peft_type 'IA3' has no flora_mm method"):
        load_adapters(model, path)
    _assert_untouched(model, base)


def test_load_rejects_missing_modules_and_layers_it_cannot_hold(tmp_path):
    base = _base()
    path = _peft_dir(tmp_path, base, peft.LoraConfig(r=2, target_modules=['stem', 'proj']))
    other = _base()
    del other.proj
    with pytest.raises(ValueError, match=r"has no modules \['proj'\]"):
        load_adapters(other, path)
    assert adapter_layers(other) == {}

    # peft takes a grouped conv when its rank divides by the groups; flora_mm's grouped LoRA
    # is another update
    path = _peft_dir(tmp_path, base, peft.LoraConfig(r=6, target_modules=['stem', 'dw']), 'dw')
    model = copy.deepcopy(base)
    with pytest.raises(ValueError, match=r"'dw' \(Conv2d, weight shape \(6, 1, 3, 3\)\): groups=6"):
        load_adapters(model, path)
    _assert_untouched(model, base)

    # a rank above what the weight allows: flora_mm would clip it
    path = _peft_dir(tmp_path, base, peft.LoraConfig(r=2, target_modules=['stem', 'out'],
                                                     rank_pattern={'out': 5}), 'big')
    with pytest.raises(ValueError, match=r"'head\.out' \(Linear, weight shape \(4, 6\)\): rank 5 "
                                         r'is above the 4'):
        load_adapters(model, path)
    _assert_untouched(model, base)

    path = _peft_dir(tmp_path, base, peft.LoraConfig(r=2, target_modules=['stem'],
                                                     bias='lora_only'), 'bias')
    with pytest.raises(ValueError, match=r"does not have: \{'bias': 'lora_only'\}"):
        load_adapters(model, path)
    _assert_untouched(model, base)


def test_load_rejects_foreign_tensors_and_shapes(tmp_path):
    base = _base()
    save_adapters(_flora_lora(base, 'LoRA'), str(tmp_path), format='peft')
    weights = str(tmp_path / ADAPTER_WEIGHTS_NAME)
    tensors = safetensors_torch.load_file(weights)
    model = copy.deepcopy(base)

    safetensors_torch.save_file({**tensors, 'base_model.model.stem.bias': torch.zeros(8)}, weights)
    with pytest.raises(ValueError, match=r"not LoRA adapter .*'base_model\.model\.stem\.bias'"):
        load_adapters(model, str(tmp_path))
    _assert_untouched(model, base)

    # head.out's B has one rank too many
    key = 'base_model.model.head.out.lora_B.weight'
    safetensors_torch.save_file({**tensors, key: torch.zeros(4, 5, dtype=torch.float64)}, weights)
    with pytest.raises(ValueError, match=r"'head\.out'.*'lora_B': \(4, 5\)"):
        load_adapters(model, str(tmp_path))
    _assert_untouched(model, base)


def test_load_failure_while_wrapping_leaves_the_model_as_it_was(tmp_path, monkeypatch):
    from flora_mm.adapters import peft_format
    base = _base()
    save_adapters(_flora_lora(base, 'DoRA'), str(tmp_path), format='peft')
    model = copy.deepcopy(base)
    wrap = peft_format.wrap_layer

    def wrap_then_fail(module, *args, **kwargs):
        if module is model.head.out:  # the last one, after the others are wrapped
            raise KeyboardInterrupt
        return wrap(module, *args, **kwargs)

    monkeypatch.setattr(peft_format, 'wrap_layer', wrap_then_fail)
    with pytest.raises(KeyboardInterrupt):
        load_adapters(model, str(tmp_path))
    _assert_untouched(model, base)


# LoHa and LoKr: every layer of Net, the depthwise conv included (peft runs their update as
# F.conv with the layer's groups); Conv1d LoKr flat at rank 1 (peft runs a full lokr_w2 and
# lokr_t2 wrong there: refused, below)
LYCORIS_CASES = [
    ('LoHa', {'use_effective_conv2d': True}, 2, 2),
    ('LoHa', {'use_effective_conv2d': True}, 1, 2),
    ('LoHa', {}, 2, 2),
    ('LoKr', {'use_effective_conv2d': True, 'decompose_both': True}, 2, 2),
    ('LoKr', {'decompose_factor': 2}, 2, 3),
    ('LoKr', {}, 1, 1),
]


def _peft_config(method, rank, options, **kwargs):
    cls = {'LoHa': peft.LoHaConfig, 'LoKr': peft.LoKrConfig}[method]
    return cls(r=rank, alpha=1.5, target_modules=[n for n, m in Net().named_modules()
                                                   if isinstance(m, (nn.Linear, nn.Conv1d,
                                                                     nn.Conv2d))],
               **options, **kwargs)


@pytest.mark.parametrize('method, options, dims, rank', LYCORIS_CASES)
def test_lycoris_flora_to_peft(tmp_path, method, options, dims, rank):
    base = _base(dims)
    x = _input(dims)
    model = copy.deepcopy(base)
    inject_adapters(model, {'type': method, 'rank': rank, 'alpha': 1.5, **options,
                            'rank_pattern': {r'head\.out': 1}})
    torch.manual_seed(1)
    for layer in adapter_layers(model).values():
        randomize_adapters(layer, std=0.3)
    save_adapters(model, str(tmp_path), format='peft')
    config = json.loads((tmp_path / ADAPTER_CONFIG_NAME).read_text())
    assert config['peft_type'] == method.upper() and config['r'] == rank
    assert config['rank_pattern'] == ({} if rank == 1 else {'head.out': 1})
    assert config['alpha'] == 1.5 and config['alpha_pattern'] == {}
    assert all(config[k] == v for k, v in options.items())

    peft_model = peft.PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path)).eval()
    assert set(_peft_layers(peft_model)) == set(adapter_layers(model))
    with torch.no_grad():
        _assert_same_adapted_outputs(peft_model(x), model(x), base(x))


@pytest.mark.parametrize('method, options, dims, rank', LYCORIS_CASES)
def test_lycoris_peft_to_flora(tmp_path, method, options, dims, rank):
    base = _base(dims)
    x = _input(dims)
    config = _peft_config(method, rank, options, rank_pattern={'out': 1},
                          alpha_pattern={'stem': 4.0}, init_weights=False)  # all random
    torch.manual_seed(2)
    peft_model = peft.get_peft_model(copy.deepcopy(base), config).eval()
    peft_model.save_pretrained(str(tmp_path / 'peft'))

    model = copy.deepcopy(base)
    loaded = load_adapters(model, str(tmp_path / 'peft'))
    assert set(loaded) == set(_peft_layers(peft_model))
    assert loaded['stem'].adapter_scale == 4.0 / rank and loaded['head.out'].adapter_rank == 1
    with torch.no_grad():
        _assert_same_adapted_outputs(model(x), peft_model(x), base(x))

    _assert_writes_peft_files(model, tmp_path)


def test_lokr_conv1d_with_a_full_w2_or_a_core_is_refused_both_ways(tmp_path):
    base = _base(dims=1)
    model = copy.deepcopy(base)
    inject_adapters(model, {'type': 'LoKr', 'rank': 4, 'targets': ['stem', 'proj']})
    inject_adapters(model, {'type': 'LoKr', 'rank': 1, 'targets': [r'blocks\.2'],
                            'use_effective_conv2d': True})
    assert model.stem.lokr_w2.shape == (4, 3, 3) and model.blocks[2].lokr_t2.shape == (1, 1, 3)
    with pytest.raises(ValueError, match=r"'stem' \(LoKrConv1d, weight shape \(8, 3, 3\)\): a "
                                         r'full lokr_w2 on a Conv1d') as info:
        save_adapters(model, str(tmp_path / 'out'), format='peft')
    assert "'blocks.2' (LoKrConv1d, weight shape (6, 8, 3)): lokr_t2" in str(info.value)
    assert "'proj'" not in str(info.value) and not (tmp_path / 'out').exists()

    path = _peft_dir(tmp_path, base, peft.LoKrConfig(r=4, target_modules=['stem', 'proj']))
    plain = copy.deepcopy(base)
    with pytest.raises(ValueError, match=r"'stem' \(Conv1d, weight shape \(8, 3, 3\)\): a full"):
        load_adapters(plain, path)
    _assert_untouched(plain, base)


def test_lycoris_refusals(tmp_path):
    model = _base(dims=3)
    inject_adapters(model, {'type': 'LoHa', 'rank': 2, 'targets': ['stem', 'proj']})
    with pytest.raises(ValueError, match=r"'stem' \(LoHaConv3d, .*Linear, Conv1d and Conv2d only"):
        save_adapters(model, str(tmp_path), format='peft')

    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, padding_mode='circular'))
    inject_adapters(model, {'type': 'LoKr', 'rank': 2})
    with pytest.raises(ValueError, match=r"'0' \(LoKrConv2d, .*padding_mode='circular'"):
        save_adapters(model, str(tmp_path), format='peft')

    # peft has one use_effective_conv2d, the one most layers fit (2 convs with a kernel and 3
    # Linears, where it changes nothing): the conv that differs is refused
    model = _base()
    inject_adapters(model, {'type': 'LoHa', 'rank': 2, 'use_effective_conv2d': True,
                            'targets': ['stem', r'blocks\.2']})
    inject_adapters(model, {'type': 'LoHa', 'rank': 2, 'targets': ['dw', 'proj', r'head\..*']})
    with pytest.raises(ValueError, match=r"'dw' \(LoHaConv2d, .*one \{'use_effective_conv2d': "
                                         r"True\}") as info:
        save_adapters(model, str(tmp_path), format='peft')
    assert "'proj'" not in str(info.value) and "'stem'" not in str(info.value)
    assert os.listdir(tmp_path) == []

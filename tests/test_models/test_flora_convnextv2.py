"""FLoRAConvNeXtV2: shapes, pretrained loading against timm, adapters, checkpointing, builds."""
import logging
import math
import re

import pytest
import timm
import torch
import torch.nn as nn
from mmengine.logging import MMLogger

import flora_mm  # noqa: F401  (compat + registration)
from flora_mm.adapters import count_adapter_params, freeze_base, inject_adapters
from flora_mm.models import FLoRAConvNeXtV2
from flora_mm.models.backbones.convnextv2_checkpoint import load_pretrained

# Stage widths of timm's convnextv2_<arch> (independent of the code under test).
WIDTHS = {'atto': 40, 'femto': 48, 'pico': 64, 'nano': 80, 'tiny': 96}
ADAPTER = dict(type='FLoRA', rank=4, kernel_rank=2, scale=0.4)
# the output norms of the backbone (not in timm's classification model)
NORM_KEYS = {f'norm{i}.{k}' for i in range(4) for k in ('weight', 'bias')}


@pytest.fixture(scope='module')
def timm_atto_file(tmp_path_factory):
    """A randomly initialised timm convnextv2_atto state dict (with classifier) on disk."""
    torch.manual_seed(0)
    net = timm.create_model('convnextv2_atto', pretrained=False)
    # non-trivial GRN / norm parameters, so a mix-up of gamma and beta would show
    with torch.no_grad():
        for name, p in net.named_parameters():
            if p.ndim == 1:
                p.normal_(0.1, 0.5)
    path = tmp_path_factory.mktemp('weights') / 'convnextv2_atto_timm.pth'
    torch.save(net.state_dict(), path)
    return path, net.state_dict()


@pytest.fixture(scope='module')
def timm_reference(timm_atto_file):
    """timm's own features_only model with the same weights."""
    path, _ = timm_atto_file
    return timm.create_model('convnextv2_atto', features_only=True, pretrained=True,
                             pretrained_cfg_overlay=dict(file=str(path))).eval()


def _input(size=64):
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))


def _capture_log():
    records = []

    class Handler(logging.Handler):

        def emit(self, record):
            records.append(record.getMessage())

    handler = Handler()
    MMLogger.get_current_instance().addHandler(handler)
    return records, handler


@pytest.mark.parametrize('arch,out_indices', [
    ('atto', (0, 1, 2, 3)), ('atto', (1, 3)), ('atto', (2, )), ('femto', (0, 1, 2, 3)),
    ('pico', (0, 3)), ('nano', (0, 1, 2, 3))])
def test_output_shapes(arch, out_indices):
    model = FLoRAConvNeXtV2(arch=arch, out_indices=out_indices).eval()
    width = WIDTHS[arch]
    assert model.out_channels == tuple(width * 2**i for i in out_indices)
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 64, 96))
    assert [tuple(o.shape) for o in outs] == [(1, width * 2**i, 64 // 4 // 2**i,
                                               96 // 4 // 2**i) for i in out_indices]


def test_tiny_channels_and_depths():
    model = FLoRAConvNeXtV2(arch='tiny')
    assert model.out_channels == (96, 192, 384, 768)
    assert model.depths == (3, 3, 9, 3)


def _channel_norm(x, weight=None, bias=None, eps=1e-6):
    """LayerNorm over the channels of an NCHW map, written out."""
    mean = x.mean(1, keepdim=True)
    out = (x - mean) / torch.sqrt(x.var(1, unbiased=False, keepdim=True) + eps)
    if weight is not None:
        out = out * weight[:, None, None] + bias[:, None, None]
    return out


def test_pretrained_timm_state_dict_is_bit_identical(timm_atto_file, timm_reference):
    """Stage outputs equal timm's features bit for bit; the outputs are them normalized."""
    path, _ = timm_atto_file
    model = FLoRAConvNeXtV2(arch='atto', pretrained=str(path)).eval()
    x = _input()
    stage_outs = []
    for i in range(4):
        getattr(model, f'norm{i}').register_forward_pre_hook(
            lambda m, args: stage_outs.append(args[0]))
    with torch.no_grad():
        ours, ref = model(x), timm_reference(x)
    assert len(ours) == len(ref) == len(stage_outs) == 4
    for raw, out, b in zip(stage_outs, ours, ref):
        assert torch.equal(raw, b)
        torch.testing.assert_close(out, _channel_norm(b), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('wrap', ['model', 'state_dict', 'mmdet', 'ddp', 'safetensors'])
def test_pretrained_wrapped_formats(tmp_path, timm_atto_file, wrap):
    _, state = timm_atto_file
    if wrap == 'model':
        obj = {'model': state, 'epoch': 3}
    elif wrap == 'state_dict':
        obj = {'state_dict': state, 'meta': {'epoch': 3}}
    elif wrap == 'mmdet':  # a detector checkpoint: backbone.* plus neck/head keys
        obj = {'state_dict': {**{f'backbone.{k}': v for k, v in state.items()},
                              'neck.conv.weight': torch.zeros(2, 2)}}
    elif wrap == 'ddp':
        obj = {f'module.{k}': v for k, v in state.items()}
    if wrap == 'safetensors':
        from safetensors.torch import save_file
        path = tmp_path / 'w.safetensors'
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        path = tmp_path / 'w.pth'
        torch.save(obj, path)
    model = FLoRAConvNeXtV2(arch='atto', pretrained=str(path))
    own = model.state_dict()
    assert set(own) == {k for k in state if not k.startswith('head.')} | NORM_KEYS
    for key in own.keys() - NORM_KEYS:
        assert torch.equal(own[key], state[key]), key


def _to_official(state):
    """timm -> official ConvNeXt-V2 names and shapes, written independently of the loader."""
    out = {}
    for key, v in state.items():
        if key.startswith('head.'):
            continue
        parts = key.split('.')
        if parts[0] == 'stem':
            new = f'downsample_layers.0.{parts[1]}.{parts[2]}'
        elif parts[2] == 'downsample':
            new = f'downsample_layers.{parts[1]}.{parts[3]}.{parts[4]}'
        else:  # stages.i.blocks.j.<layer>...
            stage, block, rest = parts[1], parts[3], parts[4:]
            layer = {'conv_dw': 'dwconv', 'norm': 'norm'}.get(rest[0])
            if rest[0] == 'mlp':
                layer = {'fc1': 'pwconv1', 'fc2': 'pwconv2', 'grn': 'grn'}[rest[1]]
                rest = rest[1:]
            param = rest[-1]
            if layer == 'grn':
                param = {'weight': 'gamma', 'bias': 'beta'}[param]
                v = v.reshape(1, 1, 1, -1)
            if layer in ('pwconv1', 'pwconv2') and v.ndim == 4:
                v = v[:, :, 0, 0]  # official point-wise layers are nn.Linear
            new = f'stages.{stage}.{block}.{layer}.{param}'
        out[new] = v.clone()
    out['norm.weight'] = torch.ones(320)
    out['head.weight'] = torch.zeros(1000, 320)
    return out


def _to_fcmae(official):
    """Official dense -> FCMAE sparse encoder layout (MinkowskiEngine kernel[w*k+h, in, out])."""
    out = {}
    for key, v in official.items():
        if key.startswith(('norm.', 'head.')):
            continue
        parts = key.split('.')
        is_stem = key.startswith('downsample_layers.0.')
        if not is_stem and parts[-1] == 'weight' and v.ndim == 4:
            o, i, kh, kw = v.shape
            kernel = torch.empty(kh * kw, i, o)
            for h in range(kh):
                for w in range(kw):
                    kernel[w * kh + h] = v[:, :, h, w].t()
            if '.dwconv.' in key:
                kernel = kernel[:, 0, :]  # depthwise: (k*k, C)
            out['encoder.' + '.'.join(parts[:-1] + ['kernel'])] = kernel
            continue
        if parts[-1] == 'bias' and ('.dwconv.' in key or re.match(r'downsample_layers\.[1-9]\.1\.',
                                                                  key)):
            out['encoder.' + key] = v.reshape(1, -1)  # Minkowski conv biases are (1, C)
            continue
        if '.grn.' in key:
            out['encoder.' + key] = v.reshape(1, -1)
            continue
        if (not is_stem and key.startswith('downsample_layers.')) or '.norm.' in key:
            parts.insert(-1, 'ln')
        elif '.pwconv' in key:
            parts.insert(-1, 'linear')
        out['encoder.' + '.'.join(parts)] = v
    out['decoder.0.weight'] = torch.zeros(4, 4)
    out['mask_token'] = torch.zeros(1, 512, 1, 1)
    out['pred.weight'] = torch.zeros(4, 4)
    return out


@pytest.mark.parametrize('fmt', ['official', 'fcmae'])
def test_pretrained_official_and_fcmae_layouts(tmp_path, timm_atto_file, fmt):
    _, state = timm_atto_file
    official = _to_official(state)
    obj = {'model': official if fmt == 'official' else _to_fcmae(official)}
    path = tmp_path / f'{fmt}.pt'
    torch.save(obj, path)
    records, handler = _capture_log()
    try:
        model = FLoRAConvNeXtV2(arch='atto', pretrained=str(path))
    finally:
        MMLogger.get_current_instance().removeHandler(handler)
    own = model.state_dict()
    for key in own.keys() - NORM_KEYS:
        assert torch.equal(own[key], state[key]), key
    # a classification checkpoint has no output norms: fresh (identity), not "missing"
    for i in range(4):
        assert torch.equal(own[f'norm{i}.weight'], torch.ones(40 * 2**i))
        assert torch.equal(own[f'norm{i}.bias'], torch.zeros(40 * 2**i))
    assert not any('missing keys' in r or 'unexpected keys' in r for r in records), records
    assert any('norm0.weight' in r and 'initial values' in r for r in records), records
    if fmt == 'fcmae':
        assert any('ignored' in r and 'mask_token' in r for r in records), records


def test_pretrained_reports_missing_and_unexpected_keys_by_name(tmp_path, timm_atto_file):
    _, state = timm_atto_file
    state = dict(state)
    del state['stages.3.blocks.1.conv_dw.weight']
    state['stages.9.blocks.0.extra.weight'] = torch.zeros(3)
    path = tmp_path / 'bad.pth'
    torch.save(state, path)
    records, handler = _capture_log()
    try:
        model = FLoRAConvNeXtV2(arch='atto', pretrained=str(path))
    finally:
        MMLogger.get_current_instance().removeHandler(handler)
    text = '\n'.join(records)
    assert 'missing keys' in text and 'stages.3.blocks.1.conv_dw.weight' in text
    assert 'unexpected keys' in text and 'stages.9.blocks.0.extra.weight' in text
    # everything else was loaded
    assert torch.equal(model.stages[3].blocks[0].conv_dw.weight,
                       state['stages.3.blocks.0.conv_dw.weight'])
    report = load_pretrained(FLoRAConvNeXtV2(arch='atto'), str(path), fresh=[r'norm\d\..*'])
    assert report.missing_keys == ['stages.3.blocks.1.conv_dw.weight']
    assert report.unexpected_keys == ['stages.9.blocks.0.extra.weight']
    assert sorted(report.fresh_keys) == sorted(NORM_KEYS)
    # without `fresh`, the norms are missing like any other key
    report = load_pretrained(FLoRAConvNeXtV2(arch='atto'), str(path))
    assert sorted(report.missing_keys) == sorted(
        NORM_KEYS | {'stages.3.blocks.1.conv_dw.weight'})


def test_output_norms_load_from_dense_prediction_checkpoint(tmp_path, timm_atto_file):
    """An official ConvNeXt(-V2) segmentation / detection checkpoint (official layout under
    ``backbone.``, output norms ``backbone.norm{i}``, heads) loads completely, norms included,
    and every output is LayerNorm(stage output) with those weights."""
    _, state = timm_atto_file
    gen = torch.Generator().manual_seed(3)
    norms = {f'norm{i}.{k}': torch.randn(40 * 2**i, generator=gen)
             for i in range(4) for k in ('weight', 'bias')}
    official = {k: v for k, v in _to_official(state).items()
                if not k.startswith(('norm.', 'head.'))}
    ckpt = {'state_dict': {**{f'backbone.{k}': v for k, v in {**official, **norms}.items()},
                           'decode_head.conv_seg.weight': torch.zeros(150, 512, 1, 1)},
            'meta': {}}
    path = tmp_path / 'upernet_convnextv2_atto.pth'
    torch.save(ckpt, path)
    report = load_pretrained(FLoRAConvNeXtV2(arch='atto'), str(path), fresh=[r'norm\d\..*'])
    assert report.missing_keys == report.unexpected_keys == report.fresh_keys == []
    assert report.ignored_keys == ['decode_head.conv_seg.weight']
    model = FLoRAConvNeXtV2(arch='atto', pretrained=str(path), adapter=ADAPTER).eval()
    for key, value in norms.items():
        assert torch.equal(model.state_dict()[key], value), key
    stage_outs = []
    for i in range(4):
        getattr(model, f'norm{i}').register_forward_pre_hook(
            lambda m, args: stage_outs.append(args[0]))
    with torch.no_grad():
        outs = model(_input())
    for i, (raw, out) in enumerate(zip(stage_outs, outs)):
        torch.testing.assert_close(
            out, _channel_norm(raw, norms[f'norm{i}.weight'], norms[f'norm{i}.bias']),
            rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize('adapter', [ADAPTER, dict(type='LoRA', rank=4),
                                     dict(type='DoRA', rank=4), dict(type='BitFit'),
                                     dict(type='Frozen'), dict(type='Full'), None])
def test_output_norms_train_under_every_method(adapter):
    model = FLoRAConvNeXtV2(arch='atto', out_indices=(1, 3), adapter=adapter)
    norms = {n for n, _ in model.named_parameters() if re.fullmatch(r'norm\d\..*', n)}
    assert norms == {'norm1.weight', 'norm1.bias', 'norm3.weight', 'norm3.bias'}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert norms <= trainable
    out = model(_input())
    sum(o.sum() for o in out).backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if n in norms)


@pytest.mark.slow
def test_frozen_base_is_deterministic_in_train_mode():
    """Frozen: drop path off in train mode (same output twice, equal to eval); adapters keep
    the configured drop path; a stage that gets adapters later trains again."""
    x = _input()
    frozen = FLoRAConvNeXtV2(arch='atto', drop_path_rate=0.3, adapter=dict(type='Frozen'))
    flora = FLoRAConvNeXtV2(arch='atto', drop_path_rate=0.3, adapter=ADAPTER)
    flora.load_state_dict(frozen.state_dict(), strict=False)
    for model in (frozen, flora):
        model.train()
        outs = []
        for seed in (0, 1):
            torch.manual_seed(seed)
            with torch.no_grad():
                outs.append(model(x))
        same = all(torch.equal(a, b) for a, b in zip(*outs))
        assert same == (model is frozen)
        assert all(s.training == (model is flora) for s in model.stages)
    with torch.no_grad():
        reference = frozen.eval()(x)
        assert all(torch.equal(a, b) for a, b in zip(frozen.train()(x), reference))
    # FLoRAHook-style: adapters injected into the frozen model afterwards
    inject_adapters(frozen, dict(ADAPTER, targets=[r'stages\.3\.blocks\.\d+\.mlp\.fc1']))
    freeze_base(frozen, 'FLoRA', frozen.keep_trainable)
    frozen.train()
    assert [s.training for s in frozen.stages] == [False, False, False, True]


def test_pretrained_errors(tmp_path, timm_atto_file):
    path, state = timm_atto_file
    with pytest.raises(ValueError, match=r'stem\.0\.weight: checkpoint \(40, 3, 4, 4\) vs model '
                       r'\(48, 3, 4, 4\)'):
        FLoRAConvNeXtV2(arch='femto', pretrained=str(path))
    official = tmp_path / 'official_atto.pth'
    torch.save({'model': _to_official(state)}, official)
    with pytest.raises(ValueError, match=r'official ConvNeXt-V2 checkpoint does not fit the '
                       r'model \(is `arch` right\?\)'):
        FLoRAConvNeXtV2(arch='femto', pretrained=str(official))
    with pytest.raises(FileNotFoundError, match='never downloaded'):
        FLoRAConvNeXtV2(pretrained=str(tmp_path / 'nope.pth'))
    junk = tmp_path / 'junk.pth'
    torch.save({'foo.weight': torch.zeros(2)}, junk)
    with pytest.raises(ValueError, match='no key matches the model'):
        FLoRAConvNeXtV2(pretrained=str(junk))


@pytest.mark.slow
def test_adapter_at_init_keeps_outputs_and_freezes_base(timm_atto_file):
    path, _ = timm_atto_file
    plain = FLoRAConvNeXtV2(arch='atto', pretrained=str(path)).eval()
    adapted = FLoRAConvNeXtV2(arch='atto', pretrained=str(path), adapter=ADAPTER).eval()
    x = _input()
    with torch.no_grad():
        for a, b in zip(plain(x), adapted(x)):
            assert torch.equal(a, b)
    # default targets: every Conv2d/Linear = stem + 3 downsample convs + 3 per block
    adapted_layers = count_adapter_params(adapted)['per_layer']
    n_convs = sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in plain.modules())
    assert n_convs == 1 + 3 + 3 * sum(plain.depths) == len(adapted_layers) == 40
    trainable = {n for n, p in adapted.named_parameters() if p.requires_grad}
    assert trainable - NORM_KEYS and all('.flora_' in n for n in trainable - NORM_KEYS)
    assert NORM_KEYS <= trainable
    # base weights keep their keys and pretrained values
    for key, value in plain.state_dict().items():
        assert torch.equal(adapted.state_dict()[key], value)
    # a gradient step moves the output (the adapter is live)
    adapted.train()
    sum(o.square().mean() for o in adapted(x)).backward()
    assert all(p.grad is not None for n, p in adapted.named_parameters() if p.requires_grad)


def test_adapter_targets_and_trainable():
    model = FLoRAConvNeXtV2(
        arch='atto', adapter=dict(ADAPTER, targets=[r'stages\.[23]\.blocks\.\d+\.mlp\.fc\d']),
        trainable=[r'.*\.norm\..*'])
    layers = count_adapter_params(model)['per_layer']
    assert sorted(layers) == sorted(f'stages.{s}.blocks.{b}.mlp.fc{i}'
                                    for s, n in ((2, 6), (3, 2)) for b in range(n)
                                    for i in (1, 2))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert 'stages.0.blocks.0.norm.weight' in trainable
    assert 'stages.0.blocks.0.conv_dw.weight' not in trainable
    with pytest.raises(ValueError, match='needs an `adapter`'):
        FLoRAConvNeXtV2(trainable=['.*'])


@pytest.mark.slow
def test_with_cp_same_outputs_and_grads():
    torch.manual_seed(0)
    ref = FLoRAConvNeXtV2(arch='atto', adapter=ADAPTER)
    cp = FLoRAConvNeXtV2(arch='atto', adapter=ADAPTER, with_cp=True)
    cp.load_state_dict(ref.state_dict())
    with torch.no_grad():  # non-zero cores so adapter gradients flow through the factors too
        for m in (ref, cp):
            for n, p in m.named_parameters():
                if 'flora_core' in n:
                    p.copy_(torch.linspace(-0.1, 0.1, p.numel()).reshape(p.shape))
    x = _input()
    outs = [m.train()(x) for m in (ref, cp)]
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for m, out in zip((ref, cp), outs):
        sum(o.sum() for o in out).backward()
    grads = [{n: p.grad for n, p in m.named_parameters() if p.requires_grad} for m in (ref, cp)]
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-5, atol=1e-6)


def test_drop_path_rate_and_norm_eval():
    model = FLoRAConvNeXtV2(arch='atto', drop_path_rate=0.3, norm_eval=True)
    rates = [b.drop_path.drop_prob if hasattr(b.drop_path, 'drop_prob') else 0.
             for s in model.stages for b in s.blocks]
    assert rates[0] == 0 and math.isclose(rates[-1], 0.3, rel_tol=1e-6) and rates == sorted(rates)
    model.stages[0].add_module('bn', nn.BatchNorm2d(40))
    model.train()
    assert model.training and not model.stages[0].bn.training


def test_constructor_errors():
    with pytest.raises(ValueError, match="arch='mega'"):
        FLoRAConvNeXtV2(arch='mega')
    with pytest.raises(ValueError, match='out_indices'):
        FLoRAConvNeXtV2(out_indices=(0, 4))
    with pytest.raises(ValueError, match='pretrained=<local file>'):
        FLoRAConvNeXtV2(init_cfg=dict(type='Pretrained', checkpoint='x.pth'))
    with pytest.raises(ValueError, match='rank'):
        FLoRAConvNeXtV2(adapter=dict(type='FLoRA', rank=0))


@pytest.mark.slow
def test_frozen_dtype_bfloat16(timm_atto_file):
    path, _ = timm_atto_file
    adapter = dict(type='LoRA', rank=4)
    ref = FLoRAConvNeXtV2(arch='atto', pretrained=str(path), adapter=adapter)
    torch.manual_seed(0)
    model = FLoRAConvNeXtV2(arch='atto', pretrained=str(path), adapter=adapter,
                            frozen_dtype='bfloat16')
    with torch.no_grad():  # same non-zero update in both, so the adapters matter
        for (name, p), (_, q) in zip(ref.named_parameters(), model.named_parameters()):
            if '.lora_' in name:
                q.copy_(p.normal_(0, 0.05))
    layers = count_adapter_params(model)['per_layer']
    for name, p in model.named_parameters():
        adapted_base = name.rsplit('.', 1)[0] in layers and '.lora_' not in name
        assert p.dtype == (torch.bfloat16 if adapted_base else torch.float32), name
        # trainable: the adapters and the output norms (norm0..norm3, fp32 like every norm)
        assert p.requires_grad == ('.lora_' in name or name.startswith('norm')), name
    frozen = sum(p.numel() for p in model.parameters() if p.dtype == torch.bfloat16)
    assert frozen > 0.99 * sum(p.numel() for p in model.parameters() if not p.requires_grad)
    # fp32 input, no autocast: ops in fp32 on the bf16-rounded base weights
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if name.rsplit('.', 1)[0] in layers and '.lora_' not in name:
                p.copy_(p.to(torch.bfloat16))
    x = _input()
    for a, b in zip(ref(x), model(x)):
        assert b.dtype == torch.float32
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4 * a.abs().max().item())
    with torch.autocast('cpu', dtype=torch.bfloat16):
        outs = model.train()(x)
    for a, b in zip(ref(x), outs):
        assert (b.float() - a).abs().max() < 0.05 * a.abs().max()
    sum(o.float().square().mean() for o in outs).backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32
               for p in model.parameters() if p.requires_grad)
    with pytest.raises(ValueError, match="frozen_dtype='bfloat16' needs an adapter"):
        FLoRAConvNeXtV2(frozen_dtype='bfloat16')
    with pytest.raises(ValueError, match="adapter type 'Frozen': .*no adapters"):
        FLoRAConvNeXtV2(adapter=dict(type='Frozen'), frozen_dtype='bfloat16')
    with pytest.raises(ValueError, match='trainable'):
        FLoRAConvNeXtV2(adapter=dict(type='LoRA', rank=2), trainable=[r'stem\.0\.bias'],
                        frozen_dtype='bfloat16')

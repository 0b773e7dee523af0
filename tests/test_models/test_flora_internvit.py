"""FLoRAInternViT: features against a from-scratch reference, the official checkpoint layout,
adapters on the block linears, the 6B architecture on the meta device."""
import logging
import math

import pytest
import torch
import torch.nn.functional as F
from mmengine.logging import MMLogger

import flora_mm  # noqa: F401  (compat + registration)
from flora_mm.adapters import adapter_layers, count_adapter_params
from flora_mm.models import FLoRAInternViT
from flora_mm.models.backbones.internvit_checkpoint import load_pretrained

TINY = dict(embed_dim=64, depth=4, num_heads=4)  # what arch='tiny' must be


def _reference_features(state, x, depth, heads, out_indices, eps=1e-6):
    """InternViT written out from its definition with the state dict's tensors: patches by
    unfold + einsum, RMSNorm by its formula, attention with an explicit softmax."""
    w, b = state['patch_embed.proj.weight'], state['patch_embed.proj.bias']
    p = w.shape[-1]
    patches = x.unfold(2, p, p).unfold(3, p, p)  # B, 3, h, w, p, p
    bsz, _, h, wd = patches.shape[:4]
    tokens = torch.einsum('bchwij,dcij->bhwd', patches, w).reshape(bsz, h * wd, -1) + b
    c = tokens.shape[-1]
    t = torch.cat([state['cls_token'].expand(bsz, -1, -1), tokens], 1) + state['pos_embed']

    def rms(v, g):
        return g * v / torch.sqrt(v.pow(2).mean(-1, keepdim=True) + eps)

    outs = []
    for i in range(depth):
        s = {k[len(f'blocks.{i}.'):]: v for k, v in state.items()
             if k.startswith(f'blocks.{i}.')}
        y = rms(t, s['norm1.weight'])
        q, k, v = (y @ s['attn.qkv.weight'].T).split(c, -1)
        q, k = rms(q, s['attn.q_norm.weight']), rms(k, s['attn.k_norm.weight'])
        q, k, v = (z.reshape(bsz, -1, heads, c // heads) for z in (q, k, v))
        att = torch.einsum('bnhd,bmhd->bhnm', q, k) / math.sqrt(c // heads)
        o = torch.einsum('bhnm,bmhd->bnhd', att.softmax(-1), v).reshape(bsz, -1, c)
        t = t + s['ls1.gamma'] * (o @ s['attn.proj.weight'].T + s['attn.proj.bias'])
        y = rms(t, s['norm2.weight'])
        y = F.gelu(y @ s['mlp.fc1.weight'].T + s['mlp.fc1.bias'])
        t = t + s['ls2.gamma'] * (y @ s['mlp.fc2.weight'].T + s['mlp.fc2.bias'])
        if i in out_indices:
            outs.append(t[:, 1:].reshape(bsz, h, wd, c).permute(0, 3, 1, 2))
    return outs


def _randomize(model, seed=0):
    """Non-trivial norms / LayerScale, so a swapped or unused tensor shows in the outputs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.copy_(torch.rand(p.shape, generator=gen) + 0.5)
    return model


def _official_file(tmp_path, name='intern_vit_tiny_224px.pth', wrap=True, edit=None):
    """A checkpoint in the official layout: the tiny ViT at 224 px (16 x 16 positions), no
    pyramid, wrapped in ``module`` as InternVL's DeepSpeed files are."""
    torch.manual_seed(0)
    vit = _randomize(FLoRAInternViT(arch='tiny', img_size=224, with_fpn=False))
    state = vit.state_dict()
    if edit:
        edit(state)
    path = tmp_path / name
    torch.save({'module': state} if wrap else state, path)
    return path, state


def test_tiny_arch_and_pyramid_shapes():
    model = FLoRAInternViT(arch='tiny', img_size=112)
    assert (model.embed_dim, len(model.blocks), model.blocks[0].attn.num_heads) == (
        TINY['embed_dim'], TINY['depth'], TINY['num_heads'])
    outs = model(torch.randn(2, 3, 112, 112))
    # 8 x 8 patches of 14 px -> up x4, up x2, identity, max-pool /2 (strides 3.5 / 7 / 14 / 28)
    assert [tuple(o.shape) for o in outs] == [(2, 64, 32, 32), (2, 64, 16, 16), (2, 64, 8, 8),
                                              (2, 64, 4, 4)]
    assert model.out_channels == (64, ) * 4


def test_features_match_reference_implementation():
    torch.manual_seed(1)
    model = _randomize(FLoRAInternViT(arch='tiny', img_size=56, with_fpn=False)).double().eval()
    x = torch.randn(2, 3, 56, 56, dtype=torch.float64)
    ours = model(x)
    ref = _reference_features({k: v.double() for k, v in model.state_dict().items()}, x,
                              TINY['depth'], TINY['num_heads'], (0, 1, 2, 3))
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b.float(), rtol=1e-5, atol=1e-5)


def test_official_layout_loads_exactly_and_resizes_positions(tmp_path):
    path, state = _official_file(tmp_path)
    assert 'blocks.0.attn.qkv.bias' not in state  # InternViT-6B: qkv without bias
    assert state['pos_embed'].shape == (1, 16 * 16 + 1, 64)
    model = FLoRAInternViT(arch='tiny', img_size=112, pretrained=str(path))
    own = model.state_dict()
    for key, value in state.items():
        if key != 'pos_embed':
            assert torch.equal(own[key], value), key
    # positions: class token kept, the 16 x 16 grid bicubically resized to 8 x 8
    grid = state['pos_embed'][0, 1:].reshape(16, 16, 64).permute(2, 0, 1)[None]
    expected = F.interpolate(grid, size=(8, 8), mode='bicubic', align_corners=False)
    torch.testing.assert_close(own['pos_embed'][0, 1:],
                               expected[0].permute(1, 2, 0).reshape(64, 64))
    assert torch.equal(own['pos_embed'][0, 0], state['pos_embed'][0, 0])
    # unwrapped files load the same
    plain, _ = _official_file(tmp_path, 'plain.pth', wrap=False)
    other = FLoRAInternViT(arch='tiny', img_size=112, pretrained=str(plain))
    assert all(torch.equal(v, other.state_dict()[k]) for k, v in own.items()
               if not k.startswith('up'))


def test_missing_and_unexpected_keys_are_named(tmp_path):
    def edit(state):
        del state['blocks.1.ls2.gamma']
        state['clip_projector.query'] = torch.zeros(3)

    path, _ = _official_file(tmp_path, 'edited.pth', edit=edit)
    records = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    MMLogger.get_current_instance().addHandler(handler)
    try:
        model = FLoRAInternViT(arch='tiny', img_size=112)
        report = load_pretrained(model, str(path))
    finally:
        MMLogger.get_current_instance().removeHandler(handler)
    assert report.missing_keys == ['blocks.1.ls2.gamma']  # the new pyramid is not "missing"
    assert report.unexpected_keys == ['clip_projector.query']
    assert any('blocks.1.ls2.gamma' in r for r in records)
    assert any('clip_projector.query' in r for r in records)


def test_wrong_arch_is_refused_with_the_key(tmp_path):
    path, _ = _official_file(tmp_path)
    with pytest.raises(ValueError, match=r'blocks\.0\.attn\.qkv\.weight.*\(192, 64\)'):
        FLoRAInternViT(arch=dict(embed_dim=96, depth=2, num_heads=4, out_indices=(0, 1)),
                       with_fpn=False, pretrained=str(path))
    with pytest.raises(ValueError, match="arch='7b'"):
        FLoRAInternViT(arch='7b')
    with pytest.raises(ValueError, match='multiple of patch_size'):
        FLoRAInternViT(arch='tiny', img_size=100)


@pytest.mark.parametrize('method', ['FLoRA', 'LoRA', 'DoRA'])
def test_adapters_on_block_linears_only(method, tmp_path):
    path, state = _official_file(tmp_path)
    extra = dict(scale=0.4) if method == 'FLoRA' else {}
    model = FLoRAInternViT(arch='tiny', img_size=56, pretrained=str(path),
                           adapter=dict(type=method, rank=4, **extra))
    layers = adapter_layers(model)
    expected = {f'blocks.{i}.{n}' for i in range(4)
                for n in ('attn.qkv', 'attn.proj', 'mlp.fc1', 'mlp.fc2')}
    assert set(layers) == expected
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    adapter_names = {f'{layer}.{n}' for layer, m in layers.items()
                     for n, _ in m.adapter_named_parameters()}
    pyramid = {n for n, _ in model.named_parameters() if n.startswith('up')}
    assert trainable == adapter_names | pyramid
    assert count_adapter_params(model)['total'] == sum(
        model.get_parameter(n).numel() for n in adapter_names)
    # the pretrained weights are untouched and the model starts as the plain one (zero core
    # / zero LoRA B; DoRA magnitudes start at the weight norms)
    plain = FLoRAInternViT(arch='tiny', img_size=56, pretrained=str(path))
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if k in
                           plain.state_dict()})
    x = torch.randn(2, 3, 56, 56)
    for a, b in zip(model(x), plain(x)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    sum(o.square().mean() for o in model(x)).backward()
    for name, p in model.named_parameters():
        if name in state:
            assert p.grad is None, name
    assert all(model.get_parameter(n).grad is not None for n in adapter_names)


def test_freeze_policies():
    bitfit = FLoRAInternViT(arch='tiny', img_size=56, adapter=dict(type='BitFit'))
    biases = {n for n, _ in bitfit.named_parameters()
              if n.endswith('.bias') and not n.startswith('up')}
    vit_trainable = {n for n, p in bitfit.named_parameters()
                     if p.requires_grad and not n.startswith('up')}
    assert vit_trainable == biases and 'blocks.0.attn.qkv.bias' not in biases
    frozen = FLoRAInternViT(arch='tiny', img_size=56, adapter=dict(type='Frozen'))
    assert all(n.startswith('up') for n, p in frozen.named_parameters() if p.requires_grad)


def test_6b_on_meta_device():
    from flora_mm.analysis.table2 import build_backbone, vit_parameters
    model = build_backbone('6b')
    assert model.pos_embed.is_meta
    c, n, hidden = 3200, 48, 4 * 3200
    per_block = (c * 3 * c + c * c + c + c * hidden + hidden + hidden * c + c  # linears
                 + 4 * c + 2 * c)  # norm1, norm2, q_norm, k_norm, ls1, ls2
    embed = 3 * 14 * 14 * c + c + c + (36 * 36 + 1) * c  # patch, cls, positions at 504 px
    assert vit_parameters(model) == n * per_block + embed == 5_906_121_600
    assert [i for i in model.out_indices] == [11, 23, 35, 47]

"""Shared test helpers: layer cases and INDEPENDENT reference implementations.

Nothing here calls flora_mm code: the references are written from the math (einsum over the
Tucker product, F.conv with explicit padding), so a bug in the library cannot cancel out.
"""
import string

import torch
import torch.nn as nn
import torch.nn.functional as F

# name -> (layer factory, input shape, rank, kernel_rank)
LAYER_CASES = {
    'linear': (lambda: nn.Linear(12, 10), (3, 5, 12), 4, 1),
    'conv1d': (lambda: nn.Conv1d(6, 8, 3, padding=1), (2, 6, 11), 3, 2),
    'conv1d_circular': (lambda: nn.Conv1d(6, 8, 3, padding=1, padding_mode='circular'),
                        (2, 6, 11), 3, 2),
    'conv2d': (lambda: nn.Conv2d(6, 8, 3, padding=1), (2, 6, 9, 9), 4, 2),
    'conv2d_1x1': (lambda: nn.Conv2d(6, 8, 1), (2, 6, 5, 5), 3, 1),
    'conv2d_grouped': (lambda: nn.Conv2d(8, 12, 3, padding=1, groups=4), (2, 8, 9, 9), 3, 2),
    'conv2d_grouped_wide': (lambda: nn.Conv2d(8, 8, 3, padding=1, groups=2), (2, 8, 7, 7), 6, 2),
    'conv2d_depthwise': (lambda: nn.Conv2d(8, 8, 7, padding=3, groups=8), (2, 8, 9, 9), 4, 3),
    'conv2d_dilated': (lambda: nn.Conv2d(6, 8, 3, padding=2, dilation=2), (2, 6, 9, 9), 4, 2),
    'conv2d_strided': (lambda: nn.Conv2d(6, 8, 4, stride=2, padding=1), (2, 6, 10, 10), 4, 2),
    'conv2d_patchify': (lambda: nn.Conv2d(3, 8, 4, stride=4), (2, 3, 12, 12), 4, 2),
    'conv2d_reflect': (lambda: nn.Conv2d(6, 8, 3, padding=1, padding_mode='reflect'),
                       (2, 6, 9, 9), 4, 2),
    'conv2d_same': (lambda: nn.Conv2d(6, 8, 3, padding='same', bias=False), (2, 6, 8, 8), 4, 2),
    'conv3d': (lambda: nn.Conv3d(4, 6, (3, 3, 2), padding=1), (2, 4, 5, 5, 4), 3, 2),
}


def make_case(name, seed=0):
    """Build the layer and input of a case (seeded)."""
    factory, shape, rank, kernel_rank = LAYER_CASES[name]
    torch.manual_seed(seed)
    return factory(), torch.randn(shape), rank, kernel_rank


def einsum_tucker(core, factors):
    """Independent Tucker product: core (J_1..J_N) x_n factors[n] (I_n, J_n)."""
    n = core.dim()
    src, dst = string.ascii_lowercase[:n], string.ascii_lowercase[n:2 * n]
    expr = f"{src},{','.join(d + s for d, s in zip(dst, src))}->{dst}"
    return torch.einsum(expr, core, *factors)


def reference_forward(layer, x, weight):
    """F.linear / F.conv with an explicit weight and the layer's geometry."""
    if isinstance(layer, nn.Linear):
        return F.linear(x, weight, layer.bias)
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[weight.dim() - 2]
    padding = layer.padding
    if layer.padding_mode != 'zeros':
        pad = []
        for p in reversed(padding):
            pad += [p, p]
        x = F.pad(x, pad, mode=layer.padding_mode)
        padding = 0
    return conv(x, weight, layer.bias, layer.stride, padding, layer.dilation, layer.groups)


def assert_merged_forward_exact(layer, x, w0, delta):
    """A layer whose update is ``delta`` on ``w0``: its forward in 'auto' and 'merged' mode and
    after ``merge()`` equals the reference on ``w0 + delta`` (fp64), and ``unmerge()`` gives
    ``w0`` back."""
    expected = reference_forward(layer, x, w0 + delta)
    for mode in ('auto', 'merged'):
        layer.forward_mode = mode
        assert_close(layer(x), expected, rtol=1e-12)
    layer.merge()
    assert_close(layer(x), expected, rtol=1e-12)
    layer.unmerge()
    assert_close(layer.weight, w0, rtol=1e-14)


def randomize_adapters(layer, std=0.5):
    """Give every adapter parameter (incl. the zero-initialized core / B) random values."""
    with torch.no_grad():
        for _, param in layer.adapter_named_parameters():
            if param.dim() == 1:  # DoRA magnitude: stay positive and near its init
                param.mul_(1 + 0.2 * torch.rand_like(param))
            else:
                param.normal_(0, std)


def assert_close(actual, expected, rtol=1e-4):
    """allclose with an absolute tolerance relative to the reference magnitude."""
    atol = rtol * max(expected.abs().max().item(), 1e-6)
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol)


def einsum_channel_tucker(core, w_a, w_b):
    """LyCORIS' "effective conv" factor: ``core (r1, r2, *k)`` contracted with ``w_a (r1, out)``
    and ``w_b (r2, in)`` on its two channel modes, the kernel kept: ``(out, in, *k)``."""
    k = 'klm'[:core.dim() - 2]
    return torch.einsum(f'ij{k},io,jc->oc{k}', core, w_a, w_b)


def check_param_count(layer, method, rank, **options):
    """The analytic count of a method equals the numel of the parameters it created."""
    from flora_mm.adapters import layer_param_count
    created = sum(p.numel() for _, p in layer.adapter_named_parameters())
    assert layer_param_count(tuple(layer.weight.shape), method, rank, **options) == created


def loha_update(params, shape):
    """LoHa's unscaled ``(W1a W1b) * (W2a W2b)`` in ``shape``; a factor with a core
    ``hada_t{i}`` is its effective-conv Tucker product instead."""
    factors = []
    for i in (1, 2):
        w_a, w_b = params[f'hada_w{i}_a'], params[f'hada_w{i}_b']
        core = params.get(f'hada_t{i}')
        factors.append((w_a @ w_b).reshape(shape) if core is None else
                       einsum_channel_tucker(core, w_a, w_b))
    return factors[0] * factors[1]


def lokr_update(params, shape):
    """LoKr's unscaled ``kron(W1, W2)`` written as ``dW[a k + b, c n + d, ...] = W1[a, c] W2[b,
    d, ...]``; ``W1`` / ``W2`` from their low-rank pair or ``W2``'s effective-conv core."""
    p = {n.split('lokr_')[1]: t for n, t in params.items()}
    kernel = tuple(shape[2:])
    w1 = p['w1'] if 'w1' in p else p['w1_a'] @ p['w1_b']
    if 'w2' in p:
        w2 = p['w2']
    elif 't2' in p:
        w2 = einsum_channel_tucker(p['t2'], p['w2_a'], p['w2_b'])
    else:
        w2 = (p['w2_a'] @ p['w2_b']).reshape(p['w2_a'].shape[0], -1, *kernel)
    (l, m), (k, n) = w1.shape, w2.shape[:2]
    return torch.einsum('ac,bd...->abcd...', w1, w2).reshape(l * k, m * n, *kernel)


def _update(layer, params, shape):
    """The scaled update in the weight's ``shape``: ``s * G x1 A1 ... xN AN`` (FLoRA),
    LoHa's and LoKr's products, or ``s * B @ A`` (LoRA, DoRA's direction update)."""
    s = layer.adapter_scale
    if layer.adapter_type == 'FLoRA':
        factors = [params[f'flora_factors.{i}'] for i in range(len(shape))]
        return s * einsum_tucker(params['flora_core'], factors)
    if layer.adapter_type == 'LoHa':
        return s * loha_update(params, shape)
    if layer.adapter_type == 'LoKr':
        return s * lokr_update(params, shape)
    prefix = layer.adapter_prefix
    return s * (params[f'{prefix}B'] @ params[f'{prefix}A']).reshape(shape)


def _linear_parameter(layer):
    """A parameter the update is linear in."""
    names = dict(layer.adapter_named_parameters())
    for name in ('flora_core', 'hada_w1_a', 'lokr_w1', 'lokr_w1_a'):
        if name in names:
            return names[name]
    return names[f'{layer.adapter_prefix}B']


def reference_weight(layer, w0, params=None):
    """Effective weight of an adapted layer from its adapter parameters (einsum / matmul, not
    the library's code) on the base weight ``w0``, in ``w0``'s dtype.

    Args:
        layer: The adapted layer (its type, scale and parameter names are read).
        w0: The base weight.
        params: Name -> tensor overriding the layer's adapter parameters (e.g. float64 leaves
            that require grad, for reference gradients).
    """
    params = {n: p.detach().to(w0.dtype) for n, p in layer.adapter_named_parameters()} | (
        params or {})
    v = w0 + _update(layer, params, w0.shape)
    if layer.adapter_type != 'DoRA':
        return v
    # DoRA treats the column norm as a constant in backward (DoRA paper, section 4.3)
    norm = torch.linalg.vector_norm(v.flatten(1), dim=1).detach()
    return v * (params['dora_magnitude'] / norm).reshape(-1, *[1] * (v.dim() - 1))


def strengthen_adapters(layer, ratio=3.0):
    """Random adapter values whose low-rank update is ``ratio`` times as large as the base
    weight (largest entries): then the adapter moves the layer's output by a large fraction of
    its size, and a comparison at any tolerance these tests use sees a missing or wrong branch
    (``std=0.1`` moved a FLoRA depthwise conv by 3e-6 of its output)."""
    randomize_adapters(layer)
    params = {n: p.detach().double() for n, p in layer.adapter_named_parameters()}
    update = _update(layer, params, layer.weight.shape)
    factor = ratio * layer.weight.detach().double().abs().max() / update.abs().max()
    with torch.no_grad():
        _linear_parameter(layer).mul_(factor.item())


def assert_adapted_close(actual, expected, base, rtol):
    """The adapter tests' comparison, CPU and GPU suites alike: first, the reference output of
    the adapted layer (or model) differs from ``base``, the output without the adapter, by
    more than 10x the tolerance, so that the second check, ``actual`` equals ``expected``
    within ``rtol`` of its largest value, fails for a branch that is missing or wrong."""
    scale = expected.abs().max().item()
    effect = (expected - base).abs().max().item()
    assert effect > 10 * rtol * scale, (
        f'the adapter moves the output by {effect / scale:.2e} of its largest value, under '
        f'10x the tolerance {rtol}: the comparison could not see the adapter')
    assert_close(actual, expected, rtol)

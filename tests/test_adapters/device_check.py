"""One adapted layer on a device, in fp32 or under autocast, against the independent float64
reference of :mod:`.helpers`: the check the GPU suite runs on CUDA (tests/test_gpu) and the
CPU suite on the CPU (test_adapter_device.py), through the same comparison
(:func:`.helpers.assert_adapted_close`)."""
import copy

import torch

from flora_mm.adapters import adapter_method, inject_adapters

from .helpers import assert_adapted_close, assert_close, make_case, reference_forward, \
    reference_weight, strengthen_adapters

CASES = ['linear', 'conv2d', 'conv2d_grouped', 'conv2d_depthwise', 'conv2d_reflect', 'conv3d']
METHODS = {'FLoRA': dict(scale=0.4), 'LoRA': dict(alpha=6.0), 'DoRA': dict(alpha=6.0),
           'LoHa': dict(alpha=6.0, use_effective_conv2d=True),
           'LoKr': dict(alpha=6.0, use_effective_conv2d=True)}
# LoHa and LoKr have no factorized forward: merged only
METHOD_MODES = [(method, mode) for method in METHODS for mode in ('factorized', 'merged')
                if mode == 'merged' or adapter_method(method).has_factorized()]
# relative to the reference's largest magnitude: fp32 without TF32 is exact to accumulation
# order; autocast rounds the inputs and weights of every conv / matmul to 8 (bf16) or 11
# (fp16) significant bits
TOLERANCE = {None: 1e-4, torch.bfloat16: 4e-2, torch.float16: 5e-3}


def _loss(out):
    # a sum, not a mean: fp16 gradients of a mean fall into the subnormal range (what loss
    # scaling avoids in training)
    return out.double().square().sum()


def adapted_case(name, method, mode):
    """A layer case with ``method`` in forward ``mode`` and strong adapters, and its input."""
    layer, x, rank, kernel_rank = make_case(name)
    extra = dict(kernel_rank=kernel_rank) if method == 'FLoRA' else {}
    inject_adapters(layer, {'type': method, 'rank': rank, 'forward_mode': mode,
                            **METHODS[method], **extra})
    strengthen_adapters(layer)
    return layer, x


def reference(layer, x):
    """float64 outputs with and without the adapter, and the adapter's gradients."""
    geometry = copy.deepcopy(layer).double()  # padding, stride, groups and the bias
    x = x.double()
    w0 = layer.weight.detach().double()
    params = {n: p.detach().double().requires_grad_() for n, p in
              layer.adapter_named_parameters()}
    out = reference_forward(geometry, x, reference_weight(layer, w0, params))
    _loss(out).backward()
    return out.detach(), reference_forward(geometry, x, w0), {
        n: p.grad for n, p in params.items()}


def check_layer(name, method, mode, device, autocast=None):
    """The layer case run on ``device`` (under ``autocast``, a dtype or None) matches the
    float64 reference in output and adapter gradients, adapters staying fp32."""
    layer, x = adapted_case(name, method, mode)
    expected, base, expected_grads = reference(layer, x)
    layer.to(device)
    x = x.to(device)
    with torch.autocast(torch.device(device).type, dtype=autocast or torch.float32,
                        enabled=autocast is not None):
        out = layer(x)
        assert out.dtype == (autocast or torch.float32)
        _loss(out).backward()
    grads = {n: p.grad.detach().cpu().double() for n, p in layer.adapter_named_parameters()}
    for pname, param in layer.adapter_named_parameters():
        assert param.dtype == torch.float32 and param.device == x.device, pname
    tol = TOLERANCE[autocast]
    assert_adapted_close(out.detach().cpu().double(), expected, base, rtol=tol)
    assert grads.keys() == expected_grads.keys()
    for pname, grad in grads.items():
        try:
            assert_close(grad, expected_grads[pname], rtol=2 * tol)
        except AssertionError as err:
            raise AssertionError(f'gradient of {pname}: {err}') from None

"""FLoRA / LoRA / DoRA layers on CUDA, in fp32 and under bf16 / fp16 autocast, against the same
layer in float64 on the CPU (whose maths tests/test_adapters checks against independent
formulas). Outputs and the adapters' gradients are compared."""
import copy

import pytest
import torch

from flora_mm.adapters import inject_adapters
from test_adapters.helpers import assert_close, make_case, randomize_adapters

from . import GPU

pytestmark = GPU

CASES = ['linear', 'conv2d', 'conv2d_grouped', 'conv2d_depthwise', 'conv2d_reflect', 'conv3d']
METHODS = {'FLoRA': dict(scale=0.4), 'LoRA': dict(alpha=6.0), 'DoRA': dict(alpha=6.0)}
# relative to the reference's largest magnitude: fp32 without TF32 is exact to accumulation
# order; autocast rounds the inputs and weights of every conv / matmul to 8 (bf16) or 11
# (fp16) significant bits
TOLERANCE = {None: 1e-4, torch.bfloat16: 4e-2, torch.float16: 5e-3}


@pytest.fixture(autouse=True)
def _no_tf32():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _run(layer, x):
    out = layer(x)
    # a sum, not a mean: fp16 gradients of a mean fall into the subnormal range (what loss
    # scaling avoids in training)
    out.float().square().sum().backward()
    grads = {n: p.grad.detach().cpu().double() for n, p in layer.adapter_named_parameters()}
    return out.detach().cpu().double(), grads


@pytest.mark.parametrize('autocast', [None, torch.bfloat16, torch.float16],
                         ids=['fp32', 'bf16-autocast', 'fp16-autocast'])
@pytest.mark.parametrize('mode', ['factorized', 'merged'])
@pytest.mark.parametrize('method', list(METHODS))
@pytest.mark.parametrize('name', CASES)
def test_layer_on_cuda_matches_cpu_float64(name, method, mode, autocast):
    layer, x, rank, kernel_rank = make_case(name)
    extra = dict(kernel_rank=kernel_rank) if method == 'FLoRA' else {}
    inject_adapters(layer, {'type': method, 'rank': rank, 'forward_mode': mode,
                            **METHODS[method], **extra})
    randomize_adapters(layer, std=0.1)

    expected, expected_grads = _run(copy.deepcopy(layer).double(), x.double())
    gpu = layer.cuda()
    with torch.autocast('cuda', dtype=autocast or torch.float32, enabled=autocast is not None):
        out, grads = _run(gpu, x.cuda())
        assert gpu(x.cuda()).dtype == (autocast or torch.float32)
    for _, param in gpu.adapter_named_parameters():
        assert param.dtype == torch.float32 and param.is_cuda  # fp32 master adapters
    tol = TOLERANCE[autocast]
    assert_close(out, expected, rtol=tol)
    assert grads.keys() == expected_grads.keys()
    for pname, grad in grads.items():
        try:
            assert_close(grad, expected_grads[pname], rtol=2 * tol)
        except AssertionError as err:
            raise AssertionError(f'gradient of {pname}: {err}') from None

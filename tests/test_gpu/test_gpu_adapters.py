"""FLoRA / LoRA / DoRA / LoHa / LoKr layers on CUDA, in fp32 and under bf16 / fp16 autocast, against
independent float64 references (einsum Tucker product, F.conv) in output and adapter
gradients. The adapters are strong enough that each moves the output by more than 10x the
tolerance, which the comparison asserts first; tests/test_adapters/test_adapter_device.py
runs the same check on the CPU and shows that it fails with the adapter branch zeroed."""
import pytest
import torch

from test_adapters.device_check import CASES, METHOD_MODES, check_layer

from . import GPU

pytestmark = GPU


@pytest.fixture(autouse=True)
def _no_tf32():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.parametrize('autocast', [None, torch.bfloat16, torch.float16],
                         ids=['fp32', 'bf16-autocast', 'fp16-autocast'])
@pytest.mark.parametrize('method,mode', METHOD_MODES)
@pytest.mark.parametrize('name', CASES)
def test_layer_on_cuda_matches_float64_reference(name, method, mode, autocast):
    check_layer(name, method, mode, 'cuda', autocast)

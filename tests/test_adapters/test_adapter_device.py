"""The GPU suite's adapter check (device_check.check_layer) run on the CPU, in fp32 and under
bfloat16 and float16 autocast (the CPU has both), and the proof that it can fail: with the
adapter branch zeroed (the factorized branch and the merged update) it raises, at the tightest
and the loosest tolerance, and it passes once restored."""
import pytest
import torch

from .device_check import CASES, METHOD_MODES, adapted_case, check_layer

AUTOCAST = pytest.mark.parametrize('autocast', [None, torch.bfloat16], ids=['fp32', 'bf16'])


@pytest.mark.parametrize('autocast', [None, torch.bfloat16, torch.float16],
                         ids=['fp32', 'bf16', 'fp16'])
@pytest.mark.parametrize('method,mode', METHOD_MODES)
@pytest.mark.parametrize('name', CASES)
def test_layer_on_cpu_matches_float64_reference(name, method, mode, autocast):
    check_layer(name, method, mode, 'cpu', autocast)


# the method contract's factorized branch and update (flora_mm.adapters.layers.AdapterLayer),
# and DoRA's direction update, from which its merged weight is built
ADAPTER_HOOKS = ('adapter_branch', 'compute_delta_weight', '_lora_delta')


def _zero_adapter(patch, layer_class):
    """Every adapter of ``layer_class`` contributes nothing: the factorized branch's output and
    the merged update are multiplied by 0 (the graph stays, so gradients still exist)."""
    patched = 0
    for cls in layer_class.__mro__:
        for name in ADAPTER_HOOKS:
            if name in vars(cls):
                original = vars(cls)[name]
                patch.setattr(cls, name, lambda self, *args, f=original: f(self, *args) * 0)
                patched += 1
    assert patched >= 2, f'{layer_class.__name__}: none of {ADAPTER_HOOKS} found to zero'


@AUTOCAST
@pytest.mark.parametrize('method,mode', METHOD_MODES)
@pytest.mark.parametrize('name', CASES)
def test_zeroed_adapter_fails_the_check(name, method, mode, autocast):
    layer_class = type(adapted_case(name, method, mode)[0])
    with pytest.MonkeyPatch.context() as patch:
        _zero_adapter(patch, layer_class)
        with pytest.raises(AssertionError, match='not close'):
            check_layer(name, method, mode, 'cpu', autocast)
    check_layer(name, method, mode, 'cpu', autocast)  # restored

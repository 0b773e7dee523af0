"""Every test outside the GPU suite runs on the CPU, also on a machine with a GPU.

mmengine's Runner and inferencers put models on ``mmengine.device.get_device()``, which is
decided once, when mmengine is imported, from ``torch.cuda.is_available()``; on a GPU host the
CPU tests would move to CUDA (and, with the default CPU build of mmcv, fail in its ops). So
each CPU test module sees no GPU: ``get_device()`` is ``'cpu'`` and
``torch.cuda.is_available()`` False in this process, and ``CUDA_VISIBLE_DEVICES=''`` hides the
GPUs from the tool processes it starts (they inherit the environment). Modules marked ``gpu``
(tests/test_gpu) are left alone. tests/test_stack/test_gpu_host.py checks this on a fake GPU.
"""
import mmengine.device.utils
import pytest
import torch


@pytest.fixture(scope='module', autouse=True)
def _cpu_only(request):
    if request.node.get_closest_marker('gpu') is not None:
        yield
        return
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(mmengine.device.utils, 'DEVICE', 'cpu')
        patch.setattr(torch.cuda, 'is_available', lambda: False)
        patch.setenv('CUDA_VISIBLE_DEVICES', '')
        yield

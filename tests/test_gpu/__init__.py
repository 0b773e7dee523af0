"""The GPU suite, ``pytest -m gpu``: runs wherever ``torch.cuda.is_available()``; elsewhere
every test is skipped with the reason below."""
import pytest
import torch
from mmcv.ops import get_compiling_cuda_version

NO_GPU = 'no CUDA GPU here (torch.cuda.is_available() is False); the GPU suite needs one'
NO_CUDA_OPS = ('the installed mmcv is the CPU build (the default), without CUDA kernels: build '
               'it with FORCE_CUDA=1 bash tools/setup_env.sh')

# every module of this package: ``pytestmark = GPU``
GPU = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_GPU)]
# every test that runs one of mmcv's ops on CUDA (the Table-1 detectors do: see
# flora_mm.testing.mmcv_ops.TRACED_OPS)
CUDA_OPS = pytest.mark.skipif(get_compiling_cuda_version() == 'not available',
                              reason=NO_CUDA_OPS)

"""The CUDA build of mmcv (``FORCE_CUDA=1 bash tools/setup_env.sh``) holds compiled GPU kernels
for every requested arch. Needs no GPU: ``cuobjdump`` reads the extension's fat binary."""
import glob
import os
import os.path as osp
import re
import shutil
import subprocess

import pytest
import torch

import mmcv
from mmcv.ops import get_compiling_cuda_version

from flora_mm.testing.mmcv_ops import cuda_kernels

pytestmark = pytest.mark.skipif(
    get_compiling_cuda_version() == 'not available',
    reason='the installed mmcv is the CPU build (the default); this checks the CUDA build, '
    'FORCE_CUDA=1 bash tools/setup_env.sh')

# what setup_env.sh compiles for unless told otherwise
ARCHS = os.environ.get('TORCH_CUDA_ARCH_LIST', '8.0;9.0')
# the kernels of every mmcv op the Table-1 detectors call (found by a trace, see
# flora_mm/testing/mmcv_ops.py)
KERNELS = cuda_kernels()


def _cuobjdump():
    """cuobjdump from PATH or from the nvidia-cuda-cuobjdump wheel setup_env installs."""
    found = shutil.which('cuobjdump')
    if found is None:
        import nvidia
        found = next(iter(sorted(glob.glob(osp.join(nvidia.__path__[0], '*', 'bin',
                                                    'cuobjdump')))), None)
    assert found, 'no cuobjdump (setup_env.sh installs nvidia-cuda-cuobjdump with FORCE_CUDA=1)'
    return found


def _dump(flag):
    (ext,) = glob.glob(osp.join(osp.dirname(mmcv.__file__), '_ext*.so'))
    return subprocess.run([_cuobjdump(), flag, ext], capture_output=True, text=True,
                          check=True).stdout


def test_compiled_with_torch_cuda_version():
    assert get_compiling_cuda_version() == torch.version.cuda


def test_cubins_for_every_arch():
    expected = {'sm_' + a.replace('.', '').replace('+PTX', '')
                for a in re.split(r'[;\s]+', ARCHS.strip())}
    cubins = set(re.findall(r'\.(sm_\d+a?)\.cubin', _dump('--list-elf')))
    assert cubins == expected


@pytest.mark.parametrize('kernel', KERNELS)
def test_kernel_sass_for_every_arch(kernel):
    """Each kernel's machine code (SASS) is in the wheel, once per arch."""
    # a mangled name holds the kernel's name after its length: _Z23nms_rotated_cuda_kernelI...
    pattern = rf'x-\S*?{len(kernel)}{kernel}\S*\.(sm_\d+a?)\.elf\.bin'
    sections = re.findall(pattern, _dump('--list-text'))
    cubins = set(re.findall(r'\.(sm_\d+a?)\.cubin', _dump('--list-elf')))
    assert set(sections) == cubins, (kernel, sections)

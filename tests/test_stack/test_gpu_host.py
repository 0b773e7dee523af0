"""The CPU suite on a GPU host, as far as one can be faked here: with tests/fake_gpu on
PYTHONPATH, every Python process sees one GPU (``torch.cuda.is_available()`` True, mmengine
picks ``cuda``) unless ``CUDA_VISIBLE_DEVICES=''`` hides it, and fails when it really uses it.
Under the fake, CPU tests that run a Runner in-process (mmrotate's Oriented R-CNN through
mmcv's ops) and start a tool process pass, pinned to the CPU by tests/conftest.py, and fail
without that pin; the GPU tests that need mmcv's CUDA kernels skip with the reason on the CPU
build of mmcv (the one installed here).

Not faked: a CUDA device that runs (the fake one fails at the first CUDA call), the CUDA
build of mmcv, NCCL, and processes started without the inherited PYTHONPATH.
"""
import os
import os.path as osp
import re
import subprocess
import sys

import pytest

from flora_mm.testing.mmcv_ops import traced_ops
from test_gpu import NO_CUDA_OPS

# subprocesses of several seconds each: the full suite, not the fast lane
pytestmark = pytest.mark.slow

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
FAKE = osp.join(REPO, 'tests', 'fake_gpu')
DOTA = 'tests/test_datasets/test_dota_split.py'
RUNNER_TEST = DOTA + '::test_test_config_runs_format_only_on_unlabelled_patches'
PROBE = ('import torch; from mmengine.device import get_device; '
         'print(torch.cuda.is_available(), get_device())')


def _env(**extra):
    """This environment on the fake GPU host: the GPU not hidden, the fake on PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k != 'CUDA_VISIBLE_DEVICES'}
    env['PYTHONPATH'] = os.pathsep.join([FAKE, REPO, os.environ.get('PYTHONPATH', '')])
    return {**env, **extra}


def _run(args, timeout=600, **extra):
    return subprocess.run([sys.executable, *args], cwd=REPO, env=_env(**extra),
                          capture_output=True, text=True, timeout=timeout)


def test_the_fake_gpu_is_seen_unless_hidden_and_cannot_run():
    assert _run(['-c', PROBE]).stdout.split() == ['True', 'cuda']
    assert _run(['-c', PROBE], CUDA_VISIBLE_DEVICES='').stdout.split() == ['False', 'cpu']
    assert _run(['-c', 'import torch; torch.zeros(1).cuda()']).returncode != 0


def test_cpu_tests_pass_on_the_fake_gpu_host():
    proc = _run(['-m', 'pytest', DOTA, '-q', '-p', 'no:cacheprovider'])
    assert proc.returncode == 0, proc.stdout[-4000:]


def test_without_the_pin_the_runner_moves_to_the_gpu_and_fails():
    """The control: without tests/conftest.py the same Runner test fails on the fake GPU, so
    the one above passes because of the pin."""
    proc = _run(['-m', 'pytest', RUNNER_TEST, '--noconftest', '-q', '-p', 'no:cacheprovider'])
    assert proc.returncode == 1 and '1 failed' in proc.stdout, proc.stdout[-4000:]


def test_gpu_tests_needing_mmcv_cuda_ops_skip_with_the_reason():
    """On the GPU host with the CPU build of mmcv: every CUDA-vs-CPU op comparison and the
    detectors' trainings skip, saying how to build the CUDA ops."""
    proc = _run(['-m', 'pytest', 'tests/test_gpu/test_gpu_ops.py',
                 'tests/test_gpu/test_gpu_train.py', '-k', 'cuda_matches_cpu or rcnn', '-rs',
                 '-q', '-p', 'no:cacheprovider'])
    assert proc.returncode == 0, proc.stdout[-4000:]
    skipped = re.findall(r'SKIPPED \[(\d+)\] \S+: (.*)', proc.stdout)
    assert {reason for _, reason in skipped} == {NO_CUDA_OPS}, proc.stdout[-4000:]
    assert sum(int(n) for n, _ in skipped) == len(traced_ops()) + 2  # + 2 detector trainings

"""The op list the CUDA checks read (flora_mm.testing.mmcv_ops.TRACED_OPS) is what the three
Table-1 detectors call: one train step and one test step of each demo config on the CPU with
every call into mmcv's extension recorded. Every traced op has its CUDA kernels named (checked
in the CUDA build by test_cuda_build.py), a reference check on the CPU (test_ops.py) and a
CUDA-vs-CPU comparison in the GPU suite (tests/test_gpu/test_gpu_ops.py)."""
import os.path as osp

import pytest

from flora_mm.testing.mmcv_ops import CUDA_KERNELS, DEMO_CONFIGS, TRACED_OPS, trace_model, \
    traced_ops

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


@pytest.mark.parametrize('model', list(TRACED_OPS))
def test_trace_matches_the_list(model):
    calls = trace_model(osp.join(REPO, 'configs', 'demo', DEMO_CONFIGS[model]))
    assert sorted(calls) == sorted(TRACED_OPS[model]), dict(calls)


def test_every_traced_op_has_kernels_and_checks():
    from test_gpu.test_gpu_ops import COMPARISONS
    assert set(traced_ops()) <= set(CUDA_KERNELS)
    assert set(traced_ops()) <= set(COMPARISONS)

"""The compiled mmcv ops the Table-1 detectors call, and the CUDA kernels behind them.

:data:`TRACED_OPS` is the one list the op checks read: tests/test_stack/test_ops.py (each op
in the CPU build, against an independent reference), tests/test_stack/test_cuda_build.py
(each kernel's machine code in the CUDA build) and tests/test_gpu/test_gpu_ops.py (CUDA
against CPU). It was found by :func:`trace_model` (one train step and one test step of each
demo config, which differ from the Table-1 configs in size only), and
tests/test_stack/test_op_trace.py traces again and compares; ``python -m
flora_mm.testing.mmcv_ops`` prints the trace.
"""
from __future__ import annotations

import copy
import importlib
import os.path as osp
from collections import Counter
from contextlib import contextmanager
from typing import Iterator

# model -> functions of mmcv's extension (``mmcv._ext``) one train step and one test step call
TRACED_OPS = {
    'mask-rcnn': ('nms', 'roi_align_backward', 'roi_align_forward'),
    'upernet': (),
    'oriented-rcnn': ('box_iou_rotated', 'nms', 'nms_rotated', 'roi_align_rotated_backward',
                      'roi_align_rotated_forward'),
}
# extension function -> the CUDA kernels it launches (mmcv/ops/csrc/pytorch/cuda/*.cu)
CUDA_KERNELS = {
    'nms': ('nms_cuda', 'gather_keep_from_mask'),
    'roi_align_forward': ('roi_align_forward_cuda_kernel', ),
    'roi_align_backward': ('roi_align_backward_cuda_kernel', ),
    'nms_rotated': ('nms_rotated_cuda_kernel', ),
    'box_iou_rotated': ('box_iou_rotated_cuda_kernel', ),
    'roi_align_rotated_forward': ('roi_align_rotated_forward_cuda_kernel', ),
    'roi_align_rotated_backward': ('roi_align_rotated_backward_cuda_kernel', ),
}
DEMO_CONFIGS = {
    'mask-rcnn': 'mask-rcnn_convnextv2-atto-flora_fpn_tiny-coco.py',
    'upernet': 'upernet_convnextv2-atto-flora_tiny-ade.py',
    'oriented-rcnn': 'oriented-rcnn_convnextv2-atto-flora_fpn_tiny-dota.py',
}


def traced_ops() -> list[str]:
    """Every extension function of :data:`TRACED_OPS`, sorted."""
    return sorted({op for ops in TRACED_OPS.values() for op in ops})


def cuda_kernels() -> list[str]:
    """The CUDA kernels of every traced op, sorted."""
    return sorted({kernel for op in traced_ops() for kernel in CUDA_KERNELS[op]})


@contextmanager
def record_ext_calls() -> Iterator[Counter]:
    """Count the calls into mmcv's compiled extension by function name, for the duration.

    mmcv's op modules look their functions up on the extension module (``ext_module.nms``) at
    every call, so wrapping the module's attributes sees every call, forward and backward.
    """
    ext = importlib.import_module('mmcv._ext')
    calls: Counter = Counter()
    originals = {name: getattr(ext, name) for name in dir(ext)
                 if not name.startswith('_') and callable(getattr(ext, name))}

    def recorder(name, function):
        def record(*args, **kwargs):
            calls[name] += 1
            return function(*args, **kwargs)
        return record

    for name, function in originals.items():
        setattr(ext, name, recorder(name, function))
    try:
        yield calls
    finally:
        for name, function in originals.items():
            setattr(ext, name, function)


def trace_model(config: str, input_size=(128, 128), batch_size: int = 2) -> Counter:
    """The extension calls of one train step (forward, backward, optimizer step) and one
    test step of a config's model on the CPU, on a synthetic batch with ground truth
    (:func:`flora_mm.analysis.table4.synthetic_batch`).

    Args:
        config: Config path.
        input_size: ``(H, W)`` of the batch.
        batch_size: Images in the batch.

    Returns:
        Extension function -> number of calls.
    """
    from flora_mm.analysis.table4 import prepare_job
    model, optim_wrapper, data = prepare_job(dict(
        config=config, input_size=list(input_size), batch_size=batch_size, device='cpu'))
    with record_ext_calls() as calls:
        model.train_step(copy.deepcopy(data), optim_wrapper)
        model.eval()
        model.test_step(copy.deepcopy(data))
    return calls


def trace_demos(root: str | None = None) -> dict:
    """:func:`trace_model` of each demo config (``root``: the repository's ``configs/demo``).

    Returns:
        Model -> extension function -> calls.
    """
    root = root or osp.join(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))),
                            'configs', 'demo')
    return {model: trace_model(osp.join(root, name)) for model, name in DEMO_CONFIGS.items()}


if __name__ == '__main__':
    for model, calls in trace_demos().items():
        listed = set(TRACED_OPS[model])
        print(f'{model}: ' + (', '.join(
            f'{op} x{n}' + ('' if op in listed else ' (NOT in TRACED_OPS)')
            for op, n in sorted(calls.items())) or 'no mmcv op'))
        for op in sorted(listed - set(calls)):
            print(f'  {op} is in TRACED_OPS but was not called')

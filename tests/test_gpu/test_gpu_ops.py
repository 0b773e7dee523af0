"""mmcv's CUDA ops agree with its CPU ops (themselves checked against independent references
in tests/test_stack/test_ops.py): one comparison per op of the traced list
(flora_mm.testing.mmcv_ops.TRACED_OPS), forward and backward, and the RoI ops also in half
precision, as they run under ``--amp``."""
import math

import mmcv.ops as mmcv_ops
import pytest
import torch

from flora_mm.testing.mmcv_ops import record_ext_calls, traced_ops

from . import CUDA_OPS, GPU

pytestmark = GPU + [CUDA_OPS]


def _boxes(n, seed):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 50
    wh = torch.rand(n, 2, generator=g) * 30 + 5
    return torch.cat([xy, xy + wh], dim=1), torch.rand(n, generator=g)


def _rotated(n, seed):
    g = torch.Generator().manual_seed(seed)
    boxes = torch.cat([torch.rand(n, 2, generator=g) * 40, torch.rand(n, 2, generator=g) * 20 + 4,
                       (torch.rand(n, 1, generator=g) - 0.5) * math.pi], dim=1)
    return boxes, torch.rand(n, generator=g)


def compare_nms():
    boxes, scores = _boxes(300, 0)
    dets_cpu, keep_cpu = mmcv_ops.nms(boxes, scores, iou_threshold=0.5)
    dets_gpu, keep_gpu = mmcv_ops.nms(boxes.cuda(), scores.cuda(), iou_threshold=0.5)
    assert keep_gpu.is_cuda
    assert keep_gpu.cpu().tolist() == keep_cpu.tolist()
    assert 0 < len(keep_cpu) < 300
    torch.testing.assert_close(dets_gpu.cpu(), dets_cpu)


def _forward_backward(op, feats, rois, dtype):
    """``op`` on CPU in float32 and on CUDA in ``dtype`` (mmdet casts the RoIs to the features'
    dtype; both rounded to ``dtype`` for both devices): outputs and feature gradients, on the
    CPU in float32."""
    feats, rois = feats.to(dtype).float(), rois.to(dtype).float()
    results = []
    for device, run_dtype in (('cpu', torch.float32), ('cuda', dtype)):
        x = feats.to(device, run_dtype).requires_grad_()
        out = op(x, rois.to(device, run_dtype))
        assert out.dtype == run_dtype
        out.float().square().sum().backward()
        results.append((out.detach().float().cpu(), x.grad.float().cpu()))
    return results


# float32: the CUDA backward accumulates with atomics (another summation order); float16:
# rounding of the features, the RoIs and every interpolated value to 11 significant bits
ROI_TOLERANCE = {torch.float32: (1e-5, 1e-4), torch.float16: (1e-2, 2e-2)}


def compare_roi_align():
    g = torch.Generator().manual_seed(1)
    feats = torch.randn(2, 8, 32, 40, generator=g)
    boxes, _ = _boxes(24, 2)
    rois = torch.cat([torch.arange(24).remainder(2).float()[:, None], boxes / 2], dim=1)
    op = mmcv_ops.RoIAlign((7, 7), spatial_scale=0.5, sampling_ratio=2, aligned=True)
    for dtype, (out_tol, grad_tol) in ROI_TOLERANCE.items():
        (out_cpu, grad_cpu), (out_gpu, grad_gpu) = _forward_backward(op, feats, rois, dtype)
        torch.testing.assert_close(out_gpu, out_cpu, rtol=out_tol, atol=out_tol)
        torch.testing.assert_close(grad_gpu, grad_cpu, rtol=grad_tol, atol=grad_tol)


def compare_roi_align_rotated():
    g = torch.Generator().manual_seed(6)
    feats = torch.randn(2, 8, 32, 40, generator=g)
    boxes, _ = _rotated(24, 7)
    rois = torch.cat([torch.arange(24).remainder(2).float()[:, None], boxes], dim=1)
    # Oriented R-CNN's bbox_roi_extractor: 7x7, 2 samples per bin, clockwise angles
    op = mmcv_ops.RoIAlignRotated((7, 7), spatial_scale=0.5, sampling_ratio=2,
                                  aligned=True, clockwise=True)
    for dtype, (out_tol, grad_tol) in ROI_TOLERANCE.items():
        (out_cpu, grad_cpu), (out_gpu, grad_gpu) = _forward_backward(op, feats, rois, dtype)
        assert out_cpu.abs().sum() > 0 and grad_cpu.abs().sum() > 0
        torch.testing.assert_close(out_gpu, out_cpu, rtol=out_tol, atol=out_tol)
        torch.testing.assert_close(grad_gpu, grad_cpu, rtol=grad_tol, atol=grad_tol)


def compare_nms_rotated():
    boxes, scores = _rotated(200, 3)
    _, keep_cpu = mmcv_ops.nms_rotated(boxes, scores, iou_threshold=0.3)
    _, keep_gpu = mmcv_ops.nms_rotated(boxes.cuda(), scores.cuda(), iou_threshold=0.3)
    assert keep_gpu.is_cuda
    assert sorted(keep_gpu.cpu().tolist()) == sorted(keep_cpu.tolist())
    assert 0 < len(keep_cpu) < 200


def compare_box_iou_rotated():
    a, _ = _rotated(64, 4)
    b, _ = _rotated(64, 5)
    for aligned in (False, True):
        iou_cpu = mmcv_ops.box_iou_rotated(a, b, aligned=aligned)
        iou_gpu = mmcv_ops.box_iou_rotated(a.cuda(), b.cuda(), aligned=aligned)
        assert iou_gpu.is_cuda and iou_gpu.shape == iou_cpu.shape
        torch.testing.assert_close(iou_gpu.cpu(), iou_cpu, rtol=1e-4, atol=1e-5)
        assert (iou_cpu > 0.05).any()  # the boxes overlap: the comparison is not all zeros


# extension function -> the comparison that runs it on CUDA
COMPARISONS = {
    'nms': compare_nms,
    'roi_align_forward': compare_roi_align,
    'roi_align_backward': compare_roi_align,
    'roi_align_rotated_forward': compare_roi_align_rotated,
    'roi_align_rotated_backward': compare_roi_align_rotated,
    'nms_rotated': compare_nms_rotated,
    'box_iou_rotated': compare_box_iou_rotated,
}


@pytest.mark.parametrize('op', traced_ops())
def test_cuda_matches_cpu(op):
    assert op in COMPARISONS, f'{op} is traced (TRACED_OPS) but has no comparison here'
    with record_ext_calls() as calls:
        COMPARISONS[op]()
    assert calls[op] >= 2, f'the comparison did not call {op} on both devices: {calls}'

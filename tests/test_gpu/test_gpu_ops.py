"""mmcv's CUDA ops agree with its CPU ops (themselves checked against independent references
in tests/test_stack/test_ops.py)."""
import math

import pytest
import torch

from . import GPU

mmcv_ops = pytest.importorskip('mmcv.ops')

pytestmark = GPU + [pytest.mark.skipif(
    mmcv_ops.get_compiling_cuda_version() == 'not available',
    reason='the installed mmcv has no CUDA ops: build it with FORCE_CUDA=1 bash tools/setup_env.sh')]


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


def test_nms_cuda_matches_cpu():
    boxes, scores = _boxes(300, 0)
    dets_cpu, keep_cpu = mmcv_ops.nms(boxes, scores, iou_threshold=0.5)
    dets_gpu, keep_gpu = mmcv_ops.nms(boxes.cuda(), scores.cuda(), iou_threshold=0.5)
    assert keep_gpu.is_cuda
    assert keep_gpu.cpu().tolist() == keep_cpu.tolist()
    assert 0 < len(keep_cpu) < 300
    torch.testing.assert_close(dets_gpu.cpu(), dets_cpu)


def test_roi_align_cuda_matches_cpu_forward_and_backward():
    g = torch.Generator().manual_seed(1)
    feats = torch.randn(2, 8, 32, 40, generator=g)
    boxes, _ = _boxes(24, 2)
    rois = torch.cat([torch.arange(24).remainder(2).float()[:, None], boxes / 2], dim=1)
    op = mmcv_ops.RoIAlign((7, 7), spatial_scale=0.5, sampling_ratio=2, aligned=True)
    results = []
    for device in ('cpu', 'cuda'):
        x = feats.to(device).requires_grad_()
        out = op(x, rois.to(device))
        out.square().sum().backward()
        results.append((out.detach().cpu(), x.grad.cpu()))
    (out_cpu, grad_cpu), (out_gpu, grad_gpu) = results
    torch.testing.assert_close(out_gpu, out_cpu, rtol=1e-5, atol=1e-5)
    # the CUDA backward accumulates with atomics: summation order differs
    torch.testing.assert_close(grad_gpu, grad_cpu, rtol=1e-4, atol=1e-4)


def test_nms_rotated_cuda_matches_cpu():
    boxes, scores = _rotated(200, 3)
    _, keep_cpu = mmcv_ops.nms_rotated(boxes, scores, iou_threshold=0.3)
    _, keep_gpu = mmcv_ops.nms_rotated(boxes.cuda(), scores.cuda(), iou_threshold=0.3)
    assert keep_gpu.is_cuda
    assert sorted(keep_gpu.cpu().tolist()) == sorted(keep_cpu.tolist())
    assert 0 < len(keep_cpu) < 200


@pytest.mark.parametrize('aligned', [False, True])
def test_box_iou_rotated_cuda_matches_cpu(aligned):
    a, _ = _rotated(64, 4)
    b, _ = _rotated(64, 5)
    iou_cpu = mmcv_ops.box_iou_rotated(a, b, aligned=aligned)
    iou_gpu = mmcv_ops.box_iou_rotated(a.cuda(), b.cuda(), aligned=aligned)
    assert iou_gpu.is_cuda and iou_gpu.shape == iou_cpu.shape
    torch.testing.assert_close(iou_gpu.cpu(), iou_cpu, rtol=1e-4, atol=1e-5)
    assert (iou_cpu > 0.05).any()  # the boxes overlap: the comparison is not all zeros

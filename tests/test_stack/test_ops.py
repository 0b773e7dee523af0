"""The CPU build of mmcv holds every op the Table-1 detectors call (the traced list,
flora_mm.testing.mmcv_ops.TRACED_OPS), and each one, called through mmcv's Python API on CPU
tensors, agrees with an independent computation: torchvision, shapely polygons, a bilinear
sampling written from the op's definition, autograd of the references for the backward ops."""
import importlib
import math

import numpy as np
import pytest
import torch
import torchvision
from shapely.geometry import Polygon

from mmcv.ops import RoIAlign, RoIAlignRotated, box_iou_rotated, nms, nms_rotated

from flora_mm.testing.mmcv_ops import record_ext_calls, traced_ops


def greedy_nms(iou: np.ndarray, scores: np.ndarray, threshold: float) -> list:
    """Textbook greedy NMS on a precomputed IoU matrix."""
    order = list(np.argsort(-scores, kind='stable'))
    keep = []
    while order:
        best = order.pop(0)
        keep.append(int(best))
        order = [i for i in order if iou[best, i] <= threshold]
    return keep


def random_boxes(n: int, generator: torch.Generator) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=generator) * 50
    wh = torch.rand(n, 2, generator=generator) * 30 + 5
    return torch.cat([xy, xy + wh], dim=1)


def random_rotated(n: int, generator: torch.Generator) -> torch.Tensor:
    """(cx, cy, w, h, radians)."""
    return torch.cat([torch.rand(n, 2, generator=generator) * 40,
                      torch.rand(n, 2, generator=generator) * 20 + 4,
                      (torch.rand(n, 1, generator=generator) - 0.5) * math.pi], dim=1)


def rotated_polygon(cx, cy, w, h, angle) -> Polygon:
    cos, sin = math.cos(angle), math.sin(angle)
    corners = [(-w / 2, -h / 2), (w / 2, -h / 2), (w / 2, h / 2), (-w / 2, h / 2)]
    return Polygon([(cx + x * cos - y * sin, cy + x * sin + y * cos) for x, y in corners])


def polygon_iou(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    pa = [rotated_polygon(*box.tolist()) for box in a]
    pb = [rotated_polygon(*box.tolist()) for box in b]
    return np.array([[p.intersection(q).area / p.union(q).area for q in pb] for p in pa])


# ----------------------------------------------------------------------------- the checks
def check_nms():
    g = torch.Generator().manual_seed(0)
    boxes = random_boxes(60, g)
    scores = torch.rand(60, generator=g)
    _, keep = nms(boxes, scores, iou_threshold=0.5)

    iou = torchvision.ops.box_iou(boxes, boxes).numpy()
    expected = greedy_nms(iou, scores.numpy(), 0.5)
    assert keep.tolist() == expected
    assert 0 < len(expected) < 60  # the threshold really suppressed something


def _rois(n, g, rotated=False):
    boxes = random_rotated(n, g) if rotated else random_boxes(n, g) / 2
    return torch.cat([torch.arange(n).remainder(2).float()[:, None], boxes], dim=1)


def check_roi_align():
    """Forward and backward (feature gradient) against torchvision's roi_align."""
    g = torch.Generator().manual_seed(1)
    feats = torch.randn(2, 3, 16, 20, generator=g)
    rois = _rois(8, g)
    grads = []
    outs = []
    for op in (RoIAlign((5, 4), spatial_scale=0.5, sampling_ratio=2, aligned=True),
               lambda x, r: torchvision.ops.roi_align(
                   x, r, output_size=(5, 4), spatial_scale=0.5, sampling_ratio=2,
                   aligned=True)):
        x = feats.clone().requires_grad_()
        out = op(x, rois)
        (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
        outs.append(out.detach())
        grads.append(x.grad)
    assert outs[0].shape == (8, 3, 5, 4)
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-5)
    assert grads[1].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-5)


def bilinear(feats: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of ``feats`` (n, C, H, W) at ``y``, ``x`` (n, P, Q) -> (n, C, P, Q),
    with the convention of RoIAlign (detectron2): a point more than one pixel outside is 0; a
    point in the outer half pixel takes the border value."""
    n, c, height, width = feats.shape
    outside = (y < -1) | (y > height) | (x < -1) | (x > width)
    y, x = y.clamp(min=0), x.clamp(min=0)
    y0, x0 = y.floor().long(), x.floor().long()
    y = torch.where(y0 >= height - 1, float(height - 1), y)
    x = torch.where(x0 >= width - 1, float(width - 1), x)
    y0, x0 = y0.clamp(max=height - 1), x0.clamp(max=width - 1)
    y1, x1 = (y0 + 1).clamp(max=height - 1), (x0 + 1).clamp(max=width - 1)
    ly, lx = y - y0, x - x0
    flat = feats.flatten(2)

    def at(yi, xi):
        index = (yi * width + xi).flatten(1)[:, None].expand(n, c, -1)
        return flat.gather(2, index).reshape(n, c, *y.shape[1:])

    value = (at(y0, x0) * ((1 - ly) * (1 - lx))[:, None] + at(y0, x1) * ((1 - ly) * lx)[:, None]
             + at(y1, x0) * (ly * (1 - lx))[:, None] + at(y1, x1) * (ly * lx)[:, None])
    return value * (~outside)[:, None]


def roi_align_rotated_reference(feats, rois, size, spatial_scale, sampling_ratio, clockwise):
    """RoIAlignRotated (aligned) from its definition: each output bin is the mean of a
    ``sampling_ratio`` x ``sampling_ratio`` grid of bilinear samples, the grid rotated by the
    RoI's angle (negated for ``clockwise``) about the RoI's centre."""
    (ph, pw), g = size, sampling_ratio
    cx, cy = (rois[:, 1] * spatial_scale - 0.5), (rois[:, 2] * spatial_scale - 0.5)
    w, h = rois[:, 3] * spatial_scale, rois[:, 4] * spatial_scale
    theta = -rois[:, 5] if clockwise else rois[:, 5]
    yy = -h[:, None] / 2 + (torch.arange(ph * g) + 0.5)[None] / g * (h / ph)[:, None]
    xx = -w[:, None] / 2 + (torch.arange(pw * g) + 0.5)[None] / g * (w / pw)[:, None]
    cos, sin = theta.cos()[:, None, None], theta.sin()[:, None, None]
    y = yy[:, :, None] * cos - xx[:, None, :] * sin + cy[:, None, None]
    x = yy[:, :, None] * sin + xx[:, None, :] * cos + cx[:, None, None]
    samples = bilinear(feats[rois[:, 0].long()], y, x)
    return samples.reshape(len(rois), -1, ph, g, pw, g).mean((3, 5))


def check_roi_align_rotated():
    """Forward and backward against the reference above; at angle 0 also against
    torchvision's (axis-aligned) roi_align."""
    g = torch.Generator().manual_seed(3)
    feats = torch.randn(2, 3, 24, 30, generator=g)
    rois = _rois(10, g, rotated=True)
    # Oriented R-CNN's bbox_roi_extractor: 7x7, 2 samples per bin, clockwise angles
    op = RoIAlignRotated((7, 7), spatial_scale=0.5, sampling_ratio=2, aligned=True,
                         clockwise=True)
    weights = torch.linspace(-1, 1, 10 * 3 * 49).reshape(10, 3, 7, 7)
    results = []
    for run in (op, lambda x, r: roi_align_rotated_reference(x, r, (7, 7), 0.5, 2, True)):
        x = feats.clone().requires_grad_()
        out = run(x, rois)
        (out * weights).sum().backward()
        results.append((out.detach(), x.grad))
    (out, grad), (ref_out, ref_grad) = results
    assert out.shape == (10, 3, 7, 7) and ref_grad.abs().sum() > 0
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-5)

    upright = rois.clone()
    upright[:, 5] = 0
    cx, cy, w, h = upright[:, 1:5].unbind(1)
    boxes = torch.stack([upright[:, 0], cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)
    torch.testing.assert_close(op(feats, upright), torchvision.ops.roi_align(
        feats, boxes, (7, 7), spatial_scale=0.5, sampling_ratio=2, aligned=True),
        rtol=1e-5, atol=1e-5)


def check_nms_rotated():
    g = torch.Generator().manual_seed(2)
    boxes = random_rotated(40, g)
    scores = torch.rand(40, generator=g)
    _, keep = nms_rotated(boxes, scores, iou_threshold=0.3)
    expected = greedy_nms(polygon_iou(boxes, boxes), scores.numpy(), 0.3)
    assert sorted(keep.tolist()) == sorted(expected)
    assert 0 < len(expected) < 40


def check_box_iou_rotated():
    g = torch.Generator().manual_seed(4)
    a, b = random_rotated(12, g), random_rotated(12, g)
    expected = polygon_iou(a, b)
    assert (expected > 0.05).sum() >= 3  # overlapping pairs: not a comparison of zeros
    np.testing.assert_allclose(box_iou_rotated(a, b).numpy(), expected, atol=1e-4)
    np.testing.assert_allclose(box_iou_rotated(a, b, aligned=True).numpy(),
                               np.diag(expected), atol=1e-4)


# extension function -> the check that calls it on the CPU
CPU_CHECKS = {
    'nms': check_nms,
    'roi_align_forward': check_roi_align,
    'roi_align_backward': check_roi_align,
    'roi_align_rotated_forward': check_roi_align_rotated,
    'roi_align_rotated_backward': check_roi_align_rotated,
    'nms_rotated': check_nms_rotated,
    'box_iou_rotated': check_box_iou_rotated,
}


@pytest.mark.parametrize('op', traced_ops())
def test_traced_op_in_cpu_build_matches_reference(op):
    ext = importlib.import_module('mmcv._ext')
    assert callable(getattr(ext, op, None)), f'mmcv._ext has no {op}'
    assert op in CPU_CHECKS, f'{op} is traced (TRACED_OPS) but has no reference check here'
    with record_ext_calls() as calls:
        CPU_CHECKS[op]()
    assert calls[op] > 0, f'the check did not reach mmcv._ext.{op}: {dict(calls)}'

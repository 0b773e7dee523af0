"""mmcv's compiled ops really run on CPU tensors and agree with independent computations."""
import math

import numpy as np
import pytest
import torch
import torchvision
from shapely.geometry import Polygon

from mmcv.ops import RoIAlign, nms, nms_rotated


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


def test_nms_matches_greedy_reference():
    g = torch.Generator().manual_seed(0)
    boxes = random_boxes(60, g)
    scores = torch.rand(60, generator=g)
    _, keep = nms(boxes, scores, iou_threshold=0.5)

    iou = torchvision.ops.box_iou(boxes, boxes).numpy()
    expected = greedy_nms(iou, scores.numpy(), 0.5)
    assert keep.tolist() == expected
    assert 0 < len(expected) < 60  # the threshold really suppressed something


def test_roi_align_matches_torchvision():
    g = torch.Generator().manual_seed(1)
    feats = torch.randn(2, 3, 16, 20, generator=g)
    boxes = random_boxes(8, g) / 4
    rois = torch.cat([torch.tensor([0, 1] * 4, dtype=torch.float)[:, None], boxes], dim=1)

    ours = RoIAlign((5, 4), spatial_scale=0.5, sampling_ratio=2, aligned=True)(feats, rois)
    reference = torchvision.ops.roi_align(
        feats, rois, output_size=(5, 4), spatial_scale=0.5, sampling_ratio=2, aligned=True)
    assert ours.shape == (8, 3, 5, 4)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)


def rotated_polygon(cx, cy, w, h, angle) -> Polygon:
    cos, sin = math.cos(angle), math.sin(angle)
    corners = [(-w / 2, -h / 2), (w / 2, -h / 2), (w / 2, h / 2), (-w / 2, h / 2)]
    return Polygon([(cx + x * cos - y * sin, cy + x * sin + y * cos) for x, y in corners])


def test_nms_rotated_matches_polygon_reference():
    g = torch.Generator().manual_seed(2)
    n = 40
    centers = torch.rand(n, 2, generator=g) * 40
    sizes = torch.rand(n, 2, generator=g) * 20 + 4
    angles = (torch.rand(n, 1, generator=g) - 0.5) * math.pi
    boxes = torch.cat([centers, sizes, angles], dim=1)  # (cx, cy, w, h, radians)
    scores = torch.rand(n, generator=g)

    _, keep = nms_rotated(boxes, scores, iou_threshold=0.3)

    polygons = [rotated_polygon(*b.tolist()) for b in boxes]
    iou = np.array([[p.intersection(q).area / p.union(q).area for q in polygons]
                    for p in polygons])
    expected = greedy_nms(iou, scores.numpy(), 0.3)
    assert sorted(keep.tolist()) == sorted(expected)
    assert 0 < len(expected) < n


@pytest.mark.parametrize('op', ['nms', 'roi_align', 'nms_rotated'])
def test_ops_are_compiled_for_cpu(op):
    from mmcv.utils import ext_loader
    ext = ext_loader.load_ext('_ext', [f'{op}_forward' if op == 'roi_align' else op])
    assert ext is not None

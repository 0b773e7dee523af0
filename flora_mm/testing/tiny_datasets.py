"""Deterministic tiny datasets in the real COCO, ADE20K and DOTA on-disk formats.

No dataset can be downloaded where the tests and demos run, so these generators write a few
dozen small images with *learnable* structure: every label is a function of what is drawn
(shape, colour and texture of an object on a textured background), never random noise. The
files are laid out exactly as mmdet's ``CocoDataset``, mmseg's ``ADE20KDataset`` and mmrotate's
``DOTADataset`` expect them, so the unmodified pipelines and metrics run on them::

    coco/annotations/instances_{train,val}2017.json  coco/{train,val}2017/*.jpg
    ade/ADEChallengeData2016/{images,annotations}/{training,validation}/*.{jpg,png}
    split_ss_dota/{train,val}/images/*.png  split_ss_dota/{train,val}/annfiles/*.txt

Only numpy and Pillow are used, so the generator runs without any OpenMMLab package. Each
``make_*`` function returns a summary (images, instances / pixels per class) that tests compare
with what the real dataset classes load.
"""
import json
import math
import os
import os.path as osp
from typing import Dict, List, Optional, Tuple

import numpy as np
from PIL import Image

from . import drawing as draw

# The 80 COCO categories with their official (non-contiguous) ids, as in instances_*2017.json.
COCO_CATEGORIES: Tuple[Tuple[int, str], ...] = tuple(zip(
    [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27,
     28, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53,
     54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80,
     81, 82, 84, 85, 86, 87, 88, 89, 90],
    ['person', 'bicycle', 'car', 'motorcycle', 'airplane', 'bus', 'train', 'truck', 'boat',
     'traffic light', 'fire hydrant', 'stop sign', 'parking meter', 'bench', 'bird', 'cat',
     'dog', 'horse', 'sheep', 'cow', 'elephant', 'bear', 'zebra', 'giraffe', 'backpack',
     'umbrella', 'handbag', 'tie', 'suitcase', 'frisbee', 'skis', 'snowboard', 'sports ball',
     'kite', 'baseball bat', 'baseball glove', 'skateboard', 'surfboard', 'tennis racket',
     'bottle', 'wine glass', 'cup', 'fork', 'knife', 'spoon', 'bowl', 'banana', 'apple',
     'sandwich', 'orange', 'broccoli', 'carrot', 'hot dog', 'pizza', 'donut', 'cake', 'chair',
     'couch', 'potted plant', 'bed', 'dining table', 'toilet', 'tv', 'laptop', 'mouse',
     'remote', 'keyboard', 'cell phone', 'microwave', 'oven', 'toaster', 'sink',
     'refrigerator', 'book', 'clock', 'vase', 'scissors', 'teddy bear', 'hair drier',
     'toothbrush']))

# Classes drawn in the tiny sets. The COCO tuple is in category-id order, which is the label
# order mmdet's CocoDataset assigns (labels follow the json's category order, not `classes`).
TINY_COCO_CLASSES = ('sports ball', 'kite', 'tv')
# ADE20K label values in the png (class index + 1; 0 = "other", ignored with reduce_zero_label).
TINY_ADE_LABELS = {'building': 2, 'sky': 3, 'tree': 5, 'road': 7, 'grass': 10, 'car': 21}
TINY_DOTA_CLASSES = ('plane', 'ship', 'large-vehicle')

Summary = Dict[str, object]


# --------------------------------------------------------------------------------------------
# COCO instance segmentation
# --------------------------------------------------------------------------------------------
# class -> (shape, colour, texture)
_COCO_STYLE = {
    'sports ball': ('circle', (220, 40, 40), 'solid'),
    'kite': ('triangle', (40, 200, 60), 'checker'),
    'tv': ('rectangle', (50, 70, 220), 'stripes'),
}


def _coco_polygon(rng: np.random.Generator, shape: str, cx: float, cy: float, r: float
                  ) -> np.ndarray:
    if shape == 'circle':
        return draw.circle(cx, cy, r)
    if shape == 'triangle':  # pointing up, as a kite would
        return np.array([[cx, cy - r], [cx + r * 0.87, cy + r * 0.5],
                         [cx - r * 0.87, cy + r * 0.5]], np.float32)
    w, h = r * rng.uniform(1.2, 1.4), r * rng.uniform(0.8, 1.0)  # a landscape tv
    return np.array([[cx - w / 1.45, cy - h / 1.45], [cx + w / 1.45, cy - h / 1.45],
                     [cx + w / 1.45, cy + h / 1.45], [cx - w / 1.45, cy + h / 1.45]],
                    np.float32)


def _polygon_area(poly: np.ndarray) -> float:
    x, y = poly[:, 0], poly[:, 1]
    return float(0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def make_coco(root: str, num_train: int = 16, num_val: int = 8, img_size: int = 128,
              max_objects: int = 3, seed: int = 0) -> Summary:
    """Write a tiny COCO-2017-style instance segmentation set under ``root``.

    Every image shows 1..``max_objects`` non-overlapping objects of ``TINY_COCO_CLASSES`` (red
    solid discs = 'sports ball', green checkered triangles = 'kite', blue striped rectangles =
    'tv') with polygon masks, on a textured background. The json lists all 80 COCO categories
    with their official ids, so configs with ``num_classes=80`` work as well as configs that
    restrict ``metainfo.classes`` to the three drawn ones.

    Args:
        root: Output folder (the ``data/coco`` of a real setup).
        num_train: Images in ``train2017``.
        num_val: Images in ``val2017``.
        img_size: Side of the square images in pixels.
        max_objects: Most objects per image.
        seed: Seed; the same arguments always give the same files.

    Returns:
        ``{'root', 'classes', 'train': {...}, 'val': {...}}`` where each split holds
        ``num_images``, ``num_instances`` and ``per_class`` instance counts.
    """
    name_to_id = {name: cat_id for cat_id, name in COCO_CATEGORIES}
    summary: Summary = dict(root=root, classes=TINY_COCO_CLASSES)
    for split_idx, (split, num) in enumerate((('train', num_train), ('val', num_val))):
        rng = np.random.default_rng([seed, 0, split_idx])
        images, annotations = [], []
        per_class = {c: 0 for c in TINY_COCO_CLASSES}
        for i in range(num):
            img_id = split_idx * 100000 + i + 1
            file_name = f'{img_id:012d}.jpg'
            img = draw.background(rng, img_size, rng.uniform(110, 170, 3))
            count = int(rng.integers(1, max_objects + 1))
            classes = [TINY_COCO_CLASSES[k] for k in rng.integers(0, len(TINY_COCO_CLASSES),
                                                                    count)]
            radii = list(rng.uniform(img_size * 0.12, img_size * 0.22, count))
            for cls, r, (cx, cy) in zip(classes, radii, draw.place(rng, img_size, radii)):
                shape, color, texture = _COCO_STYLE[cls]
                poly = _coco_polygon(rng, shape, cx, cy, r)
                mask = draw.polygon_mask(img_size, poly)
                draw.paint(img, mask, draw.texture(texture, img_size, color, rng.uniform(0, 8)))
                x0, y0 = poly.min(0)
                x1, y1 = poly.max(0)
                annotations.append(dict(
                    id=len(annotations) + 1 + split_idx * 100000,
                    image_id=img_id,
                    category_id=name_to_id[cls],
                    segmentation=[np.round(poly, 2).reshape(-1).tolist()],
                    area=round(_polygon_area(poly), 2),
                    bbox=[round(float(v), 2) for v in (x0, y0, x1 - x0, y1 - y0)],
                    iscrowd=0))
                per_class[cls] += 1
            draw.save_rgb(img, osp.join(root, f'{split}2017', file_name))
            images.append(dict(id=img_id, file_name=file_name, height=img_size,
                               width=img_size, license=1))
        ann_file = osp.join(root, 'annotations', f'instances_{split}2017.json')
        os.makedirs(osp.dirname(ann_file), exist_ok=True)
        with open(ann_file, 'w') as f:
            json.dump(dict(
                info=dict(description='flora_mm tiny COCO', version='1.0', year=2017),
                licenses=[dict(id=1, name='CC0', url='')],
                images=images,
                annotations=annotations,
                categories=[dict(id=i, name=n, supercategory='tiny')
                            for i, n in COCO_CATEGORIES]), f)
        summary[split] = dict(num_images=num, num_instances=len(annotations),
                              per_class=per_class)
    return summary


# --------------------------------------------------------------------------------------------
# ADE20K semantic segmentation
# --------------------------------------------------------------------------------------------
def ade_scene(rng: np.random.Generator, size: int,
              instances: Optional[List[Tuple[str, np.ndarray]]] = None
              ) -> Tuple[np.ndarray, np.ndarray]:
    """An outdoor scene: sky over grass or road, buildings and trees on the horizon, cars.

    If ``instances`` is given, ``(class, drawn mask)`` of every building, tree and car is
    appended to it, in drawing order (later ones may hide earlier ones).
    """
    label = np.zeros((size, size), np.uint8)
    horizon = int(rng.uniform(0.4, 0.6) * size)
    yy = np.mgrid[:size, :size][0].astype(np.float32)
    # sky: smooth vertical blue gradient
    img = np.empty((size, size, 3), np.float32)
    img[:] = np.array([90, 150, 235], np.float32)
    img += (yy / size * 50)[..., None] * np.array([1., 0.6, -0.2], np.float32)
    label[:horizon] = TINY_ADE_LABELS['sky']
    ground = 'grass' if rng.random() < 0.5 else 'road'
    if ground == 'grass':
        texture = draw.background(rng, size, (60, 150, 50), amplitude=60)
    else:
        texture = draw.background(rng, size, (105, 105, 110), amplitude=20)
        lane = (np.abs(yy - (horizon + size) / 2) < 1.5) & (
            (np.mgrid[:size, :size][1] // 8) % 2 == 0)
        texture[lane] = 235
    img[horizon:] = texture[horizon:]
    label[horizon:] = TINY_ADE_LABELS[ground]
    # buildings stand on the horizon, trees in front of them
    for _ in range(int(rng.integers(1, 3))):
        w, h = rng.uniform(0.15, 0.3) * size, rng.uniform(0.2, 0.35) * size
        x0 = rng.uniform(0, size - w)
        poly = np.array([[x0, horizon - h], [x0 + w, horizon - h], [x0 + w, horizon],
                         [x0, horizon]], np.float32)
        mask = draw.polygon_mask(size, poly)
        draw.paint(img, mask, draw.texture('grid', size, rng.uniform(170, 200) * np.array(
            [1., 0.85, 0.65]), rng.uniform(0, 7)))
        label[mask] = TINY_ADE_LABELS['building']
        if instances is not None:
            instances.append(('building', mask))
    for _ in range(int(rng.integers(1, 3))):
        r = rng.uniform(0.07, 0.12) * size
        mask = draw.polygon_mask(size, draw.circle(rng.uniform(r, size - r), horizon - r * 0.6, r))
        draw.paint(img, mask, draw.texture('grain', size, (25, 95, 30), rng.uniform(0, 6)))
        label[mask] = TINY_ADE_LABELS['tree']
        if instances is not None:
            instances.append(('tree', mask))
    for _ in range(int(rng.integers(0, 3))):
        w, h = rng.uniform(0.14, 0.2) * size, rng.uniform(0.07, 0.1) * size
        x0, y0 = rng.uniform(0, size - w), rng.uniform(horizon + 2, size - h)
        poly = np.array([[x0, y0], [x0 + w, y0], [x0 + w, y0 + h], [x0, y0 + h]], np.float32)
        mask = draw.polygon_mask(size, poly)
        draw.paint(img, mask, draw.texture('solid', size, (200, 30, 35), 0.))
        label[mask] = TINY_ADE_LABELS['car']
        if instances is not None:
            instances.append(('car', mask))
    # unlabelled clutter, value 0 ("other"), ignored by reduce_zero_label as in real ADE20K
    r = rng.uniform(0.03, 0.06) * size
    mask = draw.polygon_mask(size, draw.circle(*rng.uniform(r, size - r, 2), r, n=6))
    draw.paint(img, mask, draw.texture('solid', size, rng.uniform(0, 255, 3), 0.))
    label[mask] = 0
    img += rng.normal(0., 4., img.shape)
    return img, label


def make_ade20k(root: str, num_train: int = 16, num_val: int = 8, img_size: int = 128,
                seed: int = 0) -> Summary:
    """Write a tiny ADEChallengeData2016-style semantic segmentation set under ``root``.

    Label maps are single-channel png with ADE20K's 150-class values (class index + 1) and 0
    for unlabelled pixels, which ``reduce_zero_label=True`` turns into the ignore index.

    Args:
        root: Output folder (the ``data/ade/ADEChallengeData2016`` of a real setup).
        num_train: Images in ``training``.
        num_val: Images in ``validation``.
        img_size: Side of the square images in pixels.
        seed: Seed; the same arguments always give the same files.

    Returns:
        ``{'root', 'classes', 'train': {...}, 'val': {...}}``; ``classes`` maps the drawn class
        names to png values, each split holds ``num_images`` and ``pixels`` (png value -> count,
        0 included).
    """
    summary: Summary = dict(root=root, classes=dict(TINY_ADE_LABELS))
    for split_idx, (split, folder, num) in enumerate(
            (('train', 'training', num_train), ('val', 'validation', num_val))):
        rng = np.random.default_rng([seed, 1, split_idx])
        pixels: Dict[int, int] = {}
        for i in range(num):
            name = f'ADE_{split}_{i + 1:08d}'  # ADE_train_00000001 / ADE_val_00000001
            img, label = ade_scene(rng, img_size)
            draw.save_rgb(img, osp.join(root, 'images', folder, name + '.jpg'))
            out = osp.join(root, 'annotations', folder, name + '.png')
            os.makedirs(osp.dirname(out), exist_ok=True)
            Image.fromarray(label, mode='L').save(out)
            for value, count in zip(*np.unique(label, return_counts=True)):
                pixels[int(value)] = pixels.get(int(value), 0) + int(count)
        summary[split] = dict(num_images=num, pixels=dict(sorted(pixels.items())))
    return summary


# --------------------------------------------------------------------------------------------
# DOTA oriented object detection
# --------------------------------------------------------------------------------------------
def dota_object(cls: str, size: int, rng: np.random.Generator
                ) -> Tuple[np.ndarray, float, float, Tuple[int, int, int], str]:
    """Centred outline, oriented-box length/width, colour and texture of one object."""
    if cls == 'plane':  # a cross: fuselage plus wings, white
        length = rng.uniform(0.24, 0.32) * size
        span, body = length * 0.95, length * 0.18
        L, S, B = length / 2, span / 2, body / 2
        outline = np.array([[-L, -B], [-B * 2, -B], [-B * 2, -S], [B, -S], [B, -B], [L, -B],
                            [L, B], [B, B], [B, S], [-B * 2, S], [-B * 2, B], [-L, B]],
                           np.float32)
        return outline, length, span, (235, 235, 240), 'solid'
    if cls == 'ship':  # a pointed hull, dark with a pale deck stripe
        length, width = rng.uniform(0.26, 0.36) * size, rng.uniform(0.08, 0.11) * size
        L, W = length / 2, width / 2
        outline = np.array([[-L, 0], [-L * 0.6, -W], [L * 0.7, -W], [L, 0], [L * 0.7, W],
                            [-L * 0.6, W]], np.float32)
        return outline, length, width, (60, 70, 95), 'stripes'
    length, width = rng.uniform(0.16, 0.22) * size, rng.uniform(0.07, 0.09) * size  # truck
    L, W = length / 2, width / 2
    outline = np.array([[-L, -W], [L, -W], [L, W], [-L, W]], np.float32)
    return outline, length, width, (240, 150, 30), 'checker'


def make_dota(root: str, num_train: int = 16, num_val: int = 8, img_size: int = 128,
              max_objects: int = 4, difficult_ratio: float = 0.1, seed: int = 0) -> Summary:
    """Write a tiny split_ss_dota-style oriented detection set under ``root``.

    ``{train,val}/images/*.png`` with ``{train,val}/annfiles/*.txt``; each line is
    ``x1 y1 x2 y2 x3 y3 x4 y4 class difficulty``: the four corners, clockwise, of the oriented
    box of a top-down 'plane' (white cross), 'ship' (dark pointed hull) or 'large-vehicle'
    (orange checkered rectangle) at a random angle on a textured ground.

    Args:
        root: Output folder (the ``data/split_ss_dota`` of a real setup).
        num_train: Images in ``train``.
        num_val: Images in ``val``.
        img_size: Side of the square images in pixels.
        max_objects: Most objects per image.
        difficult_ratio: Fraction of objects marked difficulty 1 (others 0).
        seed: Seed; the same arguments always give the same files.

    Returns:
        ``{'root', 'classes', 'train': {...}, 'val': {...}}`` where each split holds
        ``num_images``, ``num_instances``, ``num_difficult`` and ``per_class`` counts.
    """
    summary: Summary = dict(root=root, classes=TINY_DOTA_CLASSES)
    for split_idx, (split, num) in enumerate((('train', num_train), ('val', num_val))):
        rng = np.random.default_rng([seed, 2, split_idx])
        per_class = {c: 0 for c in TINY_DOTA_CLASSES}
        instances = difficult = 0
        for i in range(num):
            name = f'P{split_idx:01d}{i:03d}__1024__0___0'  # split_ss_dota patch naming
            img = draw.background(rng, img_size, (125, 120, 95), amplitude=50)
            count = int(rng.integers(1, max_objects + 1))
            classes = [TINY_DOTA_CLASSES[k] for k in rng.integers(0, len(TINY_DOTA_CLASSES),
                                                                    count)]
            shapes = [dota_object(c, img_size, rng) for c in classes]
            radii = [math.hypot(s[1], s[2]) / 2 for s in shapes]
            lines = []
            for cls, (outline, length, width, color, texture), (cx, cy) in zip(
                    classes, shapes, draw.place(rng, img_size, radii)):
                angle = rng.uniform(0, math.pi)
                mask = draw.polygon_mask(img_size, draw.rotated(outline, cx, cy, angle))
                draw.paint(img, mask, draw.texture(texture, img_size, color, rng.uniform(0, 8)))
                L, W = length / 2, width / 2
                corners = draw.rotated(np.array([[-L, -W], [L, -W], [L, W], [-L, W]], np.float32),
                                       cx, cy, angle)  # clockwise in image coordinates (y down)
                hard = int(rng.random() < difficult_ratio)
                lines.append(' '.join(f'{v:.1f}' for v in corners.reshape(-1))
                             + f' {cls} {hard}')
                per_class[cls] += 1
                instances += 1
                difficult += hard
            draw.save_rgb(img, osp.join(root, split, 'images', name + '.png'))
            ann = osp.join(root, split, 'annfiles', name + '.txt')
            os.makedirs(osp.dirname(ann), exist_ok=True)
            with open(ann, 'w') as f:
                f.write('\n'.join(lines) + '\n')
        summary[split] = dict(num_images=num, num_instances=instances,
                              num_difficult=difficult, per_class=per_class)
    return summary


def make_all(root: str = 'data/tiny', seed: int = 0, **kwargs) -> Dict[str, Summary]:
    """Write the three tiny sets in the standard sub-folders of ``root``.

    Args:
        root: Parent folder; configs in ``configs/demo`` read ``data/tiny`` by default.
        seed: Seed shared by the three generators.
        **kwargs: ``num_train``, ``num_val``, ``img_size`` passed to every generator.

    Returns:
        ``{'coco': ..., 'ade20k': ..., 'dota': ...}``, the summaries of the generators.
    """
    return dict(
        coco=make_coco(osp.join(root, 'coco'), seed=seed, **kwargs),
        ade20k=make_ade20k(osp.join(root, 'ade', 'ADEChallengeData2016'), seed=seed, **kwargs),
        dota=make_dota(osp.join(root, 'split_ss_dota'), seed=seed, **kwargs))

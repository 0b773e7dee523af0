"""The fidelity experiment's data: a generated source domain to pre-train ConvNeXt-V2 on (no
pretrained weights can be downloaded here) and a domain-shifted target set.

* Source domain: front-view outdoor scenes (sky, grass/road, buildings, trees, cars) drawn by
  the tiny ADE20K generator, pre-trained as dense segmentation. The in-domain task detects the
  buildings, trees and cars of the same scenes (COCO format, mmdet), like ImageNet -> COCO.
* Shifted domain: top-down views (DOTA format, mmrotate) of rotated planes, ships and large
  vehicles on water or bare earth: new viewpoint, new objects, new textures.
"""
from __future__ import annotations

import json
import math
import os
import os.path as osp
import time
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from flora_mm.adapters import atomic_write
from flora_mm.testing import drawing as draw
from flora_mm.testing import tiny_datasets as tiny

# mmseg's default ImageNet normalization (RGB), also applied during pre-training.
MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)
# Source classes: the tiny ADE label values (0 = unlabelled -> ignored).
SOURCE_LABELS = tuple(sorted(tiny.TINY_ADE_LABELS.values()))
IGNORE = 255
# In-domain detection classes: the source scenes' objects.
SCENE_CLASSES = ('building', 'tree', 'car')
# Objects hidden down to fewer visible pixels are not annotated.
MIN_VISIBLE_PIXELS = 12
# Shifted domain: the tiny DOTA classes, drawn OBJECT_ZOOM x larger than the DOTA generator
# (at 64 px its trucks are 4 px wide, too small to learn in a CPU-sized schedule) and with
# textures that never occur in the source.
OBJECT_ZOOM = 1.6
_TOPDOWN_STYLE = {'plane': ((225, 225, 235), 'grain'), 'ship': ((70, 60, 90), 'checker'),
                  'large-vehicle': ((235, 160, 40), 'stripes')}


def make_scene_coco(root: str, num_train: int = 32, num_val: int = 16, img_size: int = 96,
                    seed: int = 0) -> dict:
    """Write the in-domain detection set: source scenes with COCO boxes of their objects.

    ``{train,val}2017/*.jpg`` and ``annotations/instances_{train,val}2017.json`` with the
    categories ``SCENE_CLASSES`` (ids 1..3); a box covers the visible part of a building, tree
    or car (others may hide it), objects with fewer than ``MIN_VISIBLE_PIXELS`` are left out.

    Args:
        root: Output folder (a ``data/coco``-style root).
        num_train: Training images.
        num_val: Validation images.
        img_size: Square image side in pixels.
        seed: Seed; the same arguments always give the same files.

    Returns:
        ``{'root', 'classes', 'train': {'num_images', 'per_class'}, 'val': {...}}``.
    """
    summary: dict = {'root': root, 'classes': SCENE_CLASSES}
    for split_idx, (split, num) in enumerate((('train', num_train), ('val', num_val))):
        rng = np.random.default_rng([seed, 5, split_idx])
        images, annotations = [], []
        per_class = dict.fromkeys(SCENE_CLASSES, 0)
        for i in range(num):
            instances: list = []
            img, label = tiny.ade_scene(rng, img_size, instances)
            img_id = i + 1
            for cls, mask in instances:
                ys, xs = np.nonzero(mask & (label == tiny.TINY_ADE_LABELS[cls]))
                if len(xs) < MIN_VISIBLE_PIXELS:
                    continue
                x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
                annotations.append(dict(
                    id=len(annotations) + 1, image_id=img_id,
                    category_id=SCENE_CLASSES.index(cls) + 1, iscrowd=0, area=int(len(xs)),
                    bbox=[int(x0), int(y0), int(x1 - x0), int(y1 - y0)]))
                per_class[cls] += 1
            file_name = f'{img_id:012d}.jpg'
            draw.save_rgb(img, osp.join(root, f'{split}2017', file_name))
            images.append(dict(id=img_id, file_name=file_name, height=img_size,
                               width=img_size))
        ann_file = osp.join(root, 'annotations', f'instances_{split}2017.json')
        os.makedirs(osp.dirname(ann_file), exist_ok=True)
        with open(ann_file, 'w') as f:
            json.dump(dict(images=images, annotations=annotations,
                           categories=[dict(id=k + 1, name=name)
                                       for k, name in enumerate(SCENE_CLASSES)]), f)
        summary[split] = {'num_images': num, 'per_class': per_class}
    return summary


def _topdown_scene(rng: np.random.Generator, size: int) -> tuple[np.ndarray, list[str]]:
    """One top-down image and its DOTA annotation lines."""
    water = rng.random() < 0.5
    img = draw.background(rng, size, (40, 80, 130) if water else (150, 120, 85),
                          amplitude=30 if water else 60)
    count = int(rng.integers(2, 5))
    kinds = [tiny.TINY_DOTA_CLASSES[k] for k in rng.integers(0, 3, count)]
    shapes = [tiny.dota_object(k, int(size * OBJECT_ZOOM), rng) for k in kinds]
    radii = [math.hypot(s[1], s[2]) / 2 for s in shapes]
    lines = []
    for kind, (outline, length, width, _, _), (cx, cy) in zip(
            kinds, shapes, draw.place(rng, size, radii)):
        color, texture = _TOPDOWN_STYLE[kind]
        angle = rng.uniform(0, math.pi)
        mask = draw.polygon_mask(size, draw.rotated(outline, cx, cy, angle))
        draw.paint(img, mask, draw.texture(texture, size, color, rng.uniform(0, 8)))
        half_l, half_w = length / 2, width / 2
        corners = draw.rotated(np.array([[-half_l, -half_w], [half_l, -half_w],
                                         [half_l, half_w], [-half_l, half_w]], np.float32),
                               cx, cy, angle)
        lines.append(' '.join(f'{v:.1f}' for v in corners.reshape(-1)) + f' {kind} 0')
    img += rng.normal(0., 4., img.shape)
    return img, lines


def make_topdown_dota(root: str, num_train: int = 32, num_val: int = 16, img_size: int = 96,
                      seed: int = 0) -> dict:
    """Write the shifted domain as a split_ss_dota-style oriented detection set.

    ``{train,val}/images/*.png`` and ``{train,val}/annfiles/*.txt`` (four corners, class,
    difficulty 0) of rotated planes, ships and large vehicles on water or bare earth.

    Args:
        root: Output folder (a ``data/split_ss_dota``-style root).
        num_train: Training images.
        num_val: Validation images.
        img_size: Square image side in pixels.
        seed: Seed; the same arguments always give the same files.

    Returns:
        ``{'root', 'classes', 'train': {'num_images', 'num_instances'}, 'val': {...}}``.
    """
    summary: dict = {'root': root, 'classes': tiny.TINY_DOTA_CLASSES}
    for split_idx, (split, num) in enumerate((('train', num_train), ('val', num_val))):
        rng = np.random.default_rng([seed, 7, split_idx])
        instances = 0
        for i in range(num):
            img, lines = _topdown_scene(rng, img_size)
            name = f'P{split_idx:01d}{i:03d}__1024__0___0'
            draw.save_rgb(img, osp.join(root, split, 'images', name + '.png'))
            ann = osp.join(root, split, 'annfiles', name + '.txt')
            os.makedirs(osp.dirname(ann), exist_ok=True)
            with open(ann, 'w') as f:
                f.write('\n'.join(lines) + '\n')
            instances += len(lines)
        summary[split] = {'num_images': num, 'num_instances': instances}
    return summary


def source_batch(rng: np.random.Generator, batch: int, size: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """A normalized batch of source scenes ``(B, 3, S, S)`` and class indices ``(B, S, S)``."""
    lut = np.full(256, IGNORE, np.int64)
    lut[list(SOURCE_LABELS)] = np.arange(len(SOURCE_LABELS))
    imgs, labels = zip(*(tiny.ade_scene(rng, size) for _ in range(batch)))
    x = (np.clip(np.stack(imgs), 0, 255) - np.asarray(MEAN)) / np.asarray(STD)
    return (torch.from_numpy(x.transpose(0, 3, 1, 2)).float(),
            torch.from_numpy(lut[np.stack(labels)]))


class _SegNet(nn.Module):
    """ConvNeXt-V2 with a light multi-scale linear head (pre-training only)."""

    def __init__(self, arch: str, num_classes: int, width: int = 32) -> None:
        super().__init__()
        import timm
        net = timm.create_model(f'convnextv2_{arch}', pretrained=False, num_classes=0)
        self.stem, self.stages = net.stem, net.stages
        chans = [info['num_chs'] for info in net.feature_info]
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in chans)
        self.cls = nn.Conv2d(width, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        x = self.stem(x)
        fused = 0
        for stage, lateral in zip(self.stages, self.lateral):
            x = stage(x)
            fused = fused + F.interpolate(lateral(x), size=(size[0] // 4, size[1] // 4),
                                          mode='bilinear', align_corners=False)
        return F.interpolate(self.cls(fused), size=size, mode='bilinear', align_corners=False)


def pretrain_source(out_path: str, arch: str = 'atto', iters: int = 300, batch: int = 16,
                    img_size: int = 64, lr: float = 2e-3, seed: int = 0,
                    log: Optional[Callable[[str], None]] = print) -> dict:
    """Pre-train ``convnextv2_<arch>`` on the source domain and save a timm state dict.

    Cached: if ``out_path`` and its ``.json`` record with the same settings exist, nothing runs.
    Only the backbone (``stem.*``, ``stages.*``, timm names) is saved, for ``pretrained=``.

    Args:
        out_path: Checkpoint file (``.pth``); ``<out_path>.json`` records settings and results.
        arch: ConvNeXt-V2 size.
        iters: AdamW steps (cosine schedule, fresh generated batch each step).
        batch: Images per step.
        img_size: Image side.
        lr: Peak learning rate.
        seed: Seed of data and initialization.
        log: Progress printer (None: silent).

    Returns:
        The record: settings plus ``final_loss``, ``pixel_acc`` (held-out batch), ``seconds``.
    """
    settings = dict(arch=arch, iters=iters, batch=batch, img_size=img_size, lr=lr, seed=seed)
    record_path = out_path + '.json'
    if osp.exists(out_path) and osp.exists(record_path):
        with open(record_path) as f:
            record = json.load(f)
        if record.get('settings') == settings:
            return record
    torch.manual_seed(seed)
    rng = np.random.default_rng([seed, 11])
    model = _SegNet(arch, len(SOURCE_LABELS))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=iters,
                                                pct_start=0.1)
    start, loss = time.time(), torch.tensor(math.nan)
    model.train()
    for step in range(iters):
        x, y = source_batch(rng, batch, img_size)
        loss = F.cross_entropy(model(x), y, ignore_index=IGNORE)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if log and (step + 1) % max(1, iters // 10) == 0:
            log(f'source pre-training {step + 1}/{iters}: loss {loss.item():.4f}')
    model.eval()
    x, y = source_batch(np.random.default_rng([seed, 12]), 2 * batch, img_size)
    with torch.no_grad():
        pred = model(x).argmax(1)
    valid = y != IGNORE
    acc = float((pred[valid] == y[valid]).float().mean())
    state = {k: v for k, v in model.state_dict().items() if k.startswith(('stem.', 'stages.'))}
    atomic_write(out_path, lambda tmp: torch.save(state, tmp))
    record = dict(settings=settings, final_loss=float(loss), pixel_acc=acc,
                  seconds=round(time.time() - start, 1))

    def write_record(tmp: str) -> None:
        with open(tmp, 'w') as f:
            json.dump(record, f, indent=1)
    atomic_write(record_path, write_record)
    return record

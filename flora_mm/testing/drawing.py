"""Drawing primitives of the generated datasets (numpy + Pillow): textured backgrounds,
class-specific fill patterns, polygons, rotation, non-overlapping placement, saving.

Shared by :mod:`flora_mm.testing.tiny_datasets` and the fidelity experiment's domains
(:mod:`flora_mm.analysis.source_domain`). Images are ``(H, W, 3)`` float arrays in 0..255.
"""
import math
import os
import os.path as osp
from typing import List, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw


def smooth_noise(rng: np.random.Generator, size: int, cells: int, channels: int = 1
                  ) -> np.ndarray:
    """Low-frequency noise in [0, 1]: a random ``cells x cells`` grid upsampled bilinearly."""
    grid = (rng.random((cells, cells, channels)) * 255).astype(np.uint8)
    layers = [np.asarray(Image.fromarray(grid[..., c]).resize((size, size), Image.BILINEAR))
              for c in range(channels)]
    return np.stack(layers, -1).astype(np.float32) / 255.


def background(rng: np.random.Generator, size: int, base: Sequence[float],
                amplitude: float = 40.) -> np.ndarray:
    """A textured (not flat) background: base colour + smooth blotches + fine grain."""
    img = np.asarray(base, np.float32)[None, None] + (
        smooth_noise(rng, size, 6, 3) - 0.5) * amplitude
    img += rng.normal(0., 6., (size, size, 3))
    return img


def texture(kind: str, size: int, color: Sequence[float], phase: float) -> np.ndarray:
    """A class-specific fill pattern; ``phase`` shifts it so instances differ."""
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    color = np.asarray(color, np.float32)
    if kind == 'solid':
        factor = np.ones_like(xx)
    elif kind == 'stripes':
        factor = 0.75 + 0.25 * np.sign(np.sin((xx + yy + phase) * 0.9))
    elif kind == 'checker':
        factor = 0.7 + 0.3 * (((xx + phase) // 4 + (yy + phase) // 4) % 2)
    elif kind == 'grid':  # windows of a building
        factor = np.where(((xx + phase) % 7 < 3) & ((yy + phase) % 8 < 4), 0.45, 1.)
    elif kind == 'grain':
        factor = 0.85 + 0.15 * np.sin(xx * 1.7 + phase) * np.cos(yy * 2.3 + phase)
    else:
        raise ValueError(f'unknown texture {kind!r}')
    return factor[..., None] * color[None, None]


def polygon_mask(size: int, polygon: np.ndarray) -> np.ndarray:
    """Boolean mask of a filled polygon given as ``(N, 2)`` xy points."""
    canvas = Image.new('L', (size, size), 0)
    ImageDraw.Draw(canvas).polygon([tuple(p) for p in polygon.tolist()], fill=1)
    return np.asarray(canvas, bool)


def paint(img: np.ndarray, mask: np.ndarray, texture: np.ndarray) -> None:
    """Copy ``texture`` into ``img`` where ``mask`` is set."""
    img[mask] = texture[mask]


def circle(cx: float, cy: float, r: float, n: int = 20) -> np.ndarray:
    """``(n, 2)`` points of a circle (a regular ``n``-gon) around (cx, cy)."""
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1)


def rotated(points: np.ndarray, cx: float, cy: float, angle: float) -> np.ndarray:
    """Rotate centred ``(N, 2)`` points by ``angle`` (radians) and move them to (cx, cy)."""
    c, s = math.cos(angle), math.sin(angle)
    rot = np.array([[c, -s], [s, c]], np.float32)
    return points @ rot.T + np.array([cx, cy], np.float32)


def place(rng: np.random.Generator, size: int, radii: List[float], margin: float = 2.
           ) -> List[Tuple[float, float]]:
    """Centres for objects of the given bounding radii, inside the image, not overlapping."""
    centres: List[Tuple[float, float, float]] = []
    for r in radii:
        for _ in range(200):
            cx, cy = rng.uniform(r + margin, size - r - margin, 2)
            if all(math.hypot(cx - x, cy - y) > r + q + margin for x, y, q in centres):
                centres.append((cx, cy, r))
                break
    return [(x, y) for x, y, _ in centres]


def save_rgb(img: np.ndarray, path: str) -> None:
    """Save an RGB float image (clipped to 0..255) as jpg (quality 95) or png."""
    os.makedirs(osp.dirname(path), exist_ok=True)
    image = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    if path.endswith('.jpg'):
        image.save(path, quality=95)
    else:
        image.save(path)

"""Test and demo utilities: tiny datasets in the real COCO, ADE20K and DOTA formats, and the
drawing primitives they are made of (:mod:`.drawing`)."""
from .tiny_datasets import (TINY_ADE_LABELS, TINY_COCO_CLASSES, TINY_DOTA_CLASSES, ade_scene,
                            dota_object, make_ade20k, make_all, make_coco, make_dota)

__all__ = [
    'make_coco', 'make_ade20k', 'make_dota', 'make_all', 'ade_scene', 'dota_object',
    'TINY_COCO_CLASSES', 'TINY_ADE_LABELS', 'TINY_DOTA_CLASSES'
]

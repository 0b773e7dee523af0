"""Test and demo utilities: tiny datasets in the real COCO, ADE20K and DOTA formats."""
from .tiny_datasets import (TINY_ADE_LABELS, TINY_COCO_CLASSES, TINY_DOTA_CLASSES, make_ade20k,
                            make_all, make_coco, make_dota)

__all__ = [
    'make_coco', 'make_ade20k', 'make_dota', 'make_all', 'TINY_COCO_CLASSES', 'TINY_ADE_LABELS',
    'TINY_DOTA_CLASSES'
]

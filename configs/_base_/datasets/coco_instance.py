# COCO 2017 instance segmentation (data/coco), CocoMetric on bbox + segm: mmdet's own base.
_base_ = 'mmdet::_base_/datasets/coco_instance.py'

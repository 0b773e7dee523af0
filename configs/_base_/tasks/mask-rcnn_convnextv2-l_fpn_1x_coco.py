# Mask R-CNN 1x on COCO with ConvNeXt-V2-L, before a fine-tuning method is chosen: what every
# Table-1 row of the task shares. Each row (configs/flora/mask-rcnn, configs/baselines/
# mask-rcnn) is this file plus its `model.backbone.adapter`; without an adapter the whole
# backbone trains. Neck and heads train fully in every row, as in the paper.
_base_ = [
    '../models/mask-rcnn_convnextv2-l_fpn.py',
    '../datasets/coco_instance.py',
    '../schedules/adamw_1x.py',
    '../runtimes/mmdet_runtime.py'
]

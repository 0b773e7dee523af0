# Table 1, BitFit row "0.2M": only the biases of the backbone train.
_base_ = '../../_base_/tasks/mask-rcnn_convnextv2-l_fpn_1x_coco.py'

model = dict(backbone=dict(adapter=dict(type='BitFit')))

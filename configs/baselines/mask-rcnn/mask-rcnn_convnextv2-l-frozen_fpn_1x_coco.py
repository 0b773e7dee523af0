# Table 1, Base row: the pretrained backbone stays frozen, only neck and heads train.
_base_ = '../../_base_/tasks/mask-rcnn_convnextv2-l_fpn_1x_coco.py'

model = dict(backbone=dict(adapter=dict(type='Frozen')))

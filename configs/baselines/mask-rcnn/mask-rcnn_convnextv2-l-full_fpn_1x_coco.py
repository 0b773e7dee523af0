# Table 1, Fully FT row "196M": every backbone parameter trains.
_base_ = '../../_base_/tasks/mask-rcnn_convnextv2-l_fpn_1x_coco.py'

model = dict(backbone=dict(adapter=dict(type='Full')))

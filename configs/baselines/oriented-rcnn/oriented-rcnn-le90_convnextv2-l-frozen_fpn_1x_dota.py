# Table 1, Base row: the pretrained backbone stays frozen, only neck and heads train.
_base_ = '../../_base_/tasks/oriented-rcnn-le90_convnextv2-l_fpn_1x_dota.py'

model = dict(backbone=dict(adapter=dict(type='Frozen')))

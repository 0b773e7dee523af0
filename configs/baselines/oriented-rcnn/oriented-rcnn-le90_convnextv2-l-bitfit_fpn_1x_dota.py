# Table 1, BitFit row "0.2M": only the biases of the backbone train.
_base_ = '../../_base_/tasks/oriented-rcnn-le90_convnextv2-l_fpn_1x_dota.py'

model = dict(backbone=dict(adapter=dict(type='BitFit')))

# Table 1, Fully FT row "196M": every backbone parameter trains.
_base_ = '../../_base_/tasks/oriented-rcnn-le90_convnextv2-l_fpn_1x_dota.py'

model = dict(backbone=dict(adapter=dict(type='Full')))

# Table 1, Fully FT row "196M": every backbone parameter trains.
_base_ = '../../flora/oriented-rcnn/oriented-rcnn-le90_convnextv2-l-flora-r42_fpn_1x_dota.py'

model = dict(backbone=dict(adapter=dict(_delete_=True, type='Full')))

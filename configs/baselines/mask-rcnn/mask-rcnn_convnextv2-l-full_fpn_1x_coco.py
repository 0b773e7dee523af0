# Table 1, Fully FT row "196M": every backbone parameter trains.
_base_ = '../../flora/mask-rcnn/mask-rcnn_convnextv2-l-flora-r42_fpn_1x_coco.py'

model = dict(backbone=dict(adapter=dict(_delete_=True, type='Full')))

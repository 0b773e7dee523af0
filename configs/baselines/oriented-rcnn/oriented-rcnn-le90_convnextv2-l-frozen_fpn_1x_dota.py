# Table 1, Base row: the pretrained backbone stays frozen, only neck and heads train.
_base_ = '../../flora/oriented-rcnn/oriented-rcnn-le90_convnextv2-l-flora-r42_fpn_1x_dota.py'

model = dict(backbone=dict(adapter=dict(_delete_=True, type='Frozen')))

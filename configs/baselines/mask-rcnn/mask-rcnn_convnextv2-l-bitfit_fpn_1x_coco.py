# Table 1, BitFit row "0.2M": only the biases of the backbone train.
_base_ = '../../flora/mask-rcnn/mask-rcnn_convnextv2-l-flora-r42_fpn_1x_coco.py'

model = dict(backbone=dict(adapter=dict(_delete_=True, type='BitFit')))

# Fig. 3(a) rank sweep on COCO: the r42 config with rank 16.
_base_ = './mask-rcnn_convnextv2-l-flora-r42_fpn_1x_coco.py'

model = dict(backbone=dict(adapter=dict(rank=16)))

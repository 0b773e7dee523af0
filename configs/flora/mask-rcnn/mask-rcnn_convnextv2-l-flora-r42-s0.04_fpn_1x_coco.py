# Fig. 5(a) scale sweep on COCO: the r42 config (s = 4) with s = 0.04.
_base_ = './mask-rcnn_convnextv2-l-flora-r42_fpn_1x_coco.py'

model = dict(backbone=dict(adapter=dict(scale=0.04)))

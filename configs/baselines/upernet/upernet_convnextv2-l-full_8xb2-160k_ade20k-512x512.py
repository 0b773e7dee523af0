# Table 1, Fully FT row "196M": every backbone parameter trains.
_base_ = '../../_base_/tasks/upernet_convnextv2-l_8xb2-160k_ade20k-512x512.py'

model = dict(backbone=dict(adapter=dict(type='Full')))

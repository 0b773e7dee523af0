# Table 1, Base row: the pretrained backbone stays frozen, only neck and heads train.
_base_ = '../../_base_/tasks/upernet_convnextv2-l_8xb2-160k_ade20k-512x512.py'

model = dict(backbone=dict(adapter=dict(type='Frozen')))

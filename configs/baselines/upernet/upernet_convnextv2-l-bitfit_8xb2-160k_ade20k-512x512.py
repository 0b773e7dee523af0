# Table 1, BitFit row "0.2M": only the biases of the backbone train.
_base_ = '../../_base_/tasks/upernet_convnextv2-l_8xb2-160k_ade20k-512x512.py'

model = dict(backbone=dict(adapter=dict(type='BitFit')))

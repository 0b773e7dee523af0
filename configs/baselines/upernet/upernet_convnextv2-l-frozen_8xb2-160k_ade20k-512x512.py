# Table 1, Base row: the pretrained backbone stays frozen, only neck and heads train.
_base_ = '../../flora/upernet/upernet_convnextv2-l-flora-r42_8xb2-160k_ade20k-512x512.py'

model = dict(backbone=dict(adapter=dict(_delete_=True, type='Frozen')))

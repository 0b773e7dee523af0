# Table 1, BitFit row "0.2M": only the biases of the backbone train.
_base_ = '../../flora/upernet/upernet_convnextv2-l-flora-r42_8xb2-160k_ade20k-512x512.py'

model = dict(backbone=dict(adapter=dict(_delete_=True, type='BitFit')))

# Table 1, LoRA row "12.94M" (here 12.93M): LoRA on the same backbone layers as FLoRA,
# alpha unset (it defaults to the rank: scale 1); convs are adapted through their
# (out, in*k*k) matrix.
_base_ = '../../flora/upernet/upernet_convnextv2-l-flora-r42_8xb2-160k_ade20k-512x512.py'

model = dict(
    backbone=dict(
        adapter=dict(
            _delete_=True,
            type='LoRA',
            rank=42)))

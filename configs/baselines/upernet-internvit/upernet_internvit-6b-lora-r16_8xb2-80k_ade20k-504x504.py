# Table 2, LoRA column at 0.66 % (here r = 16: 39.32M = 0.666 % of 5.906B, solve_rank on the
# meta-device 6B): LoRA (alpha = rank, i.e. scale 1) on the same linears as FLoRA.
_base_ = '../../_base_/tasks/upernet_internvit-6b_8xb2-80k_ade20k-504x504.py'

model = dict(
    backbone=dict(
        adapter=dict(type='LoRA', rank=16, alpha=16, targets={{_base_.adapter_targets}})))

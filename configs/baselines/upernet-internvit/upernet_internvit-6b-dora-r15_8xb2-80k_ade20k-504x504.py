# Table 2, DoRA column at 0.66 % (here r = 15: 38.25M = 0.648 % of 5.906B, solve_rank on the
# meta-device 6B): DoRA (alpha = rank, i.e. scale 1) on the same linears as FLoRA.
_base_ = '../../_base_/tasks/upernet_internvit-6b_8xb2-80k_ade20k-504x504.py'

model = dict(
    backbone=dict(
        adapter=dict(type='DoRA', rank=15, alpha=15, targets={{_base_.adapter_targets}})))

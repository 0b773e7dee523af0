# Table 2, DoRA column at 0.32 % (here r = 7: 18.59M = 0.315 % of 5.906B, solve_rank on the
# meta-device 6B): DoRA (alpha = rank, i.e. scale 1) on the same linears as FLoRA.
_base_ = '../../_base_/tasks/upernet_internvit-6b_8xb2-80k_ade20k-504x504.py'

model = dict(
    backbone=dict(
        adapter=dict(type='DoRA', rank=7, alpha=7, targets={{_base_.adapter_targets}})))

# Table 2, Base column: InternViT-6B frozen, only the new pyramid and UperNet train (InternVL's
# head tuning: no stochastic depth, no layer decay).
_base_ = '../../_base_/tasks/upernet_internvit-6b_8xb2-80k_ade20k-504x504.py'

model = dict(backbone=dict(drop_path_rate=0., adapter=dict(type='Frozen')))

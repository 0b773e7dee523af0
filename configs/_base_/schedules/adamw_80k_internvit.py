# InternVL's InternViT-6B UperNet schedule: 80k iterations, AdamW lr 4e-5 (batch 16 = 8 GPUs x
# 2), weight decay 0.05 (none on norms, biases, pos_embed, cls_token), 1500 linear warm-up
# iterations, then poly decay (power 1), layer-wise lr decay 0.95 over the 48 blocks.
_base_ = 'mmseg::_base_/schedules/schedule_80k.py'

param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', power=1.0, begin=1500, end=80000, eta_min=0., by_epoch=False)
]
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=4e-5, betas=(0.9, 0.999), weight_decay=0.05),
    constructor='flora_mm.LayerDecayOptimizerConstructor',
    paramwise_cfg=dict(decay_rate=0.95, decay_type='layer_wise'))
auto_scale_lr = dict(enable=False, base_batch_size=16)

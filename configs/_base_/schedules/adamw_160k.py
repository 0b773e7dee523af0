# mmseg's 160k-iteration schedule with AdamW + linear warmup + poly decay, as in mmseg's
# ConvNeXt UperNet configs (add `--amp` to tools/train.py for mixed precision on GPUs).
_base_ = 'mmseg::_base_/schedules/schedule_160k.py'

param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', power=1.0, begin=1500, end=160000, eta_min=0., by_epoch=False)
]

optim_wrapper = dict(
    optimizer=dict(
        _delete_=True, type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(norm_decay_mult=0., bias_decay_mult=0.))

# lr above is for 8 GPUs x 2 images.
auto_scale_lr = dict(enable=False, base_batch_size=16)

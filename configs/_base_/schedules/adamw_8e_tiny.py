# adamw_1x.py shortened for the tiny detection sets (configs/demo): 8 epochs, 5 warm-up
# iterations, cosine decay, lr 1e-3 (batch 4).
_base_ = './adamw_1x.py'

max_epochs = 8
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=5),
    dict(type='CosineAnnealingLR', T_max=max_epochs, begin=0, end=max_epochs, by_epoch=True)
]
optim_wrapper = dict(optimizer=dict(lr=1e-3))

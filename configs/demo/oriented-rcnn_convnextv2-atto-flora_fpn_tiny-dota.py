# Demo: the FLoRA Oriented R-CNN config of Table 1 on ConvNeXt-V2-atto and the tiny DOTA set
# of tools/misc/make_tiny_datasets.py (128 px; 'plane', 'ship', 'large-vehicle'), for a CPU.
# Differs from the real config only in size: backbone, image scale, proposal / RoI counts,
# schedule; no backbone weights to load.
# Data root: $FLORA_MM_TINY_DATA (default data/tiny) + /split_ss_dota.
_base_ = '../flora/oriented-rcnn/oriented-rcnn-le90_convnextv2-l-flora-r42_fpn_1x_dota.py'

data_root = '{{$FLORA_MM_TINY_DATA:data/tiny}}/split_ss_dota/'
metainfo = dict(classes=('plane', 'ship', 'large-vehicle'))
img_scale = (128, 128)

model = dict(
    backbone=dict(arch='atto', pretrained=None, drop_path_rate=0., adapter=dict(rank=16)),
    neck=dict(in_channels=[40, 80, 160, 320], out_channels=64),
    rpn_head=dict(in_channels=64, feat_channels=64),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=64),
        bbox_head=dict(in_channels=64, fc_out_channels=128, num_classes=3)),
    train_cfg=dict(
        rpn_proposal=dict(nms_pre=500, max_per_img=200),
        rcnn=dict(sampler=dict(num=128))),
    test_cfg=dict(
        rpn=dict(nms_pre=500, max_per_img=100), rcnn=dict(nms_pre=200, max_per_img=20)))

train_pipeline = [
    dict(type='mmdet.LoadImageFromFile'),
    dict(type='mmdet.LoadAnnotations', with_bbox=True, box_type='qbox'),
    dict(type='ConvertBoxType', box_type_mapping=dict(gt_bboxes='rbox')),
    dict(type='mmdet.Resize', scale=img_scale, keep_ratio=True),
    dict(type='mmdet.RandomFlip', prob=0.75, direction=['horizontal', 'vertical', 'diagonal']),
    dict(type='mmdet.PackDetInputs')
]
val_pipeline = [
    dict(type='mmdet.LoadImageFromFile'),
    dict(type='mmdet.Resize', scale=img_scale, keep_ratio=True),
    dict(type='mmdet.LoadAnnotations', with_bbox=True, box_type='qbox'),
    dict(type='ConvertBoxType', box_type_mapping=dict(gt_bboxes='rbox')),
    dict(type='mmdet.PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))
]
train_dataloader = dict(
    batch_size=4, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, metainfo=metainfo, img_shape=img_scale,
                 pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=4, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, metainfo=metainfo, img_shape=img_scale,
                 pipeline=val_pipeline))
test_dataloader = val_dataloader

max_epochs = 8
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=5),
    dict(type='CosineAnnealingLR', T_max=max_epochs, begin=0, end=max_epochs, by_epoch=True)
]
optim_wrapper = dict(optimizer=dict(lr=1e-3))
default_hooks = dict(logger=dict(interval=5), checkpoint=dict(interval=max_epochs))

# The tiny DOTA set of tools/misc/make_tiny_datasets.py (128 px; 'plane', 'ship',
# 'large-vehicle'), split as tools/dataset_converters/dota_split.py writes it: dota.py's
# pipelines and metric at the size of the images, batches of 4 read in the main process, for a
# CPU.
# Data root: $FLORA_MM_TINY_DATA (default data/tiny) + /split_ss_dota.
_base_ = './dota.py'

data_root = '{{$FLORA_MM_TINY_DATA:data/tiny}}/split_ss_dota/'
metainfo = dict(classes=('plane', 'ship', 'large-vehicle'))
img_scale = (128, 128)

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

# The tiny ADE20K set of tools/misc/make_tiny_datasets.py (128 px, 6 of the 150 classes drawn):
# ade20k.py at the size of the images (128 px crops), batches of 4 read in the main process,
# for a CPU. The colours and textures are the labels: no photometric distortion.
# Data root: $FLORA_MM_TINY_DATA (default data/tiny) + /ade/ADEChallengeData2016.
_base_ = './ade20k.py'

data_root = '{{$FLORA_MM_TINY_DATA:data/tiny}}/ade/ADEChallengeData2016/'
crop_size = (128, 128)

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomResize', scale=crop_size, ratio_range=(1.0, 1.5), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=crop_size, keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs')
]
train_dataloader = dict(
    batch_size=4, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=4, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader

# DOTA-v1.0 test-server submission with the FLoRA r42 Oriented R-CNN (the test set has no
# labels), as in mmrotate's own dota.py: train on the train + val patches without validation,
# then `tools/test.py` runs on the test patches and writes the full-image results, merged from
# the patches (rotated NMS at IoU 0.1), in the server's Task1 format:
# work_dirs/dota_test/Task1/Task1_<class>.txt and Task1.zip (the folder must not exist yet).
#   python tools/dataset_converters/dota_split.py data/DOTA data/split_ss_dota \
#       --splits trainval test
# For another Table-1 row, copy this file and change `_base_`.
_base_ = './oriented-rcnn-le90_convnextv2-l-flora-r42_fpn_1x_dota.py'

train_dataloader = dict(
    dataset=dict(ann_file='trainval/annfiles/', data_prefix=dict(img_path='trainval/images/')))
# no validation: val is part of the training data
val_cfg = None
val_dataloader = None
val_evaluator = None

test_pipeline = [
    dict(type='mmdet.LoadImageFromFile', backend_args=None),
    dict(type='mmdet.Resize', scale=(1024, 1024), keep_ratio=True),
    dict(type='mmdet.PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))
]
test_dataloader = dict(
    dataset=dict(
        ann_file='',  # no labels: DOTADataset lists the images of data_prefix
        data_prefix=dict(img_path='test/images/'),
        pipeline=test_pipeline))
test_evaluator = dict(
    _delete_=True,
    type='DOTAMetric',
    format_only=True,
    merge_patches=True,
    outfile_prefix='work_dirs/dota_test/Task1')

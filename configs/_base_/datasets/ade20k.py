# ADE20K (data/ade/ADEChallengeData2016), 512x512 crops, IoUMetric on mIoU + mAcc.
_base_ = 'mmseg::_base_/datasets/ade20k.py'

train_dataloader = dict(batch_size=2)  # x 8 GPUs
val_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'])  # reports mIoU, mAcc and aAcc
test_evaluator = val_evaluator

"""The tiny datasets load through the real mmdet / mmseg / mmrotate datasets and metrics.

Each generator reports what it drew; the real dataset classes must load exactly that, and the
real metric must score the ground truth, fed back as a prediction, as perfect. This checks the
on-disk formats (file layout, json fields, png label values, DOTA lines) end to end.
"""
import filecmp
import functools
import os.path as osp

import numpy as np
import pytest
import torch

import flora_mm  # noqa: F401  (compat fixes before mmrotate is imported)
from flora_mm.testing import (TINY_ADE_LABELS, TINY_COCO_CLASSES, TINY_DOTA_CLASSES,
                              make_ade20k, make_coco, make_dota)


@pytest.fixture(scope='module')
def tiny_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp('tiny'))


@pytest.fixture(scope='module')
def coco(tiny_root):
    return make_coco(osp.join(tiny_root, 'coco'))


@pytest.fixture(scope='module')
def ade(tiny_root):
    return make_ade20k(osp.join(tiny_root, 'ade', 'ADEChallengeData2016'))


@pytest.fixture(scope='module')
def dota(tiny_root):
    return make_dota(osp.join(tiny_root, 'split_ss_dota'))


def test_deterministic(tmp_path):
    a = make_dota(str(tmp_path / 'a'), num_train=2, num_val=1, seed=3)
    b = make_dota(str(tmp_path / 'b'), num_train=2, num_val=1, seed=3)
    c = make_dota(str(tmp_path / 'c'), num_train=2, num_val=1, seed=4)
    assert a['train'] == b['train']
    cmp = filecmp.dircmp(str(tmp_path / 'a' / 'train' / 'images'),
                         str(tmp_path / 'b' / 'train' / 'images'))
    assert cmp.left_list and not cmp.diff_files
    assert not filecmp.cmp(str(tmp_path / 'a' / 'train' / 'annfiles' / 'P0000__1024__0___0.txt'),
                           str(tmp_path / 'c' / 'train' / 'annfiles' / 'P0000__1024__0___0.txt'),
                           shallow=False)


def _build(registry_scope: str, cfg: dict):
    from mmengine.registry import DATASETS, init_default_scope
    init_default_scope(registry_scope)
    return DATASETS.build(cfg)


def test_coco_loads_with_mmdet(coco):
    from mmdet.evaluation import CocoMetric
    root = coco['root']
    pipeline = [
        dict(type='LoadImageFromFile'),
        dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
        dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape'))
    ]
    for split in ('train', 'val'):
        dataset = _build('mmdet', dict(
            type='CocoDataset', data_root=root, metainfo=dict(classes=TINY_COCO_CLASSES),
            ann_file=f'annotations/instances_{split}2017.json',
            data_prefix=dict(img=f'{split}2017/'), test_mode=split == 'val',
            pipeline=pipeline))
        assert len(dataset) == coco[split]['num_images']
        labels = np.concatenate(
            [dataset[i]['data_samples'].gt_instances.labels.numpy() for i in range(len(dataset))])
        counts = np.bincount(labels, minlength=len(TINY_COCO_CLASSES))
        assert dict(zip(TINY_COCO_CLASSES, counts.tolist())) == coco[split]['per_class']

    # the full 80-class metainfo of real configs maps the same objects to COCO's labels
    full = _build('mmdet', dict(type='CocoDataset', data_root=root,
                                ann_file='annotations/instances_val2017.json',
                                data_prefix=dict(img='val2017/'), test_mode=True,
                                pipeline=pipeline))
    sample = full[0]['data_samples']
    names = [full.metainfo['classes'][i] for i in sample.gt_instances.labels.tolist()]
    assert set(names) <= set(TINY_COCO_CLASSES)
    assert sample.gt_instances.masks.areas.min() > 100

    # ground truth fed back as prediction scores mAP 1 on bbox and segm
    metric = CocoMetric(ann_file=osp.join(root, 'annotations/instances_val2017.json'),
                        metric=['bbox', 'segm'])
    metric.dataset_meta = dataset.metainfo
    for i in range(len(dataset)):
        gt = dataset[i]['data_samples']
        pred = dict(
            img_id=gt.img_id, ori_shape=gt.ori_shape,
            pred_instances=dict(
                bboxes=gt.gt_instances.bboxes.tensor, labels=gt.gt_instances.labels,
                scores=torch.ones(len(gt.gt_instances)),
                masks=torch.from_numpy(gt.gt_instances.masks.to_ndarray()).bool()))
        metric.process({}, [pred])
    results = metric.evaluate(len(dataset))
    assert results['coco/bbox_mAP'] > 0.99
    assert results['coco/segm_mAP'] > 0.95  # polygons re-rasterised: borders differ a little


def test_ade20k_loads_with_mmseg(ade):
    import mmseg.datasets  # noqa: F401  (register)
    from mmseg.evaluation import IoUMetric
    from mmseg.structures import SegDataSample
    from mmengine.structures import PixelData
    for split, folder in (('train', 'training'), ('val', 'validation')):
        dataset = _build('mmseg', dict(
            type='ADE20KDataset', data_root=ade['root'],
            data_prefix=dict(img_path=f'images/{folder}', seg_map_path=f'annotations/{folder}'),
            pipeline=[dict(type='LoadImageFromFile'),
                      dict(type='LoadAnnotations', reduce_zero_label=True),
                      dict(type='PackSegInputs')]))
        assert len(dataset) == ade[split]['num_images']
        maps = [dataset[i]['data_samples'].gt_sem_seg.data.numpy() for i in range(len(dataset))]
        values, counts = np.unique(np.concatenate([m.ravel() for m in maps]), return_counts=True)
        # reduce_zero_label: value v -> class v - 1, and 0 ("other") -> 255 (ignored)
        expected = {(v - 1 if v else 255): n for v, n in ade[split]['pixels'].items()}
        assert dict(zip(values.tolist(), counts.tolist())) == expected
        names = {dataset.metainfo['classes'][v].strip() for v in values if v != 255}
        assert names <= set(TINY_ADE_LABELS)

    metric = IoUMetric(iou_metrics=['mIoU'])
    metric.dataset_meta = dataset.metainfo
    for i in range(len(dataset)):
        sample = dataset[i]['data_samples']
        pred = SegDataSample(gt_sem_seg=sample.gt_sem_seg,
                             pred_sem_seg=PixelData(data=sample.gt_sem_seg.data.clone()))
        metric.process({}, [pred.to_dict()])
    results = metric.evaluate(len(dataset))
    assert results['mIoU'] == pytest.approx(100.)


@pytest.mark.slow
def test_dota_loads_with_mmrotate(dota, monkeypatch):
    from mmrotate.evaluation import DOTAMetric, eval_rbbox_map
    from mmrotate.evaluation.metrics import dota_metric
    from mmrotate.utils import register_all_modules
    register_all_modules(init_default_scope=False)
    for split in ('train', 'val'):
        dataset = _build('mmrotate', dict(
            type='DOTADataset', data_root=dota['root'], ann_file=f'{split}/annfiles/',
            data_prefix=dict(img_path=f'{split}/images/'), img_shape=(128, 128),
            metainfo=dict(classes=TINY_DOTA_CLASSES), test_mode=split == 'val',
            pipeline=[dict(type='mmdet.LoadImageFromFile'),
                      dict(type='mmdet.LoadAnnotations', with_bbox=True, box_type='qbox'),
                      dict(type='ConvertBoxType', box_type_mapping=dict(gt_bboxes='rbox')),
                      dict(type='mmdet.PackDetInputs',
                           meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape'))]))
        assert len(dataset) == dota[split]['num_images']
        samples = [dataset[i]['data_samples'] for i in range(len(dataset))]
        labels = np.concatenate([s.gt_instances.labels.numpy() for s in samples])
        counts = np.bincount(labels, minlength=len(TINY_DOTA_CLASSES))
        assert dict(zip(TINY_DOTA_CLASSES, counts.tolist())) == dota[split]['per_class']
        rboxes = torch.cat([s.gt_instances.bboxes.tensor for s in samples])
        assert rboxes.shape[1] == 5  # cx, cy, w, h, angle
        assert ((rboxes[:, :2] > 0) & (rboxes[:, :2] < 128)).all()
        assert (rboxes[:, 2:4] > 5).all()

    # one worker instead of mmrotate's 4 spawned ones: each re-imports mmrotate (seconds)
    monkeypatch.setattr(dota_metric, 'eval_rbbox_map', functools.partial(eval_rbbox_map, nproc=1))
    metric = DOTAMetric(metric='mAP')
    metric.dataset_meta = dataset.metainfo
    for sample in samples:
        pred = dict(img_id=sample.img_id, gt_instances=dict(
            bboxes=sample.gt_instances.bboxes.tensor, labels=sample.gt_instances.labels),
            ignored_instances=dict(bboxes=torch.zeros(0, 5), labels=torch.zeros(0).long()),
            pred_instances=dict(bboxes=sample.gt_instances.bboxes.tensor,
                                labels=sample.gt_instances.labels,
                                scores=torch.ones(len(sample.gt_instances))))
        metric.process({}, [pred])
    results = metric.evaluate(len(samples))
    assert results['dota/mAP'] > 0.99

"""The fidelity experiment's generated detection sets load through the real mmdet / mmrotate
datasets and metrics, and their boxes agree with the drawn pixels and object sizes."""
import filecmp
import functools
import json
import os.path as osp

import numpy as np
import pytest
import torch
from PIL import Image

import flora_mm  # noqa: F401  (compat fixes before mmrotate is imported)
from flora_mm.analysis.source_domain import (OBJECT_ZOOM, SCENE_CLASSES, make_scene_coco,
                                             make_topdown_dota)
from flora_mm.testing import TINY_DOTA_CLASSES

SIZE = 96


@pytest.fixture(scope='module')
def scenes(tmp_path_factory):
    return make_scene_coco(str(tmp_path_factory.mktemp('scenes')), num_train=6, num_val=6,
                           img_size=SIZE)


@pytest.fixture(scope='module')
def topdown(tmp_path_factory):
    return make_topdown_dota(str(tmp_path_factory.mktemp('topdown')), num_train=6, num_val=6,
                             img_size=SIZE)


def _build(scope: str, cfg: dict):
    from mmengine.registry import DATASETS, init_default_scope
    init_default_scope(scope)
    return DATASETS.build(cfg)


def test_generators_are_deterministic(tmp_path):
    for maker in (make_scene_coco, make_topdown_dota):
        a = maker(str(tmp_path / maker.__name__ / 'a'), num_train=2, num_val=1, img_size=SIZE)
        b = maker(str(tmp_path / maker.__name__ / 'b'), num_train=2, num_val=1, img_size=SIZE)
        assert a['train'] == b['train']
        cmp = filecmp.dircmp(a['root'], b['root'])
        assert cmp.left_list and not cmp.diff_files


def test_scene_boxes_are_tight_around_visible_cars(scenes):
    with open(osp.join(scenes['root'], 'annotations', 'instances_train2017.json')) as f:
        coco = json.load(f)
    car_id = SCENE_CLASSES.index('car') + 1
    cars = [a for a in coco['annotations'] if a['category_id'] == car_id]
    assert cars
    for ann in cars:
        img = np.asarray(Image.open(osp.join(scenes['root'], 'train2017',
                                             f"{ann['image_id']:012d}.jpg")), np.int32)
        x, y, w, h = ann['bbox']
        # cars are solid red; JPEG blurs their edge pixels to a paler red
        red = (img[..., 0] - img[..., 1] > 40) & (img[..., 0] - img[..., 2] > 40)
        inside = red[y:y + h, x:x + w]
        # the visible car touches all four sides of its box
        assert inside[0].any() and inside[-1].any() and inside[:, 0].any() \
            and inside[:, -1].any(), ann
        assert inside.sum() >= 0.5 * ann['area']


def test_scenes_load_and_score_with_mmdet(scenes):
    from mmdet.evaluation import CocoMetric
    dataset = _build('mmdet', dict(
        type='CocoDataset', data_root=scenes['root'], metainfo=dict(classes=SCENE_CLASSES),
        ann_file='annotations/instances_val2017.json', data_prefix=dict(img='val2017/'),
        test_mode=True,
        pipeline=[dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', with_bbox=True),
                  dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape',
                                                        'img_shape'))]))
    assert len(dataset) == scenes['val']['num_images']
    samples = [dataset[i]['data_samples'] for i in range(len(dataset))]
    labels = np.concatenate([s.gt_instances.labels.numpy() for s in samples])
    counts = np.bincount(labels, minlength=len(SCENE_CLASSES))
    assert dict(zip(SCENE_CLASSES, counts.tolist())) == scenes['val']['per_class']
    metric = CocoMetric(ann_file=osp.join(scenes['root'], 'annotations/instances_val2017.json'))
    metric.dataset_meta = dataset.metainfo
    for s in samples:
        metric.process({}, [dict(img_id=s.img_id, ori_shape=s.ori_shape, pred_instances=dict(
            bboxes=s.gt_instances.bboxes.tensor, labels=s.gt_instances.labels,
            scores=torch.ones(len(s.gt_instances))))])
    assert metric.evaluate(len(samples))['coco/bbox_mAP'] > 0.99


@pytest.mark.slow
def test_topdown_loads_and_scores_with_mmrotate(topdown, monkeypatch):
    from mmrotate.evaluation import DOTAMetric, eval_rbbox_map
    from mmrotate.evaluation.metrics import dota_metric
    from mmrotate.utils import register_all_modules
    register_all_modules(init_default_scope=False)
    dataset = _build('mmrotate', dict(
        type='DOTADataset', data_root=topdown['root'], ann_file='val/annfiles/',
        data_prefix=dict(img_path='val/images/'), img_shape=(SIZE, SIZE), test_mode=True,
        metainfo=dict(classes=TINY_DOTA_CLASSES),
        pipeline=[dict(type='mmdet.LoadImageFromFile'),
                  dict(type='mmdet.LoadAnnotations', with_bbox=True, box_type='qbox'),
                  dict(type='ConvertBoxType', box_type_mapping=dict(gt_bboxes='rbox')),
                  dict(type='mmdet.PackDetInputs',
                       meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape'))]))
    samples = [dataset[i]['data_samples'] for i in range(len(dataset))]
    rboxes = torch.cat([s.gt_instances.bboxes.tensor for s in samples])
    assert len(rboxes) == topdown['val']['num_instances']
    # long sides follow the DOTA generator's relative sizes (0.16..0.36) x OBJECT_ZOOM
    long_side = rboxes[:, 2:4].max(1).values / (SIZE * OBJECT_ZOOM)
    assert long_side.min() >= 0.16 - 1e-3 and long_side.max() <= 0.36 + 1e-3
    assert ((rboxes[:, :2] > 0) & (rboxes[:, :2] < SIZE)).all()
    monkeypatch.setattr(dota_metric, 'eval_rbbox_map', functools.partial(eval_rbbox_map, nproc=1))
    metric = DOTAMetric(metric='mAP')
    metric.dataset_meta = dataset.metainfo
    for s in samples:
        metric.process({}, [dict(
            img_id=s.img_id, gt_instances=dict(bboxes=s.gt_instances.bboxes.tensor,
                                               labels=s.gt_instances.labels),
            ignored_instances=dict(bboxes=torch.zeros(0, 5), labels=torch.zeros(0).long()),
            pred_instances=dict(bboxes=s.gt_instances.bboxes.tensor,
                                labels=s.gt_instances.labels,
                                scores=torch.ones(len(s.gt_instances))))])
    assert metric.evaluate(len(samples))['dota/mAP'] > 0.99

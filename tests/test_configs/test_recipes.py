"""Evaluation settings of the Table-1 configs and the documented data recipe, through the real
libraries: DOTA's mAP over IoU 0.5:0.95 / AP50 / AP75 (mmrotate's DOTAMetric on known
predictions), ADE20K's sliding-window inference (mmseg, counted windows), and the "data
elsewhere" recipe of docs/configs.md applied to real configs."""
import argparse
import functools
import glob
import math
import os.path as osp
import re
import shlex

import numpy as np
import pytest
import torch
from mmengine.config import Config, DictAction
from mmengine.registry import DATASETS, DefaultScope, init_default_scope
from shapely.geometry import Polygon

import flora_mm  # noqa: F401

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CFG = osp.join(ROOT, 'configs')
DOTA_CONFIG = osp.join(CFG, 'flora', 'oriented-rcnn',
                       'oriented-rcnn-le90_convnextv2-l-flora-r42_fpn_1x_dota.py')
COCO_CONFIG = osp.join(CFG, 'flora', 'mask-rcnn',
                       'mask-rcnn_convnextv2-l-flora-r42_fpn_1x_coco.py')
ADE_CONFIG = osp.join(CFG, 'flora', 'upernet',
                      'upernet_convnextv2-l-flora-r42_8xb2-160k_ade20k-512x512.py')
ADE_DEMO = osp.join(CFG, 'demo', 'upernet_convnextv2-atto-flora_tiny-ade.py')
IOU_THRS = [0.5 + 0.05 * i for i in range(10)]


def _corners(cx, cy, w, h, a):
    """Corners of an (cx, cy, w, h, angle) box, written out."""
    c, s = math.cos(a), math.sin(a)
    return [(cx + c * dx - s * dy, cy + s * dx + c * dy)
            for dx, dy in ((-w / 2, -h / 2), (w / 2, -h / 2), (w / 2, h / 2), (-w / 2, h / 2))]


def _iou(a, b):
    pa, pb = Polygon(_corners(*a)), Polygon(_corners(*b))
    return pa.intersection(pb).area / pa.union(pb).area


@pytest.fixture
def one_process_dota_eval(monkeypatch):
    # one worker instead of mmrotate's 4 spawned ones per threshold (each re-imports mmrotate)
    from mmrotate.evaluation import eval_rbbox_map
    from mmrotate.evaluation.metrics import dota_metric
    monkeypatch.setattr(dota_metric, 'eval_rbbox_map', functools.partial(eval_rbbox_map, nproc=1))


@pytest.mark.slow
@pytest.mark.parametrize('key', ['val_evaluator', 'test_evaluator'])
def test_dota_metric_reports_table1_columns(key, one_process_dota_eval):
    """GT as predictions scores 1 everywhere; predictions with known IoUs (0.97, 0.83, 0.72,
    rotated boxes widened about their centre) give the threshold counts computed here."""
    from mmrotate.registry import METRICS
    cfg = Config.fromfile(DOTA_CONFIG)
    assert cfg[key].iou_thrs == pytest.approx(IOU_THRS)
    classes = ('plane', 'ship', 'harbor')
    gts = [(200., 150., 80., 30., 0.3), (400., 420., 60., 20., -0.7), (700., 300., 90., 40., 1.2)]
    for target_ious in ((1., 1., 1.), (0.97, 0.83, 0.72)):
        preds = [(cx, cy, w / iou, h, a) for (cx, cy, w, h, a), iou in zip(gts, target_ious)]
        ious = [_iou(g, p) for g, p in zip(gts, preds)]
        np.testing.assert_allclose(ious, target_ious, atol=1e-6)
        with DefaultScope.overwrite_default_scope('mmrotate'):  # whatever scope ran before
            metric = METRICS.build(cfg[key])
        metric.dataset_meta = dict(classes=classes)
        labels = torch.arange(3)
        metric.process({}, [dict(
            img_id='P0000__1024__0___0',
            gt_instances=dict(bboxes=torch.tensor(gts), labels=labels),
            ignored_instances=dict(bboxes=torch.zeros(0, 5), labels=torch.zeros(0).long()),
            pred_instances=dict(bboxes=torch.tensor(preds), labels=labels,
                                scores=torch.ones(3)))])
        results = metric.evaluate(1)
        # one object per class: AP at threshold t is 1 if its IoU reaches t, else 0
        ap = {t: np.mean([iou >= t for iou in ious]) for t in IOU_THRS}
        assert results['dota/mAP'] == pytest.approx(np.mean(list(ap.values())), abs=1e-6)
        assert results['dota/AP50'] == pytest.approx(ap[0.5], abs=1e-3)
        assert results['dota/AP75'] == pytest.approx(ap[IOU_THRS[5]], abs=1e-3)
    assert results['dota/mAP'] == pytest.approx(22 / 30, abs=1e-6)  # 10 + 7 + 5 of 30


@pytest.mark.slow
def test_ade20k_slide_inference(tmp_path):
    """The UperNet configs evaluate with mmseg's ConvNeXt recipe (slide, crop 512, stride
    341); run on the tiny set, every test image is cut into the expected windows."""
    from mmengine.runner import Runner
    from flora_mm.testing import make_ade20k
    for path in glob.glob(osp.join(CFG, '*', 'upernet', '*.py')):
        assert Config.fromfile(path).model.test_cfg == dict(
            mode='slide', crop_size=(512, 512), stride=(341, 341)), path
    make_ade20k(str(tmp_path / 'ade'), num_train=1, num_val=3, img_size=128)
    cfg = Config.fromfile(ADE_DEMO)
    assert cfg.model.test_cfg.mode == 'slide'
    cfg.model.test_cfg.update(crop_size=(64, 64), stride=(43, 43))  # 3 x 3 windows of 128 px
    cfg.test_dataloader.dataset.data_root = str(tmp_path / 'ade')
    cfg.test_dataloader.batch_size = 2
    cfg.work_dir = str(tmp_path / 'work')
    runner = Runner.from_cfg(cfg)
    shapes = []
    runner.model.backbone.register_forward_pre_hook(lambda m, a: shapes.append(a[0].shape))
    metrics = runner.test()
    assert set(metrics) >= {'mIoU', 'mAcc', 'aAcc'}
    assert all(0 <= metrics[k] <= 100 for k in ('mIoU', 'mAcc', 'aAcc'))
    # 3 images in batches of 2 and 1, 9 crops of 64 x 64 each
    assert [tuple(s) for s in shapes] == [(2, 3, 64, 64)] * 9 + [(1, 3, 64, 64)] * 9


def _doc_recipes():
    """The data-elsewhere recipe of docs/configs.md: its config files and --cfg-options."""
    with open(osp.join(ROOT, 'docs', 'configs.md')) as f:
        text = f.read()
    section = text[text.index('### Data elsewhere'):]
    section = section[:section.index('\n## ')]
    blocks = re.findall(r'```python\n(.*?)```', section, re.S)
    options = re.findall(r'--cfg-options ((?:[^\n]*\\\n)*[^\n]*)', section)
    return blocks, [o.replace('\\\n', ' ') for o in options]


def _paths(cfg):
    """Every dataset / evaluator path the runner will use, after mmengine's joins."""
    init_default_scope(cfg.default_scope)
    paths = []
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        dataset = DATASETS.build({**cfg[loader].dataset, 'lazy_init': True})
        paths += [dataset.data_root, dataset.ann_file, *dataset.data_prefix.values()]
    for evaluator in ('val_evaluator', 'test_evaluator'):
        if 'ann_file' in cfg[evaluator]:
            paths.append(cfg[evaluator].ann_file)
    return [p for p in paths if p]


@pytest.mark.parametrize('config,root', [(COCO_CONFIG, '/mnt/datasets/coco/'),
                                         (ADE_CONFIG, '/mnt/datasets/ade/ADEChallengeData2016/'),
                                         (DOTA_CONFIG, '/mnt/datasets/split_ss_dota/')])
def test_data_elsewhere_recipe_moves_every_path(config, root, tmp_path):
    blocks, options = _doc_recipes()
    is_coco = 'coco' in config
    block = next(b for b in blocks if ('val_evaluator' in b) == is_coco)
    text = re.sub(r"^_base_ = .*$", f'_base_ = {config!r}', block, flags=re.M)
    text = re.sub(r"^data_root = .*$", f'data_root = {root!r}', text, flags=re.M)
    child = tmp_path / 'elsewhere.py'
    child.write_text(text)
    from_file = Config.fromfile(str(child))
    assert osp.normpath(Config.fromfile(config).train_dataloader.dataset.data_root) != \
        osp.normpath(root)
    option = next(o for o in options if ('val_evaluator' in o) == is_coco)
    parser = argparse.ArgumentParser()
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    option = option.replace('/data/coco/', root).replace('DATA_ROOT', root)
    from_cli = Config.fromfile(config)
    from_cli.merge_from_dict(parser.parse_args(
        ['--cfg-options', *shlex.split(option)]).cfg_options)
    for cfg in (from_file, from_cli):
        paths = _paths(cfg)
        assert len(paths) >= 6
        assert all(p.startswith(root) for p in paths), paths

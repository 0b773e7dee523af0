"""DOTA preparation from the raw download: tools/dataset_converters/dota_split.py (mmrotate's
own splitter) on generated raw scenes, mmrotate's DOTADataset on the patches, and the
test-server config (no labels, format_only, patch merging) through the real DOTAMetric."""
import os
import os.path as osp
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from mmengine.config import Config
from shapely.geometry import Polygon, box

import flora_mm  # noqa: F401
from flora_mm.datasets import split_dota

pytestmark = pytest.mark.slow

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TEST_CONFIG = osp.join(ROOT, 'configs', 'flora', 'oriented-rcnn',
                       'oriented-rcnn-le90_convnextv2-l-flora-r42_fpn_1x_dota-test.py')
PAD = (104, 116, 124)  # mmrotate's split_configs padding value (written as given, BGR)

# name: (width, height, [(polygon, class, difficulty)])
SCENES = {
    'P0001': (1800, 1400, [
        (box(100, 100, 200, 160), 'plane', 0),           # window (0, 0) only
        (box(1500, 1200, 1600, 1300), 'ship', 1),        # window (776, 376) only
        (box(800, 400, 900, 450), 'small-vehicle', 0),   # in all four windows
        (box(1000, 50, 1030, 80), 'large-vehicle', 0),   # 80% inside (0, 0): truncated there
        (box(1010, 600, 1040, 620), 'harbor', 0),        # 47% inside (0, *): left out there
        (Polygon([(300, 210), (340, 250), (300, 290), (260, 250)]), 'plane', 0),  # rotated
    ]),
    'P0002': (600, 500, [(box(500, 400, 590, 480), 'ship', 0)]),  # one padded window
}


def _scene_pixels(width, height):
    """BGR image whose pixels encode their coordinates, so a crop's origin is checkable."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x % 251, y % 241, (x // 251 + 7 * (y // 241)) % 256], -1).astype(np.uint8)


def _write_raw(root, scenes, labelled=True):
    """The DOTA-v1.0 download layout: images/*.png and labelTxt/*.txt with header lines."""
    os.makedirs(osp.join(root, 'images'))
    if labelled:
        os.makedirs(osp.join(root, 'labelTxt'))
    for name, (width, height, objects) in scenes.items():
        cv2.imwrite(osp.join(root, 'images', f'{name}.png'), _scene_pixels(width, height))
        if labelled:
            lines = ['imagesource:GoogleEarth', 'gsd:0.146343590398']
            for poly, cls, diff in objects:
                corners = np.asarray(poly.exterior.coords)[:4]
                lines.append(' '.join(f'{v:.1f}' for v in corners.reshape(-1)) + f' {cls} {diff}')
            with open(osp.join(root, 'labelTxt', f'{name}.txt'), 'w') as f:
                f.write('\n'.join(lines) + '\n')


def _starts(length, size, gap):
    """DOTA devkit windows along one axis: every size - gap px, the last flush with the end."""
    if length <= size:
        return [0]
    return list(range(0, length - size, size - gap)) + [length - size]


def _expected_patches(scenes, size=1024, gap=200, iof_thr=0.7):
    expected = {}
    for name, (width, height, objects) in scenes.items():
        for x0 in _starts(width, size, gap):
            for y0 in _starts(height, size, gap):
                window = box(x0, y0, x0 + size, y0 + size)
                rows = []
                for poly, cls, diff in objects:
                    iof = poly.intersection(window).area / poly.area
                    if iof >= iof_thr:
                        corners = np.asarray(poly.exterior.coords)[:4] - (x0, y0)
                        rows.append((cls, diff if iof == 1 else 2, corners))
                expected[f'{name}__{size}__{x0}___{y0}'] = (x0, y0, rows)
    return expected


def _read_annfile(path):
    rows = []
    with open(path) as f:
        for line in f:
            items = line.split()
            rows.append((items[8], int(items[9]),
                         np.array(items[:8], dtype=np.float64).reshape(4, 2)))
    return rows


@pytest.fixture(scope='module')
def split_sets(tmp_path_factory):
    """Raw DOTA train / test folders and their single-scale split, through the CLI."""
    tmp = tmp_path_factory.mktemp('dota')
    raw, out = str(tmp / 'DOTA'), str(tmp / 'split_ss_dota')
    _write_raw(osp.join(raw, 'train'), SCENES)
    _write_raw(osp.join(raw, 'test'), {'P0003': (600, 500, [])}, labelled=False)
    proc = subprocess.run(
        [sys.executable, 'tools/dataset_converters/dota_split.py', raw, out, '--splits', 'train'],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert '2 images -> 5 patches, 7 objects -> 12 patch objects' in proc.stdout, proc.stdout
    return dict(raw=raw, out=out)


def test_split_windows_objects_and_pixels(split_sets):
    out = osp.join(split_sets['out'], 'train')
    expected = _expected_patches(SCENES)
    names = sorted(f[:-4] for f in os.listdir(osp.join(out, 'images')))
    assert names == sorted(expected)
    assert sorted(f[:-4] for f in os.listdir(osp.join(out, 'annfiles'))) == names
    for name, (x0, y0, rows) in expected.items():
        got = _read_annfile(osp.join(out, 'annfiles', f'{name}.txt'))
        key = lambda r: (r[0], r[2].min(0).tolist())  # noqa: E731
        assert len(got) == len(rows), name
        for (cls, diff, corners), (ecls, ediff, ecorners) in zip(sorted(got, key=key),
                                                                 sorted(rows, key=key)):
            assert (cls, diff) == (ecls, ediff), name
            np.testing.assert_allclose(corners, ecorners, atol=1e-3)
        img = cv2.imread(osp.join(out, 'images', f'{name}.png'))
        assert img.shape == (1024, 1024, 3)
        scene = _scene_pixels(*SCENES[name.split('__')[0]][:2])
        h, w = min(1024, scene.shape[0] - y0), min(1024, scene.shape[1] - x0)
        assert np.array_equal(img[:h, :w], scene[y0:y0 + h, x0:x0 + w]), name
        assert (img[h:] == PAD).all() and (img[:, w:] == PAD).all()
    # the truncated object keeps its full polygon and is marked difficulty 2
    truncated = _read_annfile(osp.join(out, 'annfiles', 'P0001__1024__0___0.txt'))
    assert [r[1] for r in truncated if r[0] == 'large-vehicle'] == [2]


def test_dota_dataset_reads_the_split(split_sets):
    from mmrotate.utils import register_all_modules
    from mmengine.registry import DATASETS
    register_all_modules(init_default_scope=False)
    out = osp.join(split_sets['out'], 'train')
    expected = _expected_patches(SCENES)
    dataset = DATASETS.build(dict(
        type='mmrotate.DOTADataset', data_root=out, ann_file='annfiles/',
        data_prefix=dict(img_path='images/'), test_mode=True, pipeline=[]))
    assert len(dataset) == len(expected)
    classes = dataset.metainfo['classes']
    for i in range(len(dataset)):
        info = dataset.get_data_info(i)
        rows = expected[info['img_id']][2]
        assert sorted(classes[inst['bbox_label']] for inst in info['instances']) == sorted(
            r[0] for r in rows)


def test_split_refuses_existing_output_and_bad_options(split_sets, tmp_path):
    raw = osp.join(split_sets['raw'], 'train')
    with pytest.raises(FileExistsError, match='exists'):
        split_dota([osp.join(raw, 'images')], None, osp.join(split_sets['out'], 'train'))
    with pytest.raises(ValueError, match="preset='xl'"):
        split_dota([osp.join(raw, 'images')], None, str(tmp_path / 'o'), preset='xl')
    with pytest.raises(ValueError, match='gap must be smaller'):
        split_dota([osp.join(raw, 'images')], None, str(tmp_path / 'o'), sizes=(256, ),
                   gaps=(300, ))
    assert not os.listdir(tmp_path)  # nothing written, no temporary folder left


def test_test_config_merges_patch_predictions(split_sets, tmp_path):
    """The test-server evaluator of the config, fed the patches' own labels as predictions,
    writes every raw object once, back in full-image coordinates (Task1 format)."""
    from mmrotate.registry import DATASETS, METRICS
    from mmrotate.utils import register_all_modules
    register_all_modules(init_default_scope=True)  # the pipeline's transforms
    cfg = Config.fromfile(TEST_CONFIG)
    assert cfg.test_dataloader.dataset.ann_file == ''
    assert cfg.test_evaluator.format_only and cfg.test_evaluator.merge_patches
    assert cfg.val_dataloader is None and cfg.val_evaluator is None and cfg.val_cfg is None
    assert cfg.train_dataloader.dataset.ann_file == 'trainval/annfiles/'
    out = osp.join(split_sets['out'], 'train')
    dataset = DATASETS.build(dict(
        type='DOTADataset', data_root=out, ann_file='annfiles/',
        data_prefix=dict(img_path='images/'), test_mode=True,
        pipeline=[dict(type='mmdet.LoadAnnotations', with_bbox=True, box_type='qbox'),
                  dict(type='ConvertBoxType', box_type_mapping=dict(gt_bboxes='rbox')),
                  dict(type='mmdet.PackDetInputs', meta_keys=('img_id', ))]))
    metric = METRICS.build({**cfg.test_evaluator, 'outfile_prefix': str(tmp_path / 'Task1')})
    metric.dataset_meta = dataset.metainfo
    for i in range(len(dataset)):
        sample = dataset[i]['data_samples']
        gt = sample.gt_instances
        metric.process({}, [dict(
            img_id=sample.img_id, gt_instances={}, ignored_instances={},
            pred_instances=dict(bboxes=gt.bboxes.tensor, labels=gt.labels,
                                scores=torch.linspace(1, 0.5, len(gt))))])
    assert metric.evaluate(len(dataset)) == {}
    classes = dataset.metainfo['classes']
    assert sorted(os.listdir(tmp_path / 'Task1')) == sorted(
        [f'Task1_{c}.txt' for c in classes] + ['Task1.zip'])
    merged = []
    for cls in classes:
        with open(tmp_path / 'Task1' / f'Task1_{cls}.txt') as f:
            for line in f:
                items = line.split()
                merged.append((items[0], cls, Polygon(
                    np.array(items[2:10], dtype=np.float64).reshape(4, 2))))
    raw = [(name, cls, poly) for name, (_, _, objs) in SCENES.items() for poly, cls, _ in objs]
    assert len(merged) == len(raw)
    for name, cls, poly in raw:
        matches = [m for m in merged if m[:2] == (name, cls)
                   and m[2].intersection(poly).area / m[2].union(poly).area > 0.999]
        assert len(matches) == 1, (name, cls, poly.bounds)


def test_test_config_runs_format_only_on_unlabelled_patches(split_sets, tmp_path, monkeypatch):
    """tools/test.py's path (Runner.test) with the test-server config on a split test set:
    the merged Task1 files and the zip are written, named after the raw image."""
    from mmengine.runner import Runner
    out = str(tmp_path / 'split_test')
    summary = split_dota([osp.join(split_sets['raw'], 'test', 'images')], None, out,
                         sizes=(256, ), gaps=(64, ))
    assert summary == dict(images=1, patches=9, objects=0, patch_objects=0)
    cfg = Config.fromfile(TEST_CONFIG)
    cfg.model.backbone.update(arch='atto', pretrained=None)
    cfg.model.neck.update(in_channels=[40, 80, 160, 320], out_channels=32)
    cfg.model.rpn_head.update(in_channels=32, feat_channels=32)
    cfg.model.roi_head.bbox_roi_extractor.out_channels = 32
    cfg.model.roi_head.bbox_head.update(in_channels=32, fc_out_channels=64)
    cfg.model.test_cfg.rpn.update(nms_pre=100, max_per_img=50)
    cfg.test_dataloader.update(num_workers=0, persistent_workers=False)
    cfg.test_dataloader.dataset.update(data_root=str(tmp_path), img_shape=(256, 256),
                                       data_prefix=dict(img_path='split_test/images/'))
    cfg.test_dataloader.dataset.pipeline[1].scale = (256, 256)
    cfg.test_evaluator.outfile_prefix = str(tmp_path / 'Task1')
    cfg.work_dir = str(tmp_path / 'work')
    runner = Runner.from_cfg(cfg)
    assert len(runner.test_dataloader.dataset) == 9
    assert runner.test() == {}
    files = sorted(os.listdir(tmp_path / 'Task1'))
    assert 'Task1.zip' in files and len(files) == 16  # 15 DOTA-v1.0 classes + zip
    for name in (f for f in files if f.endswith('.txt')):
        with open(tmp_path / 'Task1' / name) as f:
            for line in f:
                items = line.split()
                assert items[0] == 'P0003' and len(items) == 10

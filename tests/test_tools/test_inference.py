"""tools/infer.py and flora_mm.apis.infer for the three demo tasks, full and adapter-only.

Predictions are compared with a second path through the downstream libraries (mmdet's
``init_detector`` / ``inference_detector``, mmseg's ``init_model`` / ``inference_model`` on a
model loaded with the full checkpoint), and the two checkpoint forms must predict the same.
"""
import json
import os.path as osp

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO, run_tool, val_images

pytestmark = pytest.mark.slow


def _direct_predictions(task: str, spec: dict, images: list) -> list:
    """Predictions of the model run directly (no inferencer), full checkpoint."""
    from flora_mm.apis import load_config, register_task_modules
    cfg = load_config(spec['config'], cfg_options=spec['cfg_options'])
    register_task_modules(cfg)
    if task == 'seg':
        from mmseg.apis import inference_model, init_model
        model = init_model(cfg, spec['full'], device='cpu')
        return [inference_model(model, img).pred_sem_seg.data[0].numpy() for img in images]
    from mmdet.apis import inference_detector, init_detector
    from mmengine.registry import init_default_scope
    init_default_scope(cfg.default_scope)
    model = init_detector(cfg, spec['full'], device='cpu')
    out = []
    for img in images:
        inst = inference_detector(model, img).pred_instances
        boxes = inst.bboxes.tensor if hasattr(inst.bboxes, 'tensor') else inst.bboxes
        out.append(dict(labels=inst.labels.numpy(), scores=inst.scores.numpy(),
                        bboxes=boxes.numpy()))
    return out


@pytest.mark.parametrize('task', ['det', 'seg', 'rot'])
def test_infer_full_and_adapter_only_match_direct_model(task, task_checkpoints, tiny_all,
                                                        tmp_path):
    from flora_mm.apis import infer
    spec = task_checkpoints[task]
    images = val_images(tiny_all, task)
    assert len(images) == 2
    # the CLI with the full checkpoint, the library with the adapter-only one
    run_tool(['tools/infer.py', spec['config'], spec['full'], *images, '--out-dir',
              tmp_path / 'full', '--score-thr', '0', '--cfg-options',
              f'model.backbone.pretrained={spec["cfg_options"]["model.backbone.pretrained"]}'])
    records = infer(spec['config'], spec['adapter_only'], images, str(tmp_path / 'adapter'),
                    score_thr=0., cfg_options=spec['cfg_options'])
    direct = _direct_predictions(task, spec, images)
    for image, record, expected in zip(images, records, direct):
        stem = osp.splitext(osp.basename(image))[0]
        with open(tmp_path / 'full' / 'preds' / f'{stem}.json') as f:
            full = json.load(f)
        with open(record['json']) as f:
            adapter_only = json.load(f)
        assert adapter_only == record['prediction']
        picture = np.asarray(Image.open(record['vis']).convert('RGB'), dtype=np.int16)
        original = np.asarray(Image.open(image).convert('RGB'), dtype=np.int16)
        assert picture.shape == original.shape
        assert osp.isfile(tmp_path / 'full' / 'vis' / osp.basename(image))
        if task == 'seg':
            labels = np.asarray(Image.open(adapter_only['sem_seg']))
            np.testing.assert_array_equal(labels, expected)
            np.testing.assert_array_equal(np.asarray(Image.open(full['sem_seg'])), expected)
            ids, counts = np.unique(expected, return_counts=True)
            classes = json.load(open(record['json']))['pixels']
            assert sorted(classes.values()) == sorted(counts.tolist())
            assert adapter_only['shape'] == list(original.shape[:2])
            drawn = np.abs(picture - original).sum(-1) > 30
            assert drawn.mean() > 0.5  # the class overlay covers the picture
            continue
        assert len(expected['labels']) > 0
        width = 5 if task == 'rot' else 4
        for pred in (full, adapter_only):
            assert {'labels', 'scores', 'bboxes'} <= set(pred)
            np.testing.assert_array_equal(pred['labels'], expected['labels'])
            np.testing.assert_allclose(pred['scores'], expected['scores'], rtol=1e-4,
                                       atol=1e-5)
            bboxes = np.asarray(pred['bboxes'])
            assert bboxes.shape == (len(expected['labels']), width)
            np.testing.assert_allclose(bboxes, expected['bboxes'], rtol=1e-4, atol=1e-3)
        if task == 'det':
            assert len(adapter_only['masks']) == len(expected['labels'])
            assert {'size', 'counts'} <= set(adapter_only['masks'][0])
        # every prediction was drawn (threshold 0): the picture changed
        assert (np.abs(picture - original).sum(-1) > 30).mean() > 0.01


def test_adapter_only_checkpoint_needs_pretrained(task_checkpoints, tmp_path):
    from flora_mm.apis import build_inferencer
    spec = task_checkpoints['seg']
    with pytest.raises(ValueError, match='model.backbone.pretrained'):
        build_inferencer(spec['config'], spec['adapter_only'])  # demo configs: pretrained=None
    bad = tmp_path / 'bad.pth'
    ckpt = torch.load(spec['full'], weights_only=False)
    ckpt['state_dict']['decode_head.extra.weight'] = torch.zeros(1)
    torch.save(ckpt, bad)
    with pytest.raises(ValueError, match='unexpected keys.*decode_head.extra.weight'):
        build_inferencer(spec['config'], str(bad), cfg_options=spec['cfg_options'])


@pytest.mark.parametrize('task', ['seg', 'det'])
def test_test_py_show_dir(task, task_checkpoints, tmp_path):
    """tools/test.py --show-dir paints every validation image (adapter-only checkpoint)."""
    spec = task_checkpoints[task]
    show = tmp_path / 'show'
    run_tool(['tools/test.py', spec['config'], spec['adapter_only'], '--work-dir',
              tmp_path / 'work', '--show-dir', show, '--cfg-options',
              f'model.backbone.pretrained={spec["cfg_options"]["model.backbone.pretrained"]}'])
    painted = sorted(p for p in show.rglob('*') if p.suffix in ('.jpg', '.png'))
    assert len(painted) == 2, painted
    assert all(np.asarray(Image.open(p)).ndim == 3 for p in painted)

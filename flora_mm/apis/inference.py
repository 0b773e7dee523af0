"""Inference on images with the downstream packages' own inferencers, from flora_mm checkpoints.

mmdet's ``DetInferencer`` (detection, instance segmentation), mmseg's ``MMSegInferencer`` and,
since mmrotate 1.0.0rc1 has no inferencer, ``DetInferencer`` in the ``mmrotate`` scope with
mmrotate's ``RotLocalVisualizer``. What flora_mm adds: adapter-only checkpoints (the frozen
base comes from the backbone's ``pretrained`` weights), a strict key check instead of the
inferencers' silent partial load, and one output layout for the three tasks.
"""
import copy
import json
import os
import os.path as osp
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
from mmengine.runner.checkpoint import _load_checkpoint

from flora_mm.engine.checkpoint import complete_checkpoint
from .launch import load_config, register_task_modules


def _frozen_mismatch(checkpoint: dict, model: nn.Module) -> List[str]:
    """Frozen parameters of ``model`` whose value differs in a (complete) checkpoint."""
    from flora_mm.engine.checkpoint import frozen_state_keys
    own = model.state_dict()
    state = checkpoint['state_dict']
    return [k for k in frozen_state_keys(model)
            if k in state and not torch.equal(own[k], state[k].to(own[k].device))]


class _FLoRAWeights:
    """Inferencer mixin: strict loading of full / adapter-only checkpoints; prebuilt models.

    Args:
        built_model: Use this model instead of building one from the config (e.g. task heads
            around a backbone shared with other tasks, :class:`~flora_mm.apis.MultiTaskModel`).
            The checkpoint is loaded into it, and must agree with its frozen parameters: they
            may be shared, and loading must not change them.
    """

    def __init__(self, *args, built_model: Optional[nn.Module] = None, **kwargs):
        self._built_model = built_model
        super().__init__(*args, **kwargs)

    def _init_model(self, cfg, weights, device='cpu'):
        if self._built_model is None:
            return super()._init_model(cfg, weights, device)
        model = self._built_model
        model.cfg = cfg
        checkpoint = None
        if weights is not None:
            checkpoint = _load_checkpoint(weights, map_location='cpu')
            complete_checkpoint(checkpoint, model, cfg.model, weights)
            changed = _frozen_mismatch(checkpoint, model)
            if changed:
                raise ValueError(f'{weights}: its frozen weights differ from the shared ones '
                                 f'({len(changed)} tensors, e.g. {changed[:5]}); it was '
                                 'trained from another base')
        self._load_weights_to_model(model, checkpoint, cfg)
        model.to(device)
        model.eval()
        return model

    def _load_weights_to_model(self, model, checkpoint, cfg):
        if checkpoint is not None:
            complete_checkpoint(checkpoint, model, cfg.model)
        super()._load_weights_to_model(model, checkpoint, cfg)


def _inferencer_classes() -> Dict[str, type]:
    """default_scope -> inferencer class (imported here: each pulls in its package)."""
    from mmdet.apis import DetInferencer
    from mmseg.apis import MMSegInferencer

    class FLoRADetInferencer(_FLoRAWeights, DetInferencer):
        """mmdet's DetInferencer, loading flora_mm checkpoints."""

    class FLoRASegInferencer(_FLoRAWeights, MMSegInferencer):
        """mmseg's MMSegInferencer, loading flora_mm checkpoints."""

    class FLoRARotInferencer(_FLoRAWeights, DetInferencer):
        """DetInferencer in the mmrotate scope (mmrotate 1.0.0rc1 has no inferencer)."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, scope='mmrotate', **kwargs)

        def _init_pipeline(self, cfg):
            # mmrotate configs name mmdet's transforms with their scope; the inferencer looks
            # for a bare 'LoadImageFromFile' to replace with its in-memory loader.
            cfg = copy.deepcopy(cfg)
            for step in cfg.test_dataloader.dataset.pipeline:
                if step['type'] == 'mmdet.LoadImageFromFile':
                    step['type'] = 'LoadImageFromFile'
            return super()._init_pipeline(cfg)

        def pred2dict(self, data_sample, pred_out_dir=''):
            # RotatedBoxes are no tensor: InstanceData.numpy() would leave them as they are
            bboxes = data_sample.pred_instances.bboxes
            if hasattr(bboxes, 'tensor'):
                data_sample = data_sample.clone()
                data_sample.pred_instances.bboxes = bboxes.tensor
            return super().pred2dict(data_sample, pred_out_dir)

    return {'mmdet': FLoRADetInferencer, 'mmseg': FLoRASegInferencer,
            'mmrotate': FLoRARotInferencer}


def build_inferencer(config, checkpoint: Optional[str] = None, device: str = 'cpu',
                     cfg_options: Optional[dict] = None,
                     built_model: Optional[nn.Module] = None):
    """The downstream inferencer for a flora_mm config and checkpoint.

    Args:
        config: Config file path or a loaded :class:`~mmengine.config.Config`.
        checkpoint: Full or adapter-only checkpoint; None keeps the weights of the built model.
        device: Torch device.
        cfg_options: ``--cfg-options`` overrides (e.g. ``model.backbone.pretrained``).
        built_model: A model to use instead of building one (see :class:`_FLoRAWeights`).

    Returns:
        An mmdet / mmseg inferencer; call it, or use :func:`infer`.
    """
    cfg = load_config(config, cfg_options=cfg_options) if isinstance(config, str) else config
    register_task_modules(cfg)
    scope = cfg.get('default_scope', 'mmdet')
    classes = _inferencer_classes()
    if scope not in classes:
        raise ValueError(f'default_scope {scope!r}: inference supports {sorted(classes)}')
    kwargs = dict(show_progress=False) if scope != 'mmseg' else {}
    return classes[scope](model=copy.deepcopy(cfg), weights=checkpoint, device=device,
                          built_model=built_model, **kwargs)


def _seg_record(data_sample, classes: Sequence[str], label_path: str) -> dict:
    labels = data_sample.pred_sem_seg.data[0].cpu().numpy().astype(np.uint8)
    os.makedirs(osp.dirname(label_path), exist_ok=True)
    from PIL import Image
    Image.fromarray(labels).save(label_path)
    ids, counts = np.unique(labels, return_counts=True)
    return dict(sem_seg=label_path, shape=list(labels.shape),
                pixels={classes[i]: int(c) for i, c in zip(ids, counts)})


def run_inferencer(inferencer, images: Sequence[str], out_dir: str,
                   score_thr: float = 0.3) -> List[dict]:
    """Predict ``images``, write pictures and JSON under ``out_dir``; return the records.

    Writes ``out_dir/vis/<image name>`` (the image with the predictions drawn by the task's
    visualizer) and ``out_dir/preds/<image stem>.json``: ``labels``, ``scores``, ``bboxes``
    (x1, y1, x2, y2; rotated: cx, cy, w, h, angle in radians) and COCO RLE ``masks`` for
    detection, or the label map's path (``<stem>_sem_seg.png``, class index per pixel) and
    ``pixels`` per class name for segmentation.

    Args:
        inferencer: From :func:`build_inferencer` (or :meth:`MultiTaskModel.inferencer`).
        images: Image files.
        out_dir: Output directory.
        score_thr: Detections below this score are not drawn (all are in the JSON).

    Returns:
        One dict per image: ``image``, ``vis`` and ``json`` paths and the ``prediction``.
    """
    from mmseg.apis import MMSegInferencer
    images = [str(i) for i in images]
    missing = [i for i in images if not osp.isfile(i)]
    if missing:
        raise FileNotFoundError(f'images not found: {missing}')
    os.makedirs(osp.join(out_dir, 'preds'), exist_ok=True)
    records = []
    if isinstance(inferencer, MMSegInferencer):
        out = inferencer(images, out_dir=out_dir, img_out_dir='vis', return_datasamples=True)
        samples = out if isinstance(out, list) else [out]
        classes = inferencer.model.dataset_meta['classes']
        for image, sample in zip(images, samples):
            stem = osp.splitext(osp.basename(image))[0]
            pred = _seg_record(sample, classes, osp.join(out_dir, 'preds', f'{stem}_sem_seg.png'))
            path = osp.join(out_dir, 'preds', f'{stem}.json')
            with open(path, 'w') as f:
                json.dump(pred, f)
            records.append(dict(image=image, vis=osp.join(out_dir, 'vis', osp.basename(image)),
                                json=path, prediction=pred))
        return records
    out = inferencer(images, out_dir=out_dir, no_save_pred=False, pred_score_thr=score_thr)
    for image, pred in zip(images, out['predictions']):
        stem = osp.splitext(osp.basename(image))[0]
        records.append(dict(image=image, vis=osp.join(out_dir, 'vis', osp.basename(image)),
                            json=osp.join(out_dir, 'preds', f'{stem}.json'), prediction=pred))
    return records


def test_set_images(config, num: int, cfg_options: Optional[dict] = None) -> List[str]:
    """The first ``num`` image files of the config's test set (for a quick look at a model).

    Args:
        config: Config file or loaded Config.
        num: How many images.
        cfg_options: Config overrides.
    """
    from mmengine.registry import DATASETS, init_default_scope
    cfg = load_config(config, cfg_options=cfg_options) if isinstance(config, str) else config
    register_task_modules(cfg)
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    dataset = DATASETS.build(copy.deepcopy(cfg.test_dataloader.dataset))
    if len(dataset) == 0:
        raise ValueError(f'{config}: the test set is empty')
    return [dataset.get_data_info(i)['img_path'] for i in range(min(num, len(dataset)))]


def infer(config, checkpoint: str, images: Sequence[str], out_dir: str, device: str = 'cpu',
          score_thr: float = 0.3, cfg_options: Optional[dict] = None) -> List[dict]:
    """``tools/infer.py``: build the task's inferencer and run it (see :func:`run_inferencer`).

    Args:
        config: Config file (mmdet, mmseg or mmrotate ``default_scope``).
        checkpoint: Full or adapter-only checkpoint written by training with ``config``.
        images: Image files.
        out_dir: Output directory (``vis/``, ``preds/``).
        device: Torch device.
        score_thr: Drawing threshold for detections.
        cfg_options: Config overrides.
    """
    inferencer = build_inferencer(config, checkpoint, device, cfg_options)
    return run_inferencer(inferencer, images, out_dir, score_thr)


__all__ = ['build_inferencer', 'infer', 'run_inferencer', 'test_set_images']

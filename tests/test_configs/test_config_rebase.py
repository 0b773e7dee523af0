"""Every Table-1 / Table-2 config is its task's method-neutral root plus an adapter.

A row (``configs/flora/<task>/``, ``configs/baselines/<task>/``) resolves to the root of its
task (``configs/_base_/tasks/``) with ``model.backbone.adapter`` set and nothing else changed
(Table 2 also lets the frozen column drop its drop path and the full column keep the
schedule's layer decay); no file on a row's way to the root belongs to another method, and no
config deletes an adapter. At the real sizes (ConvNeXt-V2-L, InternViT-6B, built on the meta
device: shapes without weights) each row adapts exactly the root backbone's conv / linear
layers and trains the count computed here from their weight shapes, which is also the figure
its header comment gives.
"""
import ast
import functools
import glob
import json
import os.path as osp
import re

import pytest
import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.registry import MODELS, init_default_scope

import flora_mm  # noqa: F401  (registers flora_mm's modules)
from flora_mm.adapters import adapter_layers, adapter_method, count_adapter_params, \
    layer_param_count

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONFIGS = osp.join(ROOT, 'configs')
TASK_ROOTS = {
    'mask-rcnn': 'mask-rcnn_convnextv2-l_fpn_1x_coco.py',
    'upernet': 'upernet_convnextv2-l_8xb2-160k_ade20k-512x512.py',
    'oriented-rcnn': 'oriented-rcnn-le90_convnextv2-l_fpn_1x_dota.py',
    'upernet-internvit': 'upernet_internvit-6b_8xb2-80k_ade20k-504x504.py',
}
# The DOTA test-server variant trains on other data: a row plus a data change, not a row.
ROWS = sorted(osp.relpath(p, CONFIGS) for kind in ('flora', 'baselines')
              for p in glob.glob(osp.join(CONFIGS, kind, '*', '*.py'))
              if not p.endswith('-test.py'))
METHODS = {'flora': 'FLoRA', 'lora': 'LoRA', 'dora': 'DoRA', 'loha': 'LoHa', 'lokr': 'LoKr',
           'bitfit': 'BitFit', 'full': 'Full', 'frozen': 'Frozen'}
ADAPTERS = ('FLoRA', 'LoRA', 'DoRA', 'LoHa', 'LoKr')  # methods that wrap layers
ALSO_CHANGED = {
    ('upernet-internvit', 'Frozen'): {'model.backbone.drop_path_rate'},
    ('upernet-internvit', 'Full'): {'optim_wrapper.paramwise_cfg.decay_rate'},
}


def _root(task: str) -> str:
    return osp.join(CONFIGS, '_base_', 'tasks', TASK_ROOTS[task])


def _task(row: str) -> str:
    return row.split('/')[1]


def _method(path: str) -> str:
    return METHODS[re.search(r'-(flora|lora|dora|loha|lokr|bitfit|full|frozen)[-_]',
                             osp.basename(path))[1]]


def _bases(path: str) -> list:
    """The local files named by ``_base_`` (``mmdet::`` and the like are left out)."""
    for node in ast.parse(open(path).read()).body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], 'id', None) == '_base_':
            value = ast.literal_eval(node.value)
            names = [value] if isinstance(value, str) else value
            return [osp.normpath(osp.join(osp.dirname(path), n)) for n in names if '::' not in n]
    return []


def _chain(path: str) -> list:
    """The file and every local file it inherits from, nearest first."""
    files = [path]
    for base in _bases(path):
        files += _chain(base)
    return files


@functools.lru_cache(maxsize=None)
def _load(path: str) -> Config:
    """Parsed once per session: mmengine re-reads every model-index file of mmdet / mmseg for
    each ``mmdet::`` / ``mmseg::`` base."""
    return Config.fromfile(path)


def _flat(node, prefix=''):
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            out.update(_flat(value, f'{prefix}{key}.'))
        return out or {prefix[:-1]: {}}
    return {prefix[:-1]: node}


def test_no_config_deletes_an_adapter():
    files = glob.glob(osp.join(CONFIGS, '**', '*.py'), recursive=True)
    offenders = [osp.relpath(f, CONFIGS) for f in files
                 if re.search(r'adapter=dict\(\s*_delete_', open(f).read())]
    assert not offenders
    assert {_task(r) for r in ROWS} == set(TASK_ROOTS)


@pytest.mark.parametrize('row', [  # the fast lane checks the rows right on the COCO root
    r if _bases(osp.join(CONFIGS, r)) == [_root('mask-rcnn')] else
    pytest.param(r, marks=pytest.mark.slow) for r in ROWS])
def test_row_is_root_plus_adapter(row):
    task, method = _task(row), _method(row)
    root = _root(task)
    chain = _chain(osp.join(CONFIGS, row))
    assert root in chain, f'{row} does not inherit {TASK_ROOTS[task]}'
    above_root = chain[:chain.index(root)]
    assert {_method(f) for f in above_root} == {method}, above_root

    got = _flat(_load(osp.join(CONFIGS, row)).to_dict())
    want = _flat(_load(root).to_dict())
    assert not any(k.startswith('model.backbone.adapter') for k in want), 'the root has no adapter'
    changed = {k for k in got.keys() | want.keys()
               if got.get(k, '<unset>') != want.get(k, '<unset>')}
    allowed = ALSO_CHANGED.get((task, method), set())
    assert {k for k in changed if not k.startswith('model.backbone.adapter.')} == allowed
    assert got['model.backbone.adapter.type'] == method


_BUILT: dict = {}


def _build_backbone(path: str) -> nn.Module:
    """The config's backbone on the meta device (ConvNeXt-V2-L's 196M, InternViT-6B's 6B
    weights: no memory), built once per backbone config: the three ConvNeXt tasks share them."""
    cfg = _load(path)
    key = json.dumps(cfg.model.backbone.to_dict(), sort_keys=True)
    if key not in _BUILT:
        init_default_scope(cfg.default_scope)
        with torch.device('meta'):
            _BUILT[key] = MODELS.build({**cfg.model.backbone, 'pretrained': None})
    return _BUILT[key]


def _reference_layers(backbone: nn.Module, task: str) -> dict:
    """The layers the paper adapts, from the plain backbone: every conv / linear of
    ConvNeXt-V2 (stem, downsampling, depthwise, point-wise), every linear of InternViT's
    blocks (qkv, proj, fc1, fc2); name -> weight shape."""
    if task == 'upernet-internvit':
        layers = {n: m for n, m in backbone.named_modules()
                  if isinstance(m, nn.Linear) and n.startswith('blocks.')}
        assert len(layers) == 4 * len(backbone.blocks)
    else:
        layers = {n: m for n, m in backbone.named_modules()
                  if isinstance(m, (nn.Conv2d, nn.Linear))}
        assert len(layers) == 1 + 3 + 3 * sum(backbone.depths)
    return {n: tuple(m.weight.shape) for n, m in layers.items()}


def _always_trained(task: str) -> str:
    """What trains beside the method in every row: ConvNeXt's output norms, InternViT's new
    pyramid."""
    return r'up\d\..*' if task == 'upernet-internvit' else r'norm\d\..*'


def _expected_trainable(plain: nn.Module, task: str, adapter: dict, layers: dict) -> int:
    params = dict(plain.named_parameters())
    always = sum(p.numel() for n, p in params.items() if re.fullmatch(_always_trained(task), n))
    method = adapter['type']
    if method in ADAPTERS:
        options = {k: v for k, v in adapter.items() if k in adapter_method(method).adapter_keys}
        return always + sum(layer_param_count(shape, method, adapter['rank'], **options)
                            for shape in layers.values())
    if method == 'BitFit':
        return always + sum(p.numel() for n, p in params.items() if n.endswith('.bias')
                            and not re.fullmatch(_always_trained(task), n))
    if method == 'Full':
        return sum(p.numel() for p in params.values())
    assert method == 'Frozen'
    return always


@pytest.mark.slow
@pytest.mark.parametrize('task', sorted(TASK_ROOTS))
def test_counts_and_layers_at_real_size(task):
    plain = _build_backbone(_root(task))
    assert not adapter_layers(plain)
    layers = _reference_layers(plain, task)
    for row in (r for r in ROWS if _task(r) == task):
        adapter = _load(osp.join(CONFIGS, row)).model.backbone.adapter.to_dict()
        backbone = _build_backbone(osp.join(CONFIGS, row))
        counts = count_adapter_params(backbone)
        if adapter['type'] in ADAPTERS:
            assert sorted(counts['per_layer']) == sorted(layers), row
        else:
            assert not counts['per_layer'], row
        trainable = sum(p.numel() for p in backbone.parameters() if p.requires_grad)
        assert trainable == _expected_trainable(plain, task, adapter, layers), row

        # the figure of a Table row's header, e.g. "(here 12.84M)", "(here r = 8: 19.67M"
        text = open(osp.join(CONFIGS, row)).read()
        if text.startswith('# Table') and adapter['type'] in ('FLoRA', 'LoRA', 'DoRA'):
            stated = re.search(r'here (?:r = \d+: )?([\d.]+)M', text)
            assert stated and float(stated[1]) == round(counts['total'] / 1e6, 2), (
                row, counts['total'])

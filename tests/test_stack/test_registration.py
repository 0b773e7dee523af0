"""``import flora_mm`` registers flora_mm's modules with mmengine in every import order, each
case in a fresh interpreter: after mmengine (a config's ``custom_imports``), before it (the
light core first, a config later in the same process), and with a flora_mm module that
imports mmengine itself as the very first import."""
import json
import os
import os.path as osp
import subprocess
import sys

import pytest

# subprocesses of several seconds each: the full suite, not the fast lane
pytestmark = pytest.mark.slow

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DEMO_DET = osp.join(REPO, 'configs', 'demo', 'mask-rcnn_convnextv2-atto-flora_fpn_tiny-coco.py')

# Look up flora_mm's backbone through mmdet's and mmseg's registries and its hook through
# mmengine's, before anything imports those classes; then compare with the classes.
FOUND_DOWNSTREAM = '''
from mmdet.registry import MODELS as DET_MODELS
from mmengine.registry import HOOKS
from mmseg.registry import MODELS as SEG_MODELS
found = dict(det=DET_MODELS.get('flora_mm.FLoRAConvNeXtV2'),
             seg=SEG_MODELS.get('flora_mm.FLoRAConvNeXtV2'),
             hook=HOOKS.get('flora_mm.FLoRAHook'))
'''
# The same through mmengine's root registries alone (lighter: no mmdet / mmseg import).
FOUND_MMENGINE = '''
from mmengine.registry import HOOKS, MODELS
found = dict(model=MODELS.get('flora_mm.FLoRAConvNeXtV2'), hook=HOOKS.get('flora_mm.FLoRAHook'))
'''
COMPARE = '''
from flora_mm.engine import FLoRAHook
from flora_mm.models import FLoRAConvNeXtV2
result['found'] = {key: value is (FLoRAHook if key == 'hook' else FLoRAConvNeXtV2)
                   for key, value in found.items()}
print(json.dumps(result))
'''


def _run(code: str) -> dict:
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          timeout=300, cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO))
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_import_after_mmengine_registers():
    out = _run('''
import json, sys
import mmengine
import flora_mm
result = dict(nodes='flora_mm.registry' in sys.modules)
''' + FOUND_DOWNSTREAM + COMPARE)
    assert out == dict(nodes=True, found=dict(det=True, seg=True, hook=True))


def test_light_import_first_then_a_config_registers():
    """The core first (no mmengine), then mmdet, then a config with ``custom_imports``: its
    model builds with flora_mm's backbone."""
    out = _run(f'''
import json, sys
import flora_mm.adapters
result = dict(mmengine_before='mmengine' in sys.modules)
import mmdet
result['nodes_after_mmdet'] = 'flora_mm.registry' in sys.modules
from mmdet.utils import register_all_modules
from mmengine.config import Config
from mmdet.registry import MODELS
register_all_modules()
cfg = Config.fromfile({DEMO_DET!r})
result['backbone'] = type(MODELS.build(cfg.model).backbone).__name__
''' + FOUND_DOWNSTREAM + COMPARE)
    assert out == dict(mmengine_before=False, nodes_after_mmdet=True,
                       backbone='FLoRAConvNeXtV2',
                       found=dict(det=True, seg=True, hook=True))


@pytest.mark.parametrize('first', ['flora_mm.registry', 'flora_mm.engine', 'flora_mm.models'])
def test_first_import_of_a_module_that_imports_mmengine(first):
    """mmengine's first import comes from inside flora_mm: the registration it triggers must
    not run into the half-imported flora_mm module."""
    out = _run(f'''
import json, sys
import {first}
result = {{}}
''' + FOUND_MMENGINE + COMPARE)
    assert out == dict(found=dict(model=True, hook=True))

"""flora_mm works as an installed library, away from the repository: installed non-editable
into a temporary target and run from another directory with only that target on the path, it
builds a model from a config given by path and runs a benchmark driver on it."""
import json
import os
import os.path as osp
import shutil
import subprocess
import sys

import pytest
import torch

from flora_mm.adapters import count_adapter_params
from flora_mm.apis import load_config
from flora_mm.apis.merge import build_model

# a pip install into a temporary target: the full suite, not the fast lane
pytestmark = pytest.mark.slow

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONFIG = osp.join(REPO, 'configs', 'demo', 'upernet_convnextv2-atto-flora_tiny-ade.py')

USE_INSTALLED = '''
import json, sys
import torch
import flora_mm
from flora_mm.adapters import count_adapter_params
from flora_mm.analysis.layer_profile import profile_configs
from flora_mm.apis import load_config
from flora_mm.apis.merge import build_model

config = sys.argv[1]
cfg = load_config(config)
cfg.model.backbone.pretrained = None
torch.manual_seed(0)
model = build_model(cfg)
report = profile_configs({'FLoRA': config}, input_size=(32, 32), repeats=1)
print(json.dumps(dict(
    flora_mm=flora_mm.__file__, backbone=sys.modules[type(model.backbone).__module__].__file__,
    counts=count_adapter_params(model), methods=report['methods'],
    layer_groups=len(report['rows']), steps=sorted(report['backbone_steps']))))
'''


def test_installed_package_builds_a_config_and_runs_a_driver(tmp_path):
    # install from a copy, so that the build leaves nothing in the checkout
    source = tmp_path / 'source'
    for folder in ('flora_mm', 'requirements'):
        shutil.copytree(osp.join(REPO, folder), source / folder,
                        ignore=shutil.ignore_patterns('__pycache__'))
    for name in ('setup.py', 'README.md'):
        shutil.copy(osp.join(REPO, name), source / name)
    target, elsewhere = tmp_path / 'site', tmp_path / 'elsewhere'
    elsewhere.mkdir()
    subprocess.run([sys.executable, '-m', 'pip', 'install', '-q', '--no-deps',
                    '--no-build-isolation', '--target', str(target), str(source)],
                   check=True, capture_output=True, timeout=600)
    assert not (target / 'configs').exists() and not (target / 'tools').exists()

    env = dict(os.environ, PYTHONPATH=str(target))
    proc = subprocess.run([sys.executable, '-c', USE_INSTALLED, CONFIG], cwd=str(elsewhere),
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out['flora_mm'].startswith(str(target)) and out['backbone'].startswith(str(target))
    assert out['layer_groups'] > 0 and out['steps'] == ['FLoRA', 'limit']

    # the same config built by this checkout: the same adapter and parameter counts
    cfg = load_config(CONFIG)
    cfg.model.backbone.pretrained = None
    assert out['methods']['FLoRA']['rank'] == cfg.model.backbone.adapter.rank
    torch.manual_seed(0)
    assert out['counts'] == count_adapter_params(build_model(cfg))

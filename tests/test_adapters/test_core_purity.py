"""The adapter core is light and pure: ``import flora_mm.adapters`` imports torch and the
standard library only, and works beside any OpenMMLab version (fresh interpreters).

After it, the flora_mm modules in ``sys.modules`` are ``flora_mm`` (the package), its
stdlib-only bootstrap ``flora_mm.compat`` and ``flora_mm.version``, and ``flora_mm.adapters.*``.
"""
import json
import os
import os.path as osp
import subprocess
import sys

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
ALLOWED_FLORA_MM = {'flora_mm', 'flora_mm.compat', 'flora_mm.version'}


def is_openmmlab_or_timm(name: str) -> bool:
    top = name.split('.')[0]
    return top == 'timm' or top.startswith('mm') and top not in sys.stdlib_module_names  # mmap


# A meta-path finder that refuses every OpenMMLab package and timm, installed first.
BLOCK_OPENMMLAB = '''
import importlib.abc, sys

class Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        top = name.split('.')[0]
        if top == 'timm' or top.startswith('mm') and top not in sys.stdlib_module_names:
            raise ImportError(f'{name} is blocked by the test')

sys.meta_path.insert(0, Blocked())
'''

# Inject FLoRA into a small model, move its cores off zero, merge, and report.
USE_CORE = '''
import json, sys
import torch
import torch.nn as nn
baseline = {m.split('.')[0] for m in sys.modules}

from flora_mm.adapters import adapt_model, adapter_layers, merge_adapters

torch.manual_seed(0)
model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GELU(), nn.Conv2d(8, 4, 1))
x = torch.randn(2, 3, 8, 8)
plain = model(x)
report = adapt_model(model, {'type': 'FLoRA', 'rank': 2})
with torch.no_grad():
    for param in model.parameters():
        if param.requires_grad:
            param.normal_()
adapted = model(x)
merge_adapters(model, unload=True)
merged = model(x)
print(json.dumps(dict(
    injected=report.injected, adapters_left=len(adapter_layers(model)),
    changed=float((adapted - plain).abs().max()), merge_error=float((merged - adapted).abs().max()),
    modules=sorted(sys.modules), new_top_level=sorted(
        {m.split('.')[0] for m in sys.modules} - baseline - set(sys.stdlib_module_names)))))
'''


def _python(code: str, cwd: str, pythonpath=()) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([*pythonpath, REPO]))
    return subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          timeout=300, cwd=cwd, env=env)


def _last_json(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _check_core_run(out: dict) -> None:
    assert out['injected'] == ['0', '2'] and out['adapters_left'] == 0
    assert out['changed'] > 1e-3 and out['merge_error'] < 1e-5
    assert out['new_top_level'] == ['flora_mm']  # nothing but flora_mm beyond torch and stdlib
    outside_core = {m for m in out['modules'] if m.split('.')[0] == 'flora_mm'
                    and not m.startswith('flora_mm.adapters')}
    assert outside_core <= ALLOWED_FLORA_MM


def test_core_without_openmmlab_or_timm(tmp_path):
    """OpenMMLab and timm blocked: the core imports, adapts, merges, and loads none of them."""
    out = _last_json(_python(BLOCK_OPENMMLAB + USE_CORE, cwd=str(tmp_path)))
    _check_core_run(out)
    assert not [m for m in out['modules'] if is_openmmlab_or_timm(m)]


def _fake_mmengine(root) -> str:
    package = root / 'mmengine'
    package.mkdir()
    (package / '__init__.py').write_text("__version__ = '0.1.0'\n")
    return str(root)


def test_core_beside_an_out_of_range_mmengine(tmp_path):
    """An mmengine far outside flora_mm's range: the core works; importing that mmengine
    afterwards works too and only warns that flora_mm's OpenMMLab modules are not registered;
    flora_mm's registry names package, version, range and the setup command."""
    code = USE_CORE + '''
import mmengine, flora_mm.stack
try:
    import flora_mm.registry
except flora_mm.stack.UnsupportedStackError as err:
    print(json.dumps(dict(mmengine=mmengine.__version__, error=str(err))))
'''
    proc = _python(code, cwd=str(tmp_path), pythonpath=[_fake_mmengine(tmp_path)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    _check_core_run(json.loads(lines[-2]))
    last = json.loads(lines[-1])
    assert last['mmengine'] == '0.1.0'
    for part in ('flora_mm.registry', 'mmengine >=0.10.0,<=0.10.7 (found 0.1.0)',
                 'bash tools/setup_env.sh'):
        assert part in last['error']
    warnings = [line for line in proc.stderr.splitlines() if 'not registered' in line]
    assert len(warnings) == 1 and 'mmengine >=0.10.0,<=0.10.7 (found 0.1.0)' in warnings[0]


def test_core_after_an_out_of_range_mmengine(tmp_path):
    """The same mmengine imported first: ``import flora_mm.adapters`` still works."""
    code = 'import mmengine\n' + USE_CORE
    proc = _python(code, cwd=str(tmp_path), pythonpath=[_fake_mmengine(tmp_path)])
    out = _last_json(proc)
    assert out['injected'] == ['0', '2'] and out['merge_error'] < 1e-5
    assert 'flora_mm.registry' not in out['modules']
    assert sum('not registered' in line for line in proc.stderr.splitlines()) == 1

"""The environment's start-up hook (``flora_mm_compat.pth``, written by tools/setup_env.sh).

Fresh interpreters of this environment, none of which imports flora_mm, must see the fixes of
flora_mm/compat.py as soon as the module each patches is imported (mmengine's checkpoint
loader, mmrotate's ``collections`` aliases), and no heavy import at start-up.
"""
import os.path as osp
import subprocess
import sys
import sysconfig

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def _python(code: str) -> str:
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          timeout=300, cwd='/')
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip()


def test_pth_file_is_installed_and_points_at_this_checkout():
    pth = osp.join(sysconfig.get_paths()['purelib'], 'flora_mm_compat.pth')
    assert osp.isfile(pth), f'{pth} missing: run bash tools/setup_env.sh'
    assert osp.join(REPO, 'flora_mm', 'compat.py') in open(pth).read()


def test_start_is_cheap():
    heavy = ('torch', 'mmengine', 'flora_mm', 'numpy', 'packaging')
    out = _python(f'import sys\nprint(sorted(m for m in {heavy} if m in sys.modules))')
    assert out == '[]'


def test_mmengine_checkpoint_loader_patched_without_flora_mm(tmp_path):
    """A runner checkpoint with non-tensor state loads through mmengine alone (weights_only off
    for local files), and the stock mmrotate import that needs collections.Sequence works."""
    path = tmp_path / 'ckpt.pth'
    out = _python(
        'import sys, numpy as np, torch\n'
        f'torch.save({{"meta": {{"seed": np.int64(3)}}, "state_dict": {{}}}}, {str(path)!r})\n'
        'from mmengine.runner.checkpoint import _load_checkpoint\n'
        f'ckpt = _load_checkpoint({str(path)!r})\n'
        'import mmrotate.models\n'
        'print(int(ckpt["meta"]["seed"]), "flora_mm" in sys.modules)')
    assert out.splitlines()[-1] == '3 False'  # after mmengine's 'Loads checkpoint' line

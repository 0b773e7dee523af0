"""Shared fixtures of the tool tests: tiny datasets, local pretrained weights, tool runner."""
import os
import os.path as osp
import socket
import subprocess
import sys

import pytest
import torch

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
HERE = osp.dirname(osp.abspath(__file__))


@pytest.fixture(scope='session')
def tiny_data(tmp_path_factory):
    """Tiny COCO and ADE20K sets in the real formats (flora_mm.testing.tiny_datasets)."""
    from flora_mm.testing.tiny_datasets import make_ade20k, make_coco
    root = tmp_path_factory.mktemp('data')
    make_coco(str(root / 'coco'), num_train=4, num_val=2, img_size=64)
    make_ade20k(str(root / 'ade'), num_train=4, num_val=2, img_size=64)
    return root


@pytest.fixture(scope='session')
def pretrained(tmp_path_factory):
    """Local 'pretrained' weights: timm convnextv2_atto and mmdet ResNet-18 (random, seeded)."""
    import timm
    from mmdet.models.backbones import ResNet
    root = tmp_path_factory.mktemp('pretrained')
    torch.manual_seed(0)
    atto = root / 'convnextv2_atto.pth'
    torch.save(timm.create_model('convnextv2_atto').state_dict(), atto)
    resnet = root / 'resnet18.pth'
    torch.save({'state_dict': ResNet(depth=18).state_dict()}, resnet)
    return dict(atto=str(atto), resnet18=str(resnet))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def run_tool(args, timeout=600, **env_overrides) -> subprocess.CompletedProcess:
    """Run a tool (``tools/...``) with this interpreter; fail with its output on error."""
    env = dict(os.environ, PYTHON=sys.executable, PORT=str(free_port()),
               PYTHONPATH=os.pathsep.join([HERE, REPO, os.environ.get('PYTHONPATH', '')]),
               OMP_NUM_THREADS='1', CUDA_VISIBLE_DEVICES='', **env_overrides)
    cmd = (['bash'] if args[0].endswith('.sh') else [sys.executable]) + [
        osp.join(REPO, args[0])] + [str(a) for a in args[1:]]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f'{" ".join(cmd)} failed ({proc.returncode}):\n'
                             f'{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}')
    return proc


def load_probe(work_dir, rank=0) -> dict:
    return torch.load(osp.join(work_dir, f'probe_rank{rank}.pt'), weights_only=False)


DEMO_CONFIGS = dict(
    det=osp.join(REPO, 'configs', 'demo', 'mask-rcnn_convnextv2-atto-flora_fpn_tiny-coco.py'),
    seg=osp.join(REPO, 'configs', 'demo', 'upernet_convnextv2-atto-flora_tiny-ade.py'),
    rot=osp.join(REPO, 'configs', 'demo', 'oriented-rcnn_convnextv2-atto-flora_fpn_tiny-dota.py'))


@pytest.fixture(scope='session')
def tiny_all(tmp_path_factory):
    """The tiny COCO / ADE20K / DOTA sets (64 px) where the demo configs look for them:
    ``FLORA_MM_TINY_DATA`` is set for this process and the tool subprocesses."""
    from flora_mm.testing import make_all
    root = tmp_path_factory.mktemp('tiny_all')
    make_all(str(root), num_train=4, num_val=2, img_size=64)
    patch = pytest.MonkeyPatch()
    patch.setenv('FLORA_MM_TINY_DATA', str(root))
    yield root
    patch.undo()


@pytest.fixture(scope='session')
def task_checkpoints(tiny_all, pretrained, tmp_path_factory):
    """Per demo task (det / seg / rot): the same 'fine-tuned' weights (perturbed adapters, fresh
    heads; flora_mm.testing.make_checkpoint) as a full and as an adapter-only checkpoint, on the
    local atto weights of ``pretrained``."""
    from flora_mm.testing.checkpoints import make_checkpoint
    root = tmp_path_factory.mktemp('task_checkpoints')
    tasks = {}
    for seed, (task, config) in enumerate(DEMO_CONFIGS.items()):
        options = {'model.backbone.pretrained': pretrained['atto']}
        paths = dict(full=str(root / f'{task}_full.pth'),
                     adapter_only=str(root / f'{task}_adapter_only.pth'))
        for kind, path in paths.items():
            make_checkpoint(config, path, options, adapter_only=kind == 'adapter_only',
                            seed=seed)
        tasks[task] = dict(config=config, cfg_options=options, **paths)
    return tasks


def val_images(root, task) -> list:
    """The validation images of a tiny set."""
    import glob
    pattern = dict(det='coco/val2017/*.jpg',
                   seg='ade/ADEChallengeData2016/images/validation/*.jpg',
                   rot='split_ss_dota/val/images/*.png')[task]
    return sorted(glob.glob(osp.join(str(root), pattern)))

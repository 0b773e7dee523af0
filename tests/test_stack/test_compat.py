"""Each fix of flora_mm/compat.py: the upstream failure reproduced without it, then gone with
it (applied twice: idempotent); skipped with one warning outside its versions; all of them in
place on the pinned stack; every one listed in docs/compat.md.

The reproductions run in fresh interpreters started with ``-S``: the environment's start-up
hook (``flora_mm_compat.pth``) does not run, so nothing is patched until the code applies a
fix, loaded from flora_mm/compat.py by path as that hook loads it.
"""
import json
import os
import os.path as osp
import site
import subprocess
import sys
import textwrap

import pytest

import flora_mm  # noqa: F401  (registers the fixes in this process)
from flora_mm.compat import FIXES, version_problems

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
COMPAT = osp.join(REPO, 'flora_mm', 'compat.py')

PRELUDE = f'''
import json, runpy, sys
FIXES = runpy.run_path({COMPAT!r})['FIXES']


def _state(module):
    return {{name: (id(value), {{k: id(v) for k, v in vars(value).items()}}
                    if isinstance(value, type) else None)
            for name, value in vars(module).items()}}


def apply(name):
    """Apply a fix twice; the second time must change nothing."""
    fix = FIXES[name]
    module = sys.modules[fix.on]
    assert fix(module)
    state = _state(module)
    assert fix(module) and _state(module) == state
'''


def run_without_fixes(code: str, *args: str, paths=(), timeout: int = 300) -> dict:
    """Run ``code`` (after :data:`PRELUDE`) with ``-S``; its last stdout line is JSON."""
    script = PRELUDE + textwrap.dedent(code)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([*paths, REPO, *site.getsitepackages()]))
    proc = subprocess.run([sys.executable, '-S', '-c', script, *args], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_mmrotate_collections_aliases():
    out = run_without_fixes('''
        import mmrotate
        try:
            import mmrotate.models
            error = None
        except ImportError as err:
            error = str(err)
        apply('mmrotate_collections_aliases')
        import mmrotate.models
        print(json.dumps(dict(error=error, detector=hasattr(mmrotate.models,
                                                           'RefineSingleStageDetector'))))
    ''')
    assert "cannot import name 'Sequence' from 'collections'" in out['error']
    assert out['detector']


def test_mmengine_local_checkpoints(tmp_path):
    """A runner checkpoint (message hub, numpy seed) fails to load under torch's default
    ``weights_only=True``; with the fix it loads, values intact."""
    out = run_without_fixes('''
        import pickle
        import numpy as np, torch
        from mmengine.logging import HistoryBuffer
        from mmengine.runner import checkpoint
        path = sys.argv[1]
        buffer = HistoryBuffer()
        buffer.update(1.5)
        torch.save({'state_dict': {'w': torch.ones(2)}, 'message_hub': {'loss': buffer},
                    'meta': {'seed': np.int64(3)}}, path)
        try:
            checkpoint._load_checkpoint(path, map_location='cpu')
            error = None
        except pickle.UnpicklingError as err:
            error = str(err)
        apply('mmengine_local_checkpoints')
        loaded = checkpoint._load_checkpoint(path, map_location='cpu')
        print(json.dumps(dict(error=error, loss=loaded['message_hub']['loss'].current(),
                              seed=int(loaded['meta']['seed']),
                              w=loaded['state_dict']['w'].tolist())))
    ''', str(tmp_path / 'epoch_1.pth'))
    assert 'Weights only load failed' in out.pop('error')
    assert out == dict(loss=1.5, seed=3, w=[1.0, 1.0])


def test_checkpoint_with_other_globals_is_refused(tmp_path):
    """The fixed loader allows mmengine's own types only: a file that needs any other global
    (here argparse.Namespace) is refused, naming it (in this process, fixes applied)."""
    import argparse
    import pickle

    import torch
    from mmengine.runner.checkpoint import _load_checkpoint
    path = tmp_path / 'foreign.pth'
    torch.save({'state_dict': {'w': torch.ones(2)}, 'meta': argparse.Namespace(a=1)}, path)
    with pytest.raises(pickle.UnpicklingError, match='argparse.Namespace') as err:
        _load_checkpoint(str(path), map_location='cpu')
    assert 'foreign.pth' in str(err.value) and 'add_safe_globals' in str(err.value)


def test_mmcv_flops_counter_detectors():
    """mmcv's counter fails on a two-stage detector; fixed, it counts what it counts with a
    caller-made ``input_constructor`` (a second path: the unfixed counter, metas by hand)."""
    out = run_without_fixes('''
        import mmcv.cnn, mmdet, torch
        from mmdet.structures import DetDataSample
        from mmdet.utils import register_all_modules
        from mmengine.config import Config
        from mmengine.registry import MODELS
        register_all_modules()
        cfg = Config.fromfile(mmdet.__path__[0] + '/.mim/configs/_base_/models/'
                              'faster-rcnn_r50_fpn.py')
        cfg.model.backbone.update(depth=18, init_cfg=None)
        cfg.model.neck.in_channels = [64, 128, 256, 512]
        model = MODELS.build(cfg.model).eval()
        count = mmcv.cnn.get_model_complexity_info
        try:
            count(model, (3, 64, 96), print_per_layer_stat=False, as_strings=False)
            error = None
        except TypeError as err:
            error = str(err)

        def by_hand(shape):
            meta = dict(img_shape=(64, 96), ori_shape=(64, 96), pad_shape=(64, 96),
                        batch_input_shape=(64, 96), scale_factor=(1., 1.))
            return dict(inputs=torch.zeros(1, *shape), mode='tensor',
                        data_samples=[DetDataSample(metainfo=meta)])

        reference = count(model, (3, 64, 96), print_per_layer_stat=False, as_strings=False,
                          input_constructor=by_hand)
        apply('mmcv_flops_counter_detectors')
        fixed = mmcv.cnn.get_model_complexity_info(model, (3, 64, 96),
                                                   print_per_layer_stat=False, as_strings=False)
        print(json.dumps(dict(error=error, reference=reference, fixed=fixed)))
    ''')
    assert "'NoneType' object is not iterable" in out['error']
    assert out['fixed'] == out['reference'] and out['fixed'][0] > 0


def test_mmengine_complexity_info_inputs():
    """Given ``input_shape`` and ``inputs`` (mmseg's get_flops.py), mmengine refuses; fixed,
    it counts the inputs: a 3x3 conv's multiply-adds, computed by hand."""
    out = run_without_fixes('''
        import torch, torch.nn as nn
        from mmengine import analysis
        model = nn.Conv2d(3, 4, 3, padding=1)
        inputs = (torch.randn(1, 3, 8, 10), )
        try:
            analysis.get_model_complexity_info(model, (3, 16, 16), inputs)
            error = None
        except ValueError as err:
            error = str(err)
        apply('mmengine_complexity_info_inputs')
        flops = analysis.get_model_complexity_info(model, (3, 16, 16), inputs, show_table=False,
                                                   show_arch=False)['flops']
        print(json.dumps(dict(error=error, flops=flops)))
    ''')
    assert out['error'] == '"input_shape" and "inputs" cannot be both set.'
    assert out['flops'] == (4 * 8 * 10) * (3 * 3 * 3)  # output elements x multiply-adds each


def test_mmseg_draw_sem_seg_contiguous():
    """A channel-flipped view of a permuted image (browse_dataset.py's): OpenCV refuses to draw
    the labels; fixed, the drawing equals the one of a contiguous copy."""
    out = run_without_fixes('''
        import cv2, numpy as np, torch
        from mmengine.structures import PixelData
        from mmseg.visualization import SegLocalVisualizer
        rng = np.random.default_rng(0)
        chw = rng.integers(0, 255, (3, 32, 48), dtype=np.uint8)
        image = chw.transpose(1, 2, 0)[..., ::-1]
        labels = np.zeros((32, 48), dtype=np.int64)
        labels[8:24, 10:40] = 1
        sem_seg = PixelData(data=torch.from_numpy(labels)[None])
        vis = SegLocalVisualizer(name='compat_test')
        args = (sem_seg, ('background', 'thing'), [(0, 0, 0), (255, 0, 0)])
        try:
            vis._draw_sem_seg(image, *args)
            error = None
        except cv2.error as err:
            error = str(err)
        reference = vis._draw_sem_seg(np.ascontiguousarray(image), *args)
        apply('mmseg_draw_sem_seg_contiguous')
        fixed = vis._draw_sem_seg(image, *args)
        print(json.dumps(dict(error=error, equal=bool(np.array_equal(fixed, reference)),
                              changed=bool((reference != image).any()))))
    ''')
    assert 'Layout of the output array img is incompatible with cv::Mat' in out['error']
    assert out['equal'] and out['changed']


# Two gloo ranks, one FSDP unit over two layers (use_orig_params, state on the CPU), one Adam
# step on the same batch as a plain model: the full optimizer state dict against the plain
# optimizer's state; mmengine's FSDPStrategy resuming from it; LoggerHook's test JSON per rank.
TWO_RANKS = '''
import copy, os, tempfile
import torch, torch.distributed as dist, torch.multiprocessing as mp, torch.nn as nn
from torch.distributed.fsdp import FullOptimStateDictConfig, FullStateDictConfig
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP, StateDictType
# before the group exists: some torch modules they import bind it into default arguments
from mmengine._strategy import fsdp as fsdp_strategy
from mmengine.hooks import logger_hook
from mmengine.optim import OptimWrapper


def gather_error(model, optimizer, reference):
    state = FSDP.optim_state_dict(model, optimizer)['state']
    return max(float((state[name][key] - reference[name][key]).abs().max())
               for name in reference for key in ('exp_avg', 'exp_avg_sq'))


def compare(rank, out):
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Linear(6, 5), nn.Linear(5, 3))
    model = FSDP(copy.deepcopy(plain), device_id=torch.device('cpu'), use_orig_params=True)
    FSDP.set_state_dict_type(model, StateDictType.FULL_STATE_DICT,
                             FullStateDictConfig(offload_to_cpu=True, rank0_only=False),
                             FullOptimStateDictConfig(offload_to_cpu=True, rank0_only=False))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    plain_optimizer = torch.optim.Adam(plain.parameters(), lr=0.1)
    batch = torch.randn(4, 6, generator=torch.Generator().manual_seed(1))
    for net, opt in ((model, optimizer), (plain, plain_optimizer)):
        net(batch).square().sum().backward()
        opt.step()
    reference = {name: plain_optimizer.state[p] for name, p in plain.named_parameters()}
    result = dict(gather_error_unfixed=gather_error(model, optimizer, reference))
    apply('torch_fsdp_cpu_optim_gather')
    result['gather_error_fixed'] = gather_error(model, optimizer, reference)

    full = FSDP.optim_state_dict(model, optimizer)
    strategy = fsdp_strategy.FSDPStrategy()
    strategy.model = model
    strategy.optim_wrapper = OptimWrapper(torch.optim.Adam(model.parameters(), lr=0.1))
    try:
        strategy.load_optim_state_dict(full)
        result['resume_error'] = None
    except TypeError as err:
        result['resume_error'] = str(err)
    apply('mmengine_fsdp_resume')
    strategy.load_optim_state_dict(full)
    resumed = strategy.optim_wrapper.optimizer.state
    pairs = [(resumed[p][key], state[key]) for p, state in optimizer.state.items()
             for key in ('exp_avg', 'exp_avg_sq') if state[key].numel()]  # this rank's shards
    result['resume_compared'] = len(pairs)
    result['resume_difference'] = max(float((a - b).abs().max()) for a, b in pairs)

    logger_hook.dump({'rank': rank}, os.path.join(out, f'unfixed_rank{rank}.json'))
    apply('mmengine_test_json_main_process')
    logger_hook.dump({'rank': rank}, os.path.join(out, f'fixed_rank{rank}.json'))
    dist.barrier()
    if rank == 0:
        result['written'] = sorted(f for f in os.listdir(out) if f.endswith('.json'))
        with open(os.path.join(out, 'result'), 'w') as f:
            json.dump(result, f)


def worker(rank, out):
    dist.init_process_group('gloo', rank=rank, world_size=2)
    compare(rank, out)  # returns with its FSDP model unreferenced: closing frees the backend
    from flora_mm.apis.launch import close_distributed  # only now: flora_mm applies the fixes
    close_distributed()


if __name__ == '__main__':
    out = sys.argv[1]
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=sys.argv[2])
    mp.spawn(worker, args=(out, ), nprocs=2)
    print(open(os.path.join(out, 'result')).read())
'''


@pytest.fixture(scope='module')
def two_ranks(tmp_path_factory):
    import socket
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    folder = tmp_path_factory.mktemp('two_ranks')
    script = folder / 'two_ranks.py'
    script.write_text(PRELUDE + TWO_RANKS)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, *site.getsitepackages()]))
    proc = subprocess.run([sys.executable, '-S', str(script), str(folder), str(port)],
                          capture_output=True, text=True, timeout=600, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_torch_fsdp_cpu_optim_gather(two_ranks):
    """Unfixed, the gathered Adam states of the unit are wrong (views of one reused buffer);
    fixed, they equal the plain model's."""
    assert two_ranks['gather_error_unfixed'] > 1e-3
    assert two_ranks['gather_error_fixed'] < 1e-6


def test_mmengine_fsdp_resume(two_ranks):
    assert "unhashable type: 'dict'" in two_ranks['resume_error']
    assert two_ranks['resume_compared'] > 0 and two_ranks['resume_difference'] == 0.0


def test_mmengine_test_json_main_process(two_ranks):
    """Unfixed, both ranks write the test metrics file; fixed, rank 0 only."""
    assert two_ranks['written'] == ['fixed_rank0.json', 'unfixed_rank0.json',
                                    'unfixed_rank1.json']


def test_every_fix_is_reproduced_here():
    tested = {name[len('test_'):] for name in globals() if name.startswith('test_')}
    assert set(FIXES) <= tested


def test_out_of_range_fix_is_skipped_once_with_a_warning(tmp_path):
    """An mmengine outside the fix's range: ``import flora_mm``'s fix and the start-up hook's
    copy of it leave the module as it is, with one warning between them."""
    hooks = tmp_path / 'mmengine' / 'hooks'
    hooks.mkdir(parents=True)
    (tmp_path / 'mmengine' / '__init__.py').write_text("__version__ = '0.1.0'\n")
    (hooks / '__init__.py').write_text('')
    (hooks / 'logger_hook.py').write_text('def dump(obj, path):\n    pass\n')
    code = f'''
import json, runpy
import flora_mm
from mmengine.hooks import logger_hook
original = logger_hook.dump
startup_copy = runpy.run_path({COMPAT!r})['FIXES']['mmengine_test_json_main_process']
print(json.dumps(dict(
    again=flora_mm.compat.FIXES['mmengine_test_json_main_process'](logger_hook),
    startup_copy=startup_copy(logger_hook), unchanged=logger_hook.dump is original)))
'''
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(tmp_path), REPO, *site.getsitepackages()]))
    proc = subprocess.run([sys.executable, '-S', '-c', code], capture_output=True, text=True,
                          timeout=300, env=env, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == dict(
        again=False, startup_copy=False, unchanged=True)
    skipped = [line for line in proc.stderr.splitlines() if 'skipped the fix' in line]
    assert len(skipped) == 1
    assert 'mmengine_test_json_main_process' in skipped[0]
    assert 'mmengine >=0.10.0,<=0.10.7 (found 0.1.0)' in skipped[0]


def test_every_fix_is_in_place_on_the_pinned_stack():
    """Every fix's versions include the installed (pinned) stack, and ``import flora_mm``
    applied each one to its module."""
    import importlib
    for name, fix in FIXES.items():
        assert fix.why and fix.versions, name
        assert version_problems(fix.versions) == [], name
        module = importlib.import_module(fix.on)
        assert module._flora_mm_fixes[name] == 'applied', name


def test_docs_list_every_fix():
    with open(osp.join(REPO, 'docs', 'compat.md')) as f:
        text = f.read()
    for name, fix in FIXES.items():
        assert f'`{name}`' in text and f'`{fix.on}`' in text, name
        for package, specifier in fix.versions.items():
            assert f'{package} `{specifier}`' in text, (name, package)

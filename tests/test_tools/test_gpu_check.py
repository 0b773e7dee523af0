"""tools/gpu_check.sh without a GPU (says so, exits 0, writes nothing) and the pieces of
flora_mm.testing.gpu_check on the CPU: a failing or hanging stage is recorded and the next one
runs, the readers of pytest's, mmengine's, the layer profile's and Table 4's outputs, and the
stages' commands (20 iterations of each demo)."""
import json
import math
import os
import os.path as osp
import subprocess
import sys
import time

import pytest
from mmengine.config import Config

from flora_mm.analysis import table4
from flora_mm.testing import gpu_check

from conftest import REPO

PY = sys.executable


@pytest.mark.slow
def test_gpu_check_without_a_gpu_says_so_and_exits_0(tmp_path):
    out = tmp_path / 'report'
    env = dict(os.environ, PYTHON=PY, GPU_CHECK_OUT=str(out), CUDA_VISIBLE_DEVICES='')
    proc = subprocess.run(['bash', osp.join(REPO, 'tools', 'gpu_check.sh')], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert 'no CUDA GPU on this machine' in proc.stdout
    assert not out.exists()  # no setup, no stage ran
    proc = subprocess.run([PY, '-m', 'flora_mm.testing.gpu_check', '--out', str(out)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and 'no CUDA GPU on this machine' in proc.stdout
    assert not out.exists()


def test_failed_and_hung_stages_are_recorded_and_the_next_runs(tmp_path):
    child = tmp_path / 'child.pid'
    hang = ('import subprocess, sys, time; '
            'p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"]); '
            f'open({str(child)!r}, "w").write(str(p.pid)); time.sleep(600)')
    stages = [
        gpu_check.Stage('ok', [PY, '-c', 'print("fine")'], 60,
                        check=lambda log: (True, f'read: {log.strip()}')),
        gpu_check.Stage('crash', [PY, '-c', 'import sys; print("boom"); sys.exit(3)'], 60),
        gpu_check.Stage('hang', [PY, '-c', hang], 3),
        gpu_check.Stage('unreadable', [PY, '-c', 'pass'], 60, check=lambda log: 1 / 0),
        gpu_check.Stage('check/no', [PY, '-c', 'pass'], 60, check=lambda log: (False, 'no')),
        gpu_check.Stage('last', [PY, '-c', 'import os; print(os.environ["MARK"])'], 60,
                        env=dict(MARK='seen')),
    ]
    setup = tmp_path / 'setup.log'
    setup.write_text('pip: no network\n')
    before = [gpu_check.setup_result(str(setup), 1)]
    logged = []
    status = gpu_check.run_check(stages, str(tmp_path), str(tmp_path), 'header line', before,
                                 log=logged.append)
    assert status == 1
    report = (tmp_path / 'report.md').read_text()
    rows = {line.split('|')[1].strip(): line.split('|')[2].strip()
            for line in report.splitlines() if line.startswith('| ') and 'stage' not in line}
    assert rows == {'setup': 'failed', 'ok': 'passed', 'crash': 'failed', 'hang': 'timed out',
                    'unreadable': 'failed', 'check/no': 'failed', 'last': 'passed'}
    assert '**2 of 7 stages passed**' in report and 'header line' in report
    assert 'read: fine' in report and 'pip: no network' in report
    assert 'exit code 3' in report and 'boom' in report
    assert 'killed after 3 s' in report and 'ZeroDivisionError' in report
    assert (tmp_path / 'last.log').read_text().strip() == 'seen'
    assert (tmp_path / 'check_no.log').exists()
    # the hung stage's whole process group was killed, its child too (gone, or a zombie
    # until the init process reaps the orphan)
    stat = f'/proc/{int(child.read_text())}/stat'
    time.sleep(0.5)
    assert not osp.exists(stat) or open(stat).read().rsplit(')', 1)[1].split()[0] == 'Z'
    assert logged[-1].startswith('[gpu_check] last: passed')
    assert gpu_check.run_check(stages[:1], str(tmp_path), str(tmp_path), log=logged.append) == 0


def test_junit_summary_of_a_real_pytest_run(tmp_path):
    (tmp_path / 'test_sample.py').write_text(
        'import pytest\n'
        'def test_ok(): pass\n'
        'def test_bad(): assert 1 == 2, "one is not two"\n'
        '@pytest.mark.skip(reason="needs mmcv CUDA ops")\n'
        'def test_skipped(): pass\n')
    xml = tmp_path / 'out.xml'
    subprocess.run([PY, '-m', 'pytest', str(tmp_path / 'test_sample.py'), '-q', '-p',
                    'no:cacheprovider', f'--junitxml={xml}', '--rootdir', str(tmp_path)],
                   cwd=tmp_path, capture_output=True, timeout=120)
    ok, text = gpu_check.junit_summary(str(xml))
    assert not ok
    assert text.splitlines()[0] == '1 passed, 1 failed, 1 skipped'
    assert 'test_bad: AssertionError: one is not two' in text
    assert '- skipped (1): needs mmcv CUDA ops' in text


def _scalars(work_dir, losses, memory=True, stamp='20260101_000000'):
    """A training log in mmengine's layout: <timestamp>/vis_data/scalars.json, one JSON line
    per logged iteration (plus a validation line without a loss)."""
    path = osp.join(work_dir, stamp, 'vis_data')
    os.makedirs(path)
    with open(osp.join(path, 'scalars.json'), 'w') as f:
        for step, loss in reversed(list(enumerate(losses, 1))):  # order is not relied on
            row = dict(lr=1e-3, loss=loss, time=0.1 * step, iter=step, step=step)
            if memory:
                row['memory'] = 100 + step
            f.write(json.dumps(row) + '\n')
        f.write(json.dumps(dict(mIoU=1.0, step=len(losses))) + '\n')


def test_loss_trend_reads_mmengine_scalars(tmp_path):
    losses = [3.0, 2.0, 2.5, 2.0, 1.5] + [1.0] * 10 + [0.5, 1.0, 0.5, 1.0, 0.5]
    _scalars(str(tmp_path / 'a'), losses)
    _scalars(str(tmp_path / 'a'), [9.0], stamp='20251231_235959')  # an earlier run's log
    trend = gpu_check.loss_trend(str(tmp_path / 'a'))
    assert trend['losses'] == losses
    assert trend['first'] == pytest.approx(2.2) and trend['last'] == pytest.approx(0.7)
    assert trend['down'] and trend['cuda_memory_mb'] == 120
    assert trend['s_per_iter'] == pytest.approx(1.05)
    ok, text = gpu_check.train_check(str(tmp_path / 'a'))('')
    assert ok and '2.200 (mean of the first 5) -> 0.700 (last 5): down' in text
    _scalars(str(tmp_path / 'b'), losses[::-1], memory=False)
    ok, text = gpu_check.train_check(str(tmp_path / 'b'))('')
    assert not ok and 'NOT down' in text and 'the run was not on CUDA' in text
    _scalars(str(tmp_path / 'c'), losses[:-1])  # 19 iterations
    assert not gpu_check.loss_trend(str(tmp_path / 'c'))['down']
    _scalars(str(tmp_path / 'd'), losses[:-1] + [math.nan])
    assert not gpu_check.loss_trend(str(tmp_path / 'd'))['down']


def test_profile_check_names_groups_where_auto_is_slow(tmp_path):
    def row(name, auto, fact, merged, pick):
        return dict(names=[name, name + 'b'], count=2, weight_shape=[8, 8, 3, 3],
                    input_shape=[2, 8, 16, 16], memory_format='contiguous', auto={'FLoRA': pick},
                    ms={'limit': 1.0, 'FLoRA/auto': auto, 'FLoRA/factorized': fact,
                        'FLoRA/merged': merged})
    path = tmp_path / 'profile.json'
    report = dict(methods={'FLoRA': {}}, backbone_steps={'limit': [1.0], 'FLoRA': [1.2]},
                  rows=[row('good', 2.0, 2.0, 3.0, 'factorized'),
                        row('bad', 3.0, 1.0, 3.0, 'merged')])
    path.write_text(json.dumps(report))
    ok, text = gpu_check.profile_check(str(path))('')
    assert ok  # information, not a failure
    assert 'in 1 group(s)' in text
    assert '- FLoRA, bad (x2): auto picks merged, 3.00 ms; factorized 1.00 ms' in text
    assert 'good (x2)' not in text and '| bad ... |' in text


def test_table4_check_puts_absolute_figures_beside_the_paper(tmp_path):
    def run(step, peak_gib):
        return dict(samples_s=[step], step_s=step, backbone_trainable=10, adapter_params=5,
                    memory=dict(before=2**30, peak=peak_gib * 2**30,
                                added=(peak_gib - 1) * 2**30))
    runs = {'ade20k/lora/cp0': [run(0.5, 12.0)], 'ade20k/flora/cp0': [run(0.55, 13.0)]}
    path = tmp_path / 'table4.json'
    path.write_text(json.dumps(dict(runs=runs, summary=table4.summarize(runs))))
    ok, text = gpu_check.table4_check(str(path))('')
    assert ok
    assert '| flora | 0.550 | 13.00 | 12.00 | 60 | 13.10 |' in text
    assert '| lora | 0.500 | 12.00 | 11.00 | 53 | 11.94 |' in text
    assert 'flora_step_vs_lora 1.100' in text  # the ratio table too
    runs['ade20k/lora/cp0'].append({'error': 'CUDA out of memory'})
    path.write_text(json.dumps(dict(runs=runs, summary=table4.summarize(runs))))
    ok, text = gpu_check.table4_check(str(path))('')
    assert not ok and 'CUDA out of memory' in text


def test_default_stages_run_20_iterations_of_each_demo(tmp_path):
    stages = {s.name: s for s in gpu_check.default_stages(REPO, str(tmp_path), 'data')}
    assert list(stages) == ['suite', 'train/upernet', 'train/mask-rcnn', 'train/oriented-rcnn',
                            'profile', 'table4']
    for model in ('upernet', 'mask-rcnn', 'oriented-rcnn'):
        stage = stages[f'train/{model}']
        assert stage.env == dict(FLORA_MM_TINY_DATA='data', CUDA_VISIBLE_DEVICES='0')
        cmd = [str(c) for c in stage.cmd]
        assert cmd[1] == 'tools/train.py' and '--amp' in cmd
        cfg = Config.fromfile(osp.join(REPO, cmd[2]))
        options = cmd[cmd.index('--cfg-options') + 1:]
        cfg.merge_from_dict(dict(option.split('=', 1) for option in options))
        loop = cfg.train_cfg
        if 'max_iters' in loop:
            iters = int(loop.max_iters)
            assert int(loop.val_interval) > iters
        else:  # 16 tiny training images, the config's batch
            iters = int(loop.max_epochs) * math.ceil(16 / cfg.train_dataloader.batch_size)
            assert int(loop.val_interval) > int(loop.max_epochs)
            cosine = cfg.param_scheduler[1]
            assert int(cosine.T_max) == int(cosine.end) == int(loop.max_epochs)
        assert iters == gpu_check.ITERS
        assert int(cfg.default_hooks.logger.interval) == 1
    for name in ('profile', 'table4'):
        cmd = [str(c) for c in stages[name].cmd]
        assert osp.isfile(osp.join(REPO, cmd[1]))
        assert 'cuda' in cmd
    profile = [str(c) for c in stages['profile'].cmd]
    for label in ('FLoRA', 'LoRA'):
        (config, ) = [c.split('=', 1)[1] for c in profile if c.startswith(f'{label}=')]
        assert osp.isfile(osp.join(REPO, config)) and 'mask-rcnn_convnextv2-l' in config
    assert profile[profile.index('--input-size') + 1:][:2] == ['800', '1333']

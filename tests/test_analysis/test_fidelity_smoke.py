"""A reduced fidelity run through the real mmdet and mmrotate pipelines: the reports are
written and numeric, and the AdapterAnalysisHook curves behave (FLoRA / LoRA start at exactly 0
and grow).

Asserts nothing about which method wins.
"""
import json
import math
import os.path as osp

import pytest

from flora_mm.analysis.curves import read_curves
from flora_mm.analysis.fidelity import QUICK, Settings, run_experiment

CONFIGS = osp.join(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))), 'configs')
pytestmark = pytest.mark.slow

SETTINGS = dict(QUICK, tasks=['scenes', 'topdown'], cells=['frozen', 'lora@b1', 'flora@b1'],
                iters=6, pretrain_iters=4, num_train=4)
# LayerNorm weight + bias on the outputs of ConvNeXt-V2-atto stages 1-3 (widths 80, 160, 320;
# out_indices of both fidelity configs): trained with the neck by every method.
OUTPUT_NORM_PARAMS = 2 * (80 + 160 + 320)


@pytest.fixture(scope='module')
def fidelity_run(tmp_path_factory):
    root = tmp_path_factory.mktemp('fidelity')
    summary = run_experiment(Settings(**SETTINGS), str(root), str(root / 'out'), CONFIGS)
    return root, summary


def test_reports_are_written_and_numeric(fidelity_run):
    root, summary = fidelity_run
    out = root / 'out'
    for name in ('results.json', 'table.md', 'results.png', 'curves_scenes.png',
                 'curves_topdown.png'):
        assert (out / name).stat().st_size > 0, name
    saved = json.loads((out / 'results.json').read_text())
    budgets = saved['budgets']['b1']
    # LoRA's rank was solved to FLoRA's budget: within one LoRA rank step of it.
    assert abs(budgets['lora']['params'] - budgets['budget']) < budgets['lora']['params'] / \
        budgets['lora']['rank']
    for task in ('scenes', 'topdown'):
        cells = saved['cells'][task]
        assert set(cells) == {'frozen', 'lora@b1', 'flora@b1'}
        for cell in cells.values():
            assert 0.0 <= cell['mean'] <= 100.0 and cell['n'] == 1
        assert cells['frozen']['trainable_backbone'] == OUTPUT_NORM_PARAMS
        assert cells['flora@b1']['trainable_backbone'] == \
            budgets['flora']['params'] + OUTPUT_NORM_PARAMS
        assert cells['flora@b1']['relative_update_mean'] > 0
        assert saved['ttest_flora_vs_lora'][task]['b1']['n'] == 1
    table = (out / 'table.md').read_text()
    assert 'FLoRA (r=4, budget b1)' in table and 'Base (frozen backbone)' in table
    assert saved['pretrain']['pixel_acc'] > 0


def test_analysis_hook_curves_start_at_zero_and_grow(fidelity_run):
    root, _ = fidelity_run
    for cell in ('flora@b1', 'lora@b1'):
        result = json.loads((root / 'out' / 'runs' / 'scenes' / cell / 'seed0' /
                             'result.json').read_text())
        data = read_curves(result['log_dir'])
        steps, norms = data['delta_norm']
        _, amps = data['amplification']
        assert steps == [0, 4]  # before training, then every 4 iterations (quick mode)
        assert norms[0] == 0.0 and amps[0] == 0.0  # zero core / zero B at initialization
        assert norms[-1] > 0 and math.isfinite(norms[-1])
        assert amps[-1] > 0 and math.isfinite(amps[-1])
        stage = read_curves(result['log_dir'], 'stage3')['delta_norm'][1]
        assert stage[-1] > 0


def test_finished_runs_are_reused(fidelity_run):
    root, summary = fidelity_run
    logged = []
    again = run_experiment(Settings(**SETTINGS), str(root), str(root / 'out'), CONFIGS,
                           log=logged.append)
    assert not any(line.startswith('[fidelity]') for line in logged)  # nothing trained again
    assert json.dumps(again['cells'], sort_keys=True) == json.dumps(summary['cells'],
                                                                    sort_keys=True)

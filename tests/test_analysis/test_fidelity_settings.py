"""The fidelity experiment's cells, run order, cache keys and schedule rescaling (no training)."""
import os.path as osp

import pytest
from mmengine.config import Config

from flora_mm.analysis.fidelity import Cell, Settings
from flora_mm.analysis.fidelity.runner import load_task_config, set_iters

CONFIGS = osp.join(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))), 'configs')
BUDGETS = {'b1': {'flora': {'rank': 4}, 'lora': {'rank': 5}, 'dora': {'rank': 3}}}


@pytest.mark.parametrize('name,cell', [
    ('frozen', Cell('frozen')), ('lora@b1', Cell('lora', 'b1')),
    ('flora@b2-s0.4', Cell('flora', 'b2', 0.4)), ('flora@b2-s1', Cell('flora', 'b2', 1.0))])
def test_cell_names_round_trip(name, cell):
    assert Cell.parse(name) == cell and str(cell) == name


@pytest.mark.parametrize('name,match', [
    ('lora', 'needs a budget'), ('frozen@b1', 'has no budget'), ('lora@b1-s2', 'only flora'),
    ('flora@x1', 'is not like'), ('qlora@b1', 'is not one of')])
def test_bad_cell_names(name, match):
    with pytest.raises(ValueError, match=match):
        Cell.parse(name)


def test_cell_adapters():
    assert Cell('bitfit').adapter(BUDGETS, 2, 4.0) == {'type': 'BitFit'}
    assert Cell('lora', 'b1').adapter(BUDGETS, 2, 4.0) == {'type': 'LoRA', 'rank': 5, 'alpha': 5}
    assert Cell('flora', 'b1').adapter(BUDGETS, 2, 4.0) == {
        'type': 'FLoRA', 'rank': 4, 'kernel_rank': 2, 'scale': 4.0}
    assert Cell('flora', 'b1', 0.4).adapter(BUDGETS, 1, 4.0)['scale'] == 0.4


def test_run_order_and_sweep():
    settings = Settings(seeds=[0, 1], tasks=['scenes'], cells=['lora@b2', 'frozen', 'lora@b1',
                                                                'flora@b1'], sweep_scale=True)
    order = [(str(cell), seed) for _, cell, seed in settings.run_order()]
    sweep = ['flora@b1-s0.04', 'flora@b1-s0.4']
    assert order == ([('flora@b1', 0), ('lora@b1', 0), ('flora@b1', 1), ('lora@b1', 1),
                      ('frozen', 0), ('frozen', 1)]
                     + [(c, 0) for c in sweep + ['flora@b2-s0.04', 'flora@b2-s0.4']]
                     + [(c, 1) for c in sweep + ['flora@b2-s0.04', 'flora@b2-s0.4']]
                     + [('lora@b2', 0), ('lora@b2', 1)])
    with pytest.raises(ValueError, match="budget 'b3'"):
        Settings(cells=['lora@b3'])


def test_run_key_covers_what_changes_a_result():
    base = Settings()
    key = base.run_key('config text', {'type': 'LoRA', 'rank': 5}, 0)
    # which runs to do does not change a run's result ...
    assert Settings(seeds=[7], cells=['frozen'], sweep_scale=True).run_key(
        'config text', {'type': 'LoRA', 'rank': 5}, 0) == key
    # ... everything else does
    changed = [Settings(iters=10), Settings(lr=1e-3), Settings(num_train=8),
               Settings(pretrain_batch=8), Settings(analysis_interval=5)]
    keys = {s.run_key('config text', {'type': 'LoRA', 'rank': 5}, 0) for s in changed}
    keys |= {base.run_key('other config', {'type': 'LoRA', 'rank': 5}, 0),
             base.run_key('config text', {'type': 'LoRA', 'rank': 6}, 0),
             base.run_key('config text', {'type': 'LoRA', 'rank': 5}, 1)}
    assert len(keys) == 8 and key not in keys


@pytest.mark.parametrize('task', ['scenes', 'topdown'])
def test_configs_own_the_schedule(task):
    cfg = load_task_config(task, CONFIGS)
    assert cfg.train_cfg.max_iters == 400
    assert [(s.begin, s.end) for s in cfg.param_scheduler] == [(0, 26), (26, 400)]
    assert cfg.optim_wrapper.optimizer.lr == 2e-3 and cfg.train_dataloader.batch_size == 4
    assert cfg.train_dataloader.sampler.type == 'InfiniteSampler'
    assert 'targets' not in cfg.model.backbone.adapter  # every conv / linear (the default)
    set_iters(cfg, 6)
    assert cfg.train_cfg.max_iters == 6
    assert [(s.begin, s.end) for s in cfg.param_scheduler] == [(0, 1), (1, 6)]


def test_set_iters_rescales_in_proportion():
    cfg = Config(dict(train_cfg=dict(max_iters=400), param_scheduler=[
        dict(begin=0, end=26), dict(begin=26, end=400)]))
    set_iters(cfg, 100)
    assert [(s.begin, s.end) for s in cfg.param_scheduler] == [(0, 6), (6, 100)]

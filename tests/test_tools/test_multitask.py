"""MultiTaskModel: one ConvNeXt-V2 base for Mask R-CNN, UperNet and Oriented R-CNN.

After every switch a task must predict exactly what its separately loaded model predicts,
while every task runs the very same backbone module (base weights stored once).
"""
import json

import pytest
import torch

from conftest import val_images

pytestmark = pytest.mark.slow


@pytest.fixture(scope='module')
def multi(task_checkpoints):
    from flora_mm.apis import MultiTaskModel
    model = MultiTaskModel()
    kinds = dict(det='adapter_only', seg='full', rot='adapter_only')
    for task, spec in task_checkpoints.items():
        model.add_task(task, spec['config'], spec[kinds[task]], spec['cfg_options'])
    return model


def _features(model, x):
    with torch.no_grad():
        return model.extract_feat(x)


def test_switching_matches_separate_models(multi, task_checkpoints, tiny_all, tmp_path):
    from flora_mm.apis import build_inferencer, infer
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    separate = {task: build_inferencer(spec['config'], spec['full'],
                                       cfg_options=spec['cfg_options']).model
                for task, spec in task_checkpoints.items()}
    for task in ('det', 'seg', 'rot', 'det', 'seg'):
        model = multi.model(task)
        assert multi.active == task
        for ours, theirs in zip(_features(model, x), _features(separate[task], x)):
            torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    # the adapter sets really differ: another task's adapters change the features
    with torch.no_grad():
        det_feat = multi.model('det').backbone(x)[-1]
        seg_feat = multi.model('seg').backbone(x)[-1]
    assert not torch.allclose(det_feat, seg_feat)
    # end to end through the inferencers, after switching away and back
    multi.switch('seg')
    spec = task_checkpoints['rot']
    images = val_images(tiny_all, 'rot')
    ours = multi.infer('rot', images, str(tmp_path / 'multi'), score_thr=0.)
    theirs = infer(spec['config'], spec['full'], images, str(tmp_path / 'single'), score_thr=0.,
                   cfg_options=spec['cfg_options'])
    for a, b in zip(ours, theirs):
        assert json.load(open(a['json'])) == json.load(open(b['json']))


def test_base_weights_are_shared(multi):
    backbone = multi.backbone
    models = [multi.model(task) for task in multi.tasks]
    assert all(model.backbone is backbone for model in models)
    base = {p.untyped_storage().data_ptr() for p in backbone.parameters() if not p.requires_grad}
    heads = [{p.untyped_storage().data_ptr() for n, p in model.named_parameters()
              if not n.startswith('backbone.')} for model in models]
    assert base and not any(base & h for h in heads)
    assert not (heads[0] & heads[1]) and not (heads[1] & heads[2])
    # a task's own backbone tensors are the adapters (and trainable norms), a small fraction
    own = sum(v.numel() for v in multi._tasks['det'].state.values())
    assert 0 < own < 0.2 * sum(p.numel() for p in backbone.parameters())
    assert multi.switch(multi.active) == 0.


def test_incompatible_tasks_are_refused(multi, task_checkpoints, tmp_path):
    spec = task_checkpoints['seg']
    options = dict(spec['cfg_options'], **{'model.backbone.adapter.rank': 8})
    with pytest.raises(ValueError, match=r"differs from the shared one.*\['adapter'\]"):
        multi.add_task('seg-r8', spec['config'], spec['full'], options)
    other_base = tmp_path / 'other_base.pth'
    ckpt = torch.load(spec['full'], weights_only=False)
    ckpt['state_dict']['backbone.stem.0.weight'] += 1
    torch.save(ckpt, other_base)
    with pytest.raises(ValueError, match='frozen weights differ.*backbone.stem.0.weight'):
        multi.add_task('seg2', spec['config'], str(other_base), spec['cfg_options'])
    with pytest.raises(ValueError, match='exists already'):
        multi.add_task('seg', spec['config'], spec['full'], spec['cfg_options'])
    with pytest.raises(KeyError, match='unknown task'):
        multi.switch('nope')


def test_benchmark_reports_one_base_for_all_tasks(task_checkpoints, pretrained, tmp_path):
    """The benchmark's memory accounting: separate models hold the frozen base once per task."""
    from flora_mm.analysis.multitask_benchmark import run_benchmark
    tasks = [dict(name=t, config=s['config'], checkpoint=s['adapter_only'],
                  cfg_options=s['cfg_options']) for t, s in task_checkpoints.items()]
    report = run_benchmark(tasks, str(tmp_path / 'multitask.json'), switches=6)
    assert json.load(open(tmp_path / 'multitask.json')) == report
    shared, separate = report['results']['shared'], report['results']['separate']
    frozen = torch.load(pretrained['atto'], weights_only=True)
    base_mb = sum(v.numel() * v.element_size() for k, v in frozen.items()
                  if k.startswith(('stem.', 'stages.'))) / 2**20  # timm's head is not built
    # 3 separate models hold 2 more copies of the base and of one task's backbone tensors
    saved = separate['tensor_mb'] - shared['tensor_mb']
    assert saved == pytest.approx(2 * (base_mb + shared['adapter_tensors_mb']), rel=1e-3)
    assert shared['switch_ms']['median'] > 0

"""One frozen base for several tasks vs one model per task: switch time and memory.

Fine-tuned checkpoints (adapter-only, as FLoRAHook writes them) are made for each task config
from the same pretrained backbone, with randomly perturbed adapters
(flora_mm.testing.checkpoints.make_checkpoint); then flora_mm.analysis.multitask_benchmark loads all
tasks once as a MultiTaskModel and once as separate models, each in a fresh process.

    python tools/analysis/benchmark_multitask.py                     # Table-1 configs, ConvNeXt-V2-L
    python tools/analysis/benchmark_multitask.py --configs configs/demo/*.py   # atto, seconds

Prints a table and writes work_dirs/benchmarks/multitask.json.
"""
import argparse
import os
import os.path as osp

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DEFAULT_CONFIGS = [osp.join(REPO, 'configs', 'flora', path) for path in (
    'mask-rcnn/mask-rcnn_convnextv2-l-flora-r42_fpn_1x_coco.py',
    'upernet/upernet_convnextv2-l-flora-r42_8xb2-160k_ade20k-512x512.py',
    'oriented-rcnn/oriented-rcnn-le90_convnextv2-l-flora-r42_fpn_1x_dota.py')]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--configs', nargs='+', default=DEFAULT_CONFIGS,
                        help='task configs sharing one backbone config')
    parser.add_argument('--pretrained', help='backbone weights shared by the tasks (default: '
                        'random timm weights of the configs\' arch, written once to '
                        'work_dirs/benchmarks/)')
    parser.add_argument('--switches', type=int, default=30)
    parser.add_argument('--work-dir', default='work_dirs/benchmarks/multitask')
    parser.add_argument('--out', default='work_dirs/benchmarks/multitask.json')
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    import torch

    from flora_mm.adapters import atomic_write
    from flora_mm.analysis.multitask_benchmark import run_benchmark
    from flora_mm.apis import load_config
    from flora_mm.testing.checkpoints import make_checkpoint
    arch = load_config(args.configs[0]).model.backbone.arch
    pretrained = args.pretrained
    if pretrained is None:
        import timm
        pretrained = osp.join(osp.dirname(args.out), f'convnextv2_{arch}_random.pth')
        if not osp.isfile(pretrained):
            torch.manual_seed(0)
            state = timm.create_model(f'convnextv2_{arch}').state_dict()
            atomic_write(pretrained, lambda tmp: torch.save(state, tmp))
    tasks = []
    for i, config in enumerate(args.configs):
        name = osp.splitext(osp.basename(config))[0].split('_')[0]
        options = {'model.backbone.pretrained': osp.abspath(pretrained)}
        checkpoint = osp.join(args.work_dir, f'{name}.pth')
        os.makedirs(args.work_dir, exist_ok=True)
        make_checkpoint(config, checkpoint, options, adapter_only=True, seed=i)
        tasks.append(dict(name=name, config=config, checkpoint=checkpoint,
                          cfg_options=options))
    run_benchmark(tasks, args.out, args.switches)


if __name__ == '__main__':
    main()

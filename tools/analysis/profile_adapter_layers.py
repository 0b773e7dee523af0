"""Per-layer profile of adapted layers at a config's real input size (where the time goes).

Times forward + backward of every distinct adapted layer of the backbone (grouped by weight
geometry and input shape) for the frozen base (``limit``) and each config's adapter method in
every forward mode, and the mode ``auto`` picks; then whole backbones (same base weights) in
one process, interleaved, for the in-network ratio. Prints tables and writes JSON. See
``flora_mm.analysis.layer_profile``.

Example (the ADE20K UperNet of Table 4, batch 2 at 512x512):
    python tools/analysis/profile_adapter_layers.py \
        FLoRA=configs/flora/upernet/upernet_convnextv2-l-flora-r42_8xb2-160k_ade20k-512x512.py \
        LoRA=configs/baselines/upernet/upernet_convnextv2-l-lora-r42_8xb2-160k_ade20k-512x512.py \
        --input-size 512 512 --batch-size 2
"""
import argparse

from flora_mm.analysis.layer_profile import format_profile, format_steps, profile_configs
from flora_mm.analysis.measure import write_json


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('configs', nargs='+', metavar='LABEL=CONFIG',
                        help='configs that differ in the adapter method only')
    parser.add_argument('--input-size', nargs=2, type=int, default=[512, 512], metavar=('H', 'W'))
    parser.add_argument('--batch-size', type=int, default=1)
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--device', default='cpu', help="'cpu' or 'cuda'")
    parser.add_argument('--amp', default=None, choices=['float16', 'bfloat16'],
                        help='time under autocast to this dtype (how --amp trains)')
    parser.add_argument('--out', default='work_dirs/benchmarks/layer_profile.json')
    args = parser.parse_args(argv)
    try:
        args.configs = dict(item.split('=', 1) for item in args.configs)
    except ValueError:
        parser.error(f'configs must be LABEL=CONFIG, got {args.configs}')
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    report = profile_configs(args.configs, args.input_size, args.batch_size, args.repeats,
                             device=args.device, amp=args.amp)
    print(format_profile(report['rows'], list(args.configs)))
    print('\n' + format_steps(report['backbone_steps']))
    write_json(args.out, dict(report, input_size=args.input_size, batch_size=args.batch_size,
                              device=args.device, amp=args.amp))
    print(f'\nwrote {args.out}')


if __name__ == '__main__':
    main()

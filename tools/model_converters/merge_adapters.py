"""Merge trained adapters into the base weights.

Usage: python tools/model_converters/merge_adapters.py CONFIG CKPT OUT [--cfg-options ...]

Writes OUT, a plain checkpoint that the un-adapted model (the same config with
``model.backbone.adapter=None`` and without FLoRAHook) loads strictly. CKPT may be a full or an
adapter-only checkpoint. OUT is written to a temporary file and renamed into place.
"""
import argparse
import sys

from mmengine.config import DictAction


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Merge adapters into the base weights')
    parser.add_argument('config', help='the training config')
    parser.add_argument('checkpoint', help='a checkpoint written by training with it')
    parser.add_argument('out', help='output checkpoint (plain model)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value pairs')
    parser.add_argument('--no-verify', action='store_true',
                        help='skip loading the result into the plain model')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from flora_mm.apis.merge import merge_checkpoint
    try:
        info = merge_checkpoint(args.config, args.checkpoint, args.out, args.cfg_options,
                                verify=not args.no_verify)
    except (ValueError, FileNotFoundError) as err:
        print(f'merge_adapters: error: {err}', file=sys.stderr)
        return 1
    print(f'merged {info["merged_layers"]} adapted layers; wrote {info["num_tensors"]} tensors '
          f'to {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())

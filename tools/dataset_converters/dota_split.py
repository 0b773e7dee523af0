"""Split raw DOTA-v1.0 into the 1024 px patches of configs/_base_/datasets/dota.py.

    python tools/dataset_converters/dota_split.py data/DOTA data/split_ss_dota \
        [--splits train val] [--preset ss|ms] [--nproc 8]

Reads the layout of the DOTA download (``RAW/{train,val,test}/images/*.png``,
``RAW/{train,val}/labelTxt/*.txt``) and writes ``OUT/<split>/{images,annfiles}``. Splits:
``train``, ``val``, ``trainval`` (both into one folder, for a test-server submission) and
``test`` (no labels: empty annfiles). Each split folder is written completely or not at all;
an existing one is left alone (remove it to split again).
"""
import argparse
import os.path as osp

from flora_mm.datasets import PRESETS, split_dota

SOURCES = {'train': ('train', ), 'val': ('val', ), 'trainval': ('train', 'val'),
           'test': ('test', )}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('raw_root', help='the DOTA-v1.0 download, e.g. data/DOTA')
    parser.add_argument('out_root', help='output root, e.g. data/split_ss_dota')
    parser.add_argument('--splits', nargs='+', default=['train', 'val'], choices=list(SOURCES))
    parser.add_argument('--preset', default='ss', choices=sorted(PRESETS),
                        help='ss: 1024 px, gap 200; ms: 1024 px, gap 500, rates 0.5/1/1.5')
    parser.add_argument('--nproc', type=int, default=1, help='worker processes')
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    for split in args.splits:
        out_dir = osp.join(args.out_root, split)
        if osp.exists(out_dir):
            print(f'[dota_split] {out_dir} exists, skipped')
            continue
        sources = SOURCES[split]
        summary = split_dota(
            [osp.join(args.raw_root, s, 'images') for s in sources],
            None if split == 'test' else [osp.join(args.raw_root, s, 'labelTxt')
                                          for s in sources],
            out_dir, preset=args.preset, nproc=args.nproc)
        print(f'[dota_split] {split}: {summary["images"]} images -> {summary["patches"]} '
              f'patches, {summary["objects"]} objects -> {summary["patch_objects"]} patch '
              f'objects in {out_dir}')


if __name__ == '__main__':
    main()

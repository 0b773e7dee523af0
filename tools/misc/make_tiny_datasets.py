"""Write the tiny COCO / ADE20K / DOTA sets used by configs/demo and the end-to-end tests.

    python tools/misc/make_tiny_datasets.py [--root data/tiny] [--seed 0]

Output (deterministic for a given seed and sizes):
    ROOT/coco                        COCO-2017 instances json + jpg
    ROOT/ade/ADEChallengeData2016    ADE20K jpg + 150-class png label maps
    ROOT/split_ss_dota               DOTA png + 8-point txt annotations
"""
import argparse
import json

from flora_mm.testing.tiny_datasets import make_all


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--root', default='data/tiny', help='output folder')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--num-train', type=int, default=16)
    parser.add_argument('--num-val', type=int, default=8)
    parser.add_argument('--img-size', type=int, default=128)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    summary = make_all(args.root, seed=args.seed, num_train=args.num_train,
                       num_val=args.num_val, img_size=args.img_size)
    print(json.dumps(summary, indent=1))


if __name__ == '__main__':
    main()

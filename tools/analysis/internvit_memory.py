"""Table 2 on paper: ranks, trainable parameters and per-GPU memory of every column.

Builds InternViT-6B on the meta device (no weights allocated), solves the LoRA / DoRA / FLoRA
ranks for the paper's budgets, counts what trains, and estimates per-GPU memory under FSDP
(the configs' strategy) and plain DDP (fp32). Prints a markdown table and writes JSON.

Example:
    python tools/analysis/internvit_memory.py --gpus 8 --gpu-gib 80 \
        --out work_dirs/benchmarks/internvit_memory.json
"""
import argparse
import json

from flora_mm.adapters import atomic_write
from flora_mm.analysis.table2 import format_markdown, memory_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--gpus', type=int, default=8, help='data-parallel GPUs')
    parser.add_argument('--gpu-gib', type=float, default=80., help='memory of one GPU (GiB)')
    parser.add_argument('--out', default='work_dirs/benchmarks/internvit_memory.json')
    args = parser.parse_args()
    rows = memory_table(gpus=args.gpus, gpu_gib=args.gpu_gib)
    print(format_markdown(rows, args.gpu_gib))

    def write(path):
        with open(path, 'w') as f:
            json.dump(dict(gpus=args.gpus, gpu_gib=args.gpu_gib, columns=rows), f, indent=1)

    atomic_write(args.out, write)
    print(f'written {args.out}')


if __name__ == '__main__':
    main()

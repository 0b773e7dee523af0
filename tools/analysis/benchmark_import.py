"""Import time of ``flora_mm.adapters`` (the light core) against torch alone, and of the
OpenMMLab glue, each statement in a fresh interpreter (see ``flora_mm.analysis.import_time``).

Example:
    python tools/analysis/benchmark_import.py --repeats 7
"""
import argparse

from flora_mm.analysis.import_time import format_table, measure_imports
from flora_mm.analysis.measure import write_json


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--out', default='work_dirs/benchmarks/import_time.json')
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    report = measure_imports(repeats=args.repeats)
    print(format_table(report['rows']))
    write_json(args.out, report)
    print(f'\nwrote {args.out}')


if __name__ == '__main__':
    main()

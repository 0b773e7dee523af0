"""Import time of flora_mm's entry points against torch's, each in a fresh interpreter.

Every statement runs in its own ``python -c`` (nothing cached in the process; the
interpreter's start-up and the statement's untimed setup are outside the timed span),
statements interleaved and rotated per repeat so that a drift of the machine hits all of them
alike. Wall time and the process's CPU time are both kept: on a shared machine the CPU time is
the steadier of the two. What ``flora_mm.adapters`` adds to torch is timed directly too, with
torch imported in the setup: the difference of two medians is within torch's own spread.
"""
from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys

from .measure import rotated

# label -> (untimed setup, timed statement); ``flora_mm.adapters`` should cost little beyond
# ``torch``.
STATEMENTS = {
    'torch': ('', 'import torch'),
    'flora_mm.adapters': ('', 'import flora_mm.adapters'),
    'flora_mm.adapters after torch': ('import torch', 'import flora_mm.adapters'),
    'mmengine': ('', 'import mmengine'),
    'mmengine + flora_mm (custom_imports)': ('', 'import mmengine, flora_mm'),
    'mmengine + flora_mm modules registered':
        ('', 'import mmengine, flora_mm.registry as r; r.MODELS.import_from_location(); '
             'r.HOOKS.import_from_location()'),
}
TIMER = ('{}\nimport time\nwall, cpu = time.perf_counter(), time.process_time()\n{}\n'
         'print(time.perf_counter() - wall, time.process_time() - cpu)')


def time_import(setup: str, statement: str, env: dict | None = None) -> tuple[float, float]:
    """Wall and CPU seconds ``statement`` takes in a fresh interpreter after ``setup``."""
    out = subprocess.run([sys.executable, '-c', TIMER.format(setup, statement)], check=True,
                         capture_output=True, text=True, env=env).stdout
    wall, cpu = out.strip().splitlines()[-1].split()
    return float(wall), float(cpu)


def measure_imports(statements: dict[str, tuple[str, str]] = STATEMENTS, repeats: int = 5,
                    env: dict | None = None) -> dict:
    """Time each statement ``repeats`` times, interleaved.

    Returns:
        ``{'rows': {label: {'setup', 'statement', 'wall_s', 'cpu_s', 'median_wall_s',
        'median_cpu_s'}}, 'environment': {...}}``.
    """
    samples: dict[str, list[tuple[float, float]]] = {label: [] for label in statements}
    for repeat in range(repeats):
        for label in rotated(list(statements), repeat):
            samples[label].append(time_import(*statements[label], env))
    rows = {}
    for label, times in samples.items():
        wall, cpu = [t[0] for t in times], [t[1] for t in times]
        setup, statement = statements[label]
        rows[label] = dict(setup=setup, statement=statement, wall_s=wall, cpu_s=cpu,
                           median_wall_s=statistics.median(wall),
                           median_cpu_s=statistics.median(cpu))
    return dict(rows=rows, environment=dict(python=platform.python_version(),
                                            machine=platform.machine(), cpus=os.cpu_count(),
                                            load_average=os.getloadavg(), repeats=repeats))


def format_table(rows: dict) -> str:
    """A markdown table of the medians (seconds)."""
    lines = ['| timed | after (untimed) | wall s | CPU s |', '|---|---|---:|---:|']
    for row in rows.values():
        setup = f"`{row['setup']}`" if row['setup'] else ''
        lines.append(f"| `{row['statement']}` | {setup} | {row['median_wall_s']:.3f} | "
                     f"{row['median_cpu_s']:.3f} |")
    return '\n'.join(lines)

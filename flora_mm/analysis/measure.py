"""What the benchmarks share: peak memory of a block of work, interleaving, medians, JSON.

Peak memory on CPU is read from the kernel: ``/proc/self/clear_refs`` resets the peak resident
set size (``VmHWM``) to the current one, so ``VmHWM`` after the work minus ``VmRSS`` before it
is what the work added on top of what was resident (activations, gradients, optimizer state,
temporaries), as the OS sees it. tracemalloc cannot see torch's allocations, the CPU allocator
keeps no peak statistics, and ``ru_maxrss`` of a child inherits the parent's peak across
fork + exec, so run the measured work in a fresh process. Linux only. On CUDA the caching
allocator's statistics are used instead (``max_memory_allocated`` minus ``memory_allocated``).
"""
from __future__ import annotations

import contextlib
import gc
import json
import statistics
from typing import Iterator

import torch

from flora_mm.adapters import atomic_write


def _proc_status_kib(field: str) -> int:
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(f'{field}:'):
                return int(line.split()[1])
    raise RuntimeError(f'{field} missing from /proc/self/status')


@contextlib.contextmanager
def peak_memory(device: str | torch.device = 'cpu') -> Iterator[dict]:
    """Measure the peak memory the enclosed block adds.

    Args:
        device: ``'cpu'`` (process RSS, Linux) or a CUDA device (allocator statistics).

    Yields:
        A dict filled on exit with ``before`` (bytes resident at entry), ``peak`` (peak bytes
        during the block) and ``added`` (``peak - before``, at least 0).
    """
    device = torch.device(device)
    result: dict = {}
    gc.collect()
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        result['before'] = torch.cuda.memory_allocated(device)
    else:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')  # reset VmHWM to the current RSS
        result['before'] = _proc_status_kib('VmRSS') * 1024
    yield result
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
        result['peak'] = torch.cuda.max_memory_allocated(device)
    else:
        result['peak'] = _proc_status_kib('VmHWM') * 1024
    result['added'] = max(result['peak'] - result['before'], 0)


def rotated(items: list, shift: int) -> list:
    """``items`` started at index ``shift``: each repeat starts at another entry, so that no
    method always runs first (drifts of a shared machine hit all of them alike)."""
    shift %= len(items)
    return items[shift:] + items[:shift]


def median_ms(samples: list[float]) -> float:
    """Median of durations in seconds, in milliseconds."""
    return 1000 * statistics.median(samples)


def write_json(path: str, data: dict) -> None:
    """Write ``data`` as indented JSON through a temporary file renamed onto ``path``."""
    def dump(tmp: str) -> None:
        with open(tmp, 'w') as f:
            json.dump(data, f, indent=2)

    atomic_write(path, dump)


def _conv_backward_flop(*args, **kwargs) -> int:
    # aten.convolution_backward's shapes: ..., groups (9), output_mask (10); torch's formula
    # skips the groups for the weight gradient, counting it ``groups`` times
    from torch.utils import flop_counter
    groups, mask = args[9], args[10]

    def part(*only):
        return flop_counter.conv_backward_flop.__wrapped__(*args[:10], only, **kwargs)
    return part(mask[0], False, False) + part(False, mask[1], False) // groups


def mac_counter():
    """``torch.utils.flop_counter.FlopCounterMode`` counting grouped (depthwise) convs'
    weight gradients right (torch 2.14 counts them ``groups`` times). It counts matmuls,
    convs and attention, 2 FLOPs per multiply-accumulate, no elementwise op; its
    ``get_total_flops() // 2`` are MACs, ``get_flop_counts()`` has them per module."""
    import torch.utils.flop_counter as flop_counter
    return flop_counter.FlopCounterMode(
        display=False, custom_mapping={torch.ops.aten.convolution_backward: _conv_backward_flop})

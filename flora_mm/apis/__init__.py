"""Shared logic of flora_mm's tools (train / test / merge), importable and testable."""
from .entrypoints import (build_test_config, build_train_config, enable_amp, parse_test_args,
                          parse_train_args, run_test, run_train)
from .launch import build_runner, load_config, register_task_modules, setup_cpu_distributed

__all__ = [
    'build_runner', 'build_test_config', 'build_train_config', 'enable_amp', 'load_config',
    'parse_test_args', 'parse_train_args', 'register_task_modules', 'run_test', 'run_train',
    'setup_cpu_distributed'
]

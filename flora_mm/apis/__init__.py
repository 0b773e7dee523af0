"""Shared logic of flora_mm's tools (train / test / merge), importable and testable."""
from .entrypoints import parse_test_args, parse_train_args, test, test_config, train, train_config
from .launch import build_runner, load_config, register_task_modules, setup_cpu_distributed

__all__ = [
    'build_runner', 'load_config', 'parse_test_args', 'parse_train_args',
    'register_task_modules', 'setup_cpu_distributed', 'test', 'test_config', 'train',
    'train_config'
]

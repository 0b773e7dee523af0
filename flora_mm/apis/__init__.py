"""Shared logic of flora_mm's tools (train / test / merge / infer), importable and testable."""
from .entrypoints import (build_test_config, build_train_config, enable_amp, parse_test_args,
                          parse_train_args, run_test, run_train)
from .inference import build_inferencer, infer, run_inferencer
from .launch import (build_model, build_runner, close_distributed, load_config,
                     register_task_modules, setup_cpu_distributed)
from .multitask import MultiTaskModel

__all__ = [
    'MultiTaskModel', 'build_inferencer', 'build_model', 'build_runner', 'build_test_config',
    'build_train_config', 'close_distributed', 'enable_amp', 'infer', 'load_config',
    'parse_test_args', 'parse_train_args', 'register_task_modules', 'run_inferencer', 'run_test',
    'run_train', 'setup_cpu_distributed'
]

"""The versions of the stack that flora_mm's OpenMMLab parts need, checked where a part starts.

The adapter core (``flora_mm.adapters``) needs torch alone and checks nothing. The registries
and runner parts (:mod:`flora_mm.registry`) check torch and mmengine when imported, the
backbones (:mod:`flora_mm.models`) timm, the tools the downstream packages of their config
(:func:`flora_mm.apis.register_task_modules`), the DOTA splitter mmrotate.
"""
from .compat import version_problems

# import name -> PEP 440 specifier, from the oldest version known to work to the pinned one
# (requirements/constraints.txt). torch >= 2.6: the checkpoint loader's safe globals.
SUPPORTED = {
    'torch': '>=2.6,<2.15',
    'mmcv': '>=2.0.0,<=2.0.1',
    'mmengine': '>=0.10.0,<=0.10.7',
    'mmdet': '>=3.0.0,<=3.1.0',
    'mmseg': '>=1.2.0,<=1.2.2',
    'mmrotate': '>=1.0.0rc0,<=1.0.0rc1',
    'timm': '>=1.0.0,<1.1',
}
SETUP_HINT = ('build the supported stack with `bash tools/setup_env.sh` (flora_mm repository) '
              'or install the pins of its requirements/constraints.txt')


class UnsupportedStackError(RuntimeError):
    """A package that a flora_mm part needs is missing or outside its supported range."""


def stack_problems(*packages: str) -> list:
    """What is wrong with the installed ``packages`` (import names of :data:`SUPPORTED`)."""
    return version_problems({package: SUPPORTED[package] for package in packages})


def require(*packages: str, part: str) -> None:
    """Raise :class:`UnsupportedStackError` unless every one of ``packages`` is in range.

    Args:
        packages: Import names of :data:`SUPPORTED`.
        part: What needs them, for the message, e.g. ``'flora_mm.registry'``.
    """
    problems = stack_problems(*packages)
    if problems:
        raise UnsupportedStackError(
            f'{part} needs {"; ".join(problems)}: {SETUP_HINT}.')

"""flora_mm: FLoRA adapters for OpenMMLab dense vision.

``import flora_mm`` (what the configs' ``custom_imports`` do) applies the stack's compatibility
fixes, checks the mm* versions and registers flora_mm's modules. The adapter core,
``flora_mm.adapters``, needs only torch and works without any OpenMMLab package installed.
"""
import importlib.util

from .version import __version__

__all__ = ['__version__']

# (minimum, maximum) inclusive, as the pinned stack in requirements/constraints.txt fits together.
SUPPORTED_VERSIONS = {
    'mmcv': ('2.0.0', '2.0.1'),
    'mmengine': ('0.10.0', '0.10.7'),
    'mmdet': ('3.0.0', '3.1.0'),
    'mmseg': ('1.2.0', '1.2.2'),
}


def check_versions() -> None:
    """Fail with a clear message when an installed mm* package is out of the supported range."""
    from mmengine.utils import digit_version
    for package, (low, high) in SUPPORTED_VERSIONS.items():
        if importlib.util.find_spec(package) is None:
            continue
        version = importlib.import_module(package).__version__
        if not digit_version(low) <= digit_version(version) <= digit_version(high):
            raise RuntimeError(
                f'{package}=={version} is incompatible with flora_mm {__version__}: '
                f'it needs {low} <= {package} <= {high}. '
                'Run `bash tools/setup_env.sh` to build the supported stack.')


if importlib.util.find_spec('mmengine') is not None:
    from .compat import apply_compat
    apply_compat()
    check_versions()
    from . import engine, models  # noqa: F401,E402  (register modules)

"""flora_mm: FLoRA adapters for OpenMMLab dense vision.

``import flora_mm`` (what the configs' ``custom_imports`` do) imports the standard library
only, so that the adapter core, ``flora_mm.adapters``, costs torch alone and works beside any
OpenMMLab version. It

* applies the stack's compatibility fixes, each when the module it patches is imported
  (:mod:`flora_mm.compat`);
* adds flora_mm's registry nodes to mmengine's (:mod:`flora_mm.registry`) once mmengine is
  imported, at once if it already is. Their modules (backbones, hooks, optimizer parts)
  register on the first look-up of a ``flora_mm.`` type, through the nodes' ``locations``,
  which mmengine imports then; so an import of a flora_mm module that imports mmengine
  first never runs into a half-imported flora_mm module.
"""
import logging

from .compat import apply_compat, when_imported
from .version import __version__

__all__ = ['__version__']


def _add_registry_nodes(mmengine) -> None:
    """Import :mod:`flora_mm.registry`; with torch or mmengine out of range, warn instead
    (importing it, or a ``flora_mm.`` type, raises the stack error) and leave mmengine be."""
    from .stack import SETUP_HINT, stack_problems
    problems = stack_problems('torch', 'mmengine')
    if problems:
        logging.getLogger(__name__).warning(
            "flora_mm's OpenMMLab modules are not registered: they need %s; %s",
            '; '.join(problems), SETUP_HINT)
        return
    from . import registry  # noqa: F401


apply_compat()
when_imported('mmengine', _add_registry_nodes)

"""The built-in adapter methods, one module each; importing a module registers its method, in
this order (the order in which methods are listed)."""
from . import flora, lora, dora, loha, lokr  # noqa: F401  (isort: skip)

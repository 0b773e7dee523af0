# mmseg's runtime (default_scope='mmseg') plus flora_mm's modules and stack fixes.
_base_ = 'mmseg::_base_/default_runtime.py'

custom_imports = dict(imports=['flora_mm'], allow_failed_imports=False)

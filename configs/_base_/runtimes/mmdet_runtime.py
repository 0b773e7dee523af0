# mmdet's runtime (default_scope='mmdet') plus flora_mm's modules and stack fixes.
_base_ = 'mmdet::_base_/default_runtime.py'

custom_imports = dict(imports=['flora_mm'], allow_failed_imports=False)

# mmrotate's runtime (default_scope='mmrotate') plus flora_mm's modules and stack fixes
# (importing flora_mm restores `collections.Sequence`, which mmrotate 1.0.0rc1 still imports).
_base_ = 'mmrotate::_base_/default_runtime.py'

custom_imports = dict(imports=['flora_mm'], allow_failed_imports=False)

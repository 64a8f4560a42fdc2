"""Distillation methods by name, one module per paper family (a plugin package).

`base.py` holds `Method`, `MethodSettings` and the registry (`method_class`,
`method_names`, `validate_method_entry`, `build_method`); every other module is one
family's settings and methods, registered with `base.register`. This package imports
nothing itself: the registry imports the family modules on first use, and code outside
the package reaches a method only through the registry.
"""

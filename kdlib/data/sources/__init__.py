"""Data sources, one module each, found by the registry in ``base`` (a plugin package).

Import ``kdlib.data.sources.base`` and ask it (``source_class(name)``); never import a
source module from outside this package: a step that runs one source must not depend
on the code of the others. Nothing is imported here.
"""

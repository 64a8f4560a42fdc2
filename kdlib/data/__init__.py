"""Data for knowledge-distillation studies.

- ``kdlib.data.dataset``: the ``Dataset`` container every step shares, ``to_float``
  and the dataset file (``save_dataset`` / ``load_dataset``).
- ``kdlib.data.augment``: replayable crop + flip, a pure function of
  ``(seed, epoch, sample index)``.
- ``kdlib.data.sources``: where a data set comes from, one module per source and a
  registry by ``data.source`` name (``kdlib.data.sources.base``). Only ``prepare_data``
  runs a source; every later step reads the dataset file.

Nothing is imported here: importing ``kdlib.data.dataset`` runs only this docstring.
"""

"""Other libraries' SAE formats and the hub, each one module for both directions.

:mod:`~vlmsae.formats.hub` (any SAE by hub id or folder; upload),
:mod:`~vlmsae.formats.saelens` and :mod:`~vlmsae.formats.dictionary_learning` (import and
export), :mod:`~vlmsae.formats.export` (one entry point for ``vlmsae export``). Imports run
``formats -> sae``, never back.
"""

"""Benchmark studies: stand-alone measurements behind the notes, the docs and benchmarks/results/.

They live in the repository only (the wheel leaves them out) and run from its root, next to an
installed fffcore (``pip install -e .``): ``python -m benchmarks.studies.NAME``. Each imports the
library and its benchmark engine as ``fffcore.benchmarks.*`` and times through
:mod:`fffcore.benchmarks.timing`.
"""

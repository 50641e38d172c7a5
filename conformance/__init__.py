"""The conformance suite: Hypothesis checks any registered backend against the FFF/CMM spec.

Three ways to run it:

* ``fff check BACKEND`` (:mod:`fffcore.commands.check`), a per-property summary;
* ``pytest --pyargs fffcore.conformance --fff-backend BACKEND`` (:mod:`.pytest_plugin`);
* :func:`fffcore.conformance.runner.run_suite` from Python.

Modules, in reading order: :mod:`.tolerances` (the rounding bands and their
derivation), :mod:`.adapters` (numpy, torch and cupy arrays in and out),
:mod:`.cases` (printable, reproducible cases), :mod:`.strategies` (what
Hypothesis draws), :mod:`.checks` (comparisons with the float64 oracle),
:mod:`.gradient_oracle` (the gradients in float64 with their tolerances and IEEE
classes), :mod:`.backward` and :mod:`.autograd` (the gradient checks),
:mod:`.fixed` (the cases every run checks), :mod:`.properties` (the named
properties), :mod:`.runner`.

Importing this package imports nothing else, so the pytest plugin stays cheap;
Hypothesis is needed only to run the suite (``pip install 'fffcore[conformance]'``).
"""

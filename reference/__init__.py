"""The pure-NumPy reference: the spec as code, the truth every backend is checked against.

Read in this order: :mod:`.activations`, :mod:`.cmm` (conditional matrix
multiplication, level by level), :mod:`.fff` (the tree sum), :mod:`.oracle`
(float64 evaluation, also along a given path, for the conformance suite).
"""

from fffcore.reference.activations import ACTIVATION_FUNCTIONS, activate
from fffcore.reference.cmm import conditional_matmul
from fffcore.reference.fff import fff_output
from fffcore.reference.oracle import PathEvaluation, evaluate_path, oracle_cmm, oracle_fff

__all__ = [
    "ACTIVATION_FUNCTIONS",
    "PathEvaluation",
    "activate",
    "conditional_matmul",
    "evaluate_path",
    "fff_output",
    "oracle_cmm",
    "oracle_fff",
]

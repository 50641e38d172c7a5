"""A failing property lets go of its example's arrays: the runner clears the frames behind the failure."""

from __future__ import annotations

import weakref

import numpy as np

from fffcore.conformance.checks import PropertyFailure
from fffcore.conformance.runner import _drop_frames


def test_the_frames_behind_a_failure_and_the_errors_it_arose_from_let_go_of_their_arrays():
    seen = {}

    def check_output():
        large = np.ones(1 << 20)  # an example's array, held by this frame's locals
        seen["large"] = weakref.ref(large)
        raise AssertionError("values differ")

    def large_batches():
        try:
            check_output()
        except AssertionError:
            raise PropertyFailure("large batches: values differ") from None  # keeps __context__

    try:
        large_batches()
    except PropertyFailure as failure:
        caught = failure
    assert seen["large"]() is not None  # the traceback of the error it arose from holds it
    _drop_frames(caught)
    assert seen["large"]() is None
    assert str(caught) == "large batches: values differ"  # the report's message is kept

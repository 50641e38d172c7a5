"""Deliberately broken backends: each is the reference with one classic bug, registered as a plugin.

The conformance suite's own tests require every one of them to fail, and name
the property expected to catch it (:data:`EXPECTED_FAILURES`).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from fffcore import hookimpl
from fffcore.arrays import numpy_rows
from fffcore.params import FFFParams
from fffcore.reference.fff import fff_output
from fffcore.reference.plugin import ReferenceBackend


def walk(x: np.ndarray, params: FFFParams, *, go_right: Any = None, left_child: int = 1, bias: bool = True):
    """The reference's level-by-level walk with hooks for the bugs: the branch rule and the left-child offset."""
    x = numpy_rows(x, params.dtype)
    rows = x.shape[0]
    tree = np.arange(params.trees)[None, :]
    levels = params.depth + 1
    logits = np.empty((rows, params.trees, levels), dtype=x.dtype)
    nodes = np.empty((rows, params.trees, levels), dtype=np.int64)
    node = np.zeros((rows, params.trees), dtype=np.int64)
    for level in range(levels):
        logit = np.einsum("bi,bki->bk", x, params.w_in[tree, node])
        if bias and params.b_in is not None:
            logit = logit + params.b_in[tree, node]
        logits[:, :, level] = logit
        nodes[:, :, level] = node
        right = (logit > 0) if go_right is None else go_right(logit)
        node = 2 * node + left_child + right
    return logits, nodes


class GreaterOrEqualAtTies(ReferenceBackend):
    """Branches on ``logit >= 0``: an exact tie goes right."""

    name = "broken-ge-ties"

    def cmm(self, x, params):
        return walk(x, params, go_right=lambda logit: logit >= 0)


class TanhGeluForExact(ReferenceBackend):
    """Computes the tanh approximation where the exact, erf-based GELU is declared."""

    name = "broken-tanh-gelu"

    def fff(self, x, params):
        logits, nodes = self.cmm(x, params)
        activation = "gelu_tanh" if params.activation == "gelu" else params.activation
        return fff_output(logits, nodes, params.w_out, activation)


class ChildOffByOne(ReferenceBackend):
    """Left child 2n instead of 2n+1 (the 1-based heap formula on 0-based indices)."""

    name = "broken-child-index"

    def cmm(self, x, params):
        return walk(x, params, left_child=0)


class BiasIgnored(ReferenceBackend):
    """Never adds b_in."""

    name = "broken-no-bias"

    def cmm(self, x, params):
        return walk(x, params, bias=False)


class LevelSkipped(ReferenceBackend):
    """The tree sum leaves out the deepest level."""

    name = "broken-level-skipped"

    def fff(self, x, params):
        logits, nodes = self.cmm(x, params)
        y = fff_output(logits, nodes, params.w_out, params.activation)
        return y - fff_output(logits[:, :, -1:], nodes[:, :, -1:], params.w_out, params.activation)


class DeepLevelsDropped(ReferenceBackend):
    """The tree sum leaves out levels 9 and deeper (as a kernel whose tables stop at 512 nodes would)."""

    name = "broken-deep-levels"

    def fff(self, x, params):
        logits, nodes = self.cmm(x, params)
        kept = min(9, params.depth + 1)
        return fff_output(logits[:, :, :kept], nodes[:, :, :kept], params.w_out, params.activation)


class WrongAboveThreshold(ReferenceBackend):
    """Right up to 599 rows; from 600 (its declared threshold) a second code path leaves out the deepest level."""

    name = "broken-above-threshold"
    batch_thresholds = (600,)

    def fff(self, x, params):
        if x.shape[0] < 600:
            return super().fff(x, params)
        return LevelSkipped.fff(self, x, params)


class WrongTail(ReferenceBackend):
    """Blocks of 64 rows, and a last partial block that keeps the rows of the block before it."""

    name = "broken-tail-block"

    def fff(self, x, params):
        y = super().fff(x, params)
        rows = x.shape[0]
        full = rows - rows % 64
        if rows > 64 and full < rows:
            y = y.copy()
            y[full:] = y[full - 64 : full - 64 + rows - full]
        return y


class ExtraLevel(ReferenceBackend):
    """The tree sum counts one level too many (the root twice, a classic range off-by-one)."""

    name = "broken-extra-level"

    def fff(self, x, params):
        logits, nodes = self.cmm(x, params)
        y = fff_output(logits, nodes, params.w_out, params.activation)
        return y + fff_output(logits[:, :, :1], nodes[:, :, :1], params.w_out, params.activation)


class TreesNotSummed(ReferenceBackend):
    """Returns only the first tree's contribution."""

    name = "broken-trees-not-summed"

    def fff(self, x, params):
        logits, nodes = self.cmm(x, params)
        return fff_output(logits[:, :1], nodes[:, :1], params.w_out[:1], params.activation)


class RowsSwapped(ReferenceBackend):
    """Swaps the first two rows of every result."""

    name = "broken-rows-swapped"

    @staticmethod
    def _swap(array):
        if array.shape[0] >= 2:
            array = array.copy()
            array[[0, 1]] = array[[1, 0]]
        return array

    def cmm(self, x, params):
        logits, nodes = super().cmm(x, params)
        return self._swap(logits), self._swap(nodes)

    def fff(self, x, params):
        return self._swap(super().fff(x, params))


class Float32Accumulation(ReferenceBackend):
    """Declares float64 but computes in float32, then widens the results."""

    name = "broken-float32-accumulation"

    def cmm(self, x, params):
        if params.dtype != "float64":
            return super().cmm(x, params)
        logits, nodes = super().cmm(np.asarray(x, np.float32), params.astype(np.float32))
        return logits.astype(np.float64), nodes

    def fff(self, x, params):
        if params.dtype != "float64":
            return super().fff(x, params)
        return super().fff(np.asarray(x, np.float32), params.astype(np.float32)).astype(np.float64)


class PartialBatch(ReferenceBackend):
    """Writes the output for the first half of the batch only (the rest stays zero)."""

    name = "broken-partial-batch"

    def fff(self, x, params):
        rows = x.shape[0]
        y = np.zeros((rows, params.d_out), dtype=params.dtype)
        done = (rows + 1) // 2
        y[:done] = super().fff(x[:done], params)
        return y


class ParameterStridesIgnored(ReferenceBackend):
    """Takes torch tensors too, and reads each torch parameter's memory as if it were C-contiguous
    (ignoring its strides: right for ``contiguous()`` tensors, wrong for transposed or strided ones)."""

    name = "broken-params-strides"
    array_types = ("numpy", "torch")

    @staticmethod
    def _numpy(array):
        if isinstance(array, np.ndarray) or array is None:
            return array
        shape = tuple(array.shape)
        strides = tuple(int(np.prod(shape[axis + 1 :])) for axis in range(len(shape)))
        return array.as_strided(shape, strides, array.storage_offset()).numpy()

    def _call(self, method, x, params):
        import torch

        if not isinstance(x, torch.Tensor):
            return method(x, params)
        plain = FFFParams(*(self._numpy(w) for w in (params.w_in, params.b_in, params.w_out)), params.activation)
        result = method(x.to(getattr(torch, params.dtype)).numpy(), plain)  # x is read right
        if isinstance(result, tuple):
            return tuple(torch.from_numpy(np.ascontiguousarray(part)) for part in result)
        return torch.from_numpy(np.ascontiguousarray(result))

    def cmm(self, x, params):
        return self._call(super().cmm, x, params)

    def fff(self, x, params):
        return self._call(super().fff, x, params)


# Broken backward passes: each is the reference's backward with one bug.


class BackwardBlocksOverwritten(ReferenceBackend):
    """Backward in blocks of 4096 rows, where each block's parameter gradients replace the previous
    blocks' instead of adding to them: right up to 4096 rows, wrong beyond."""

    name = "broken-backward-blocks"
    block = 4096

    def fff_backward(self, x, params, grad_y):
        rows, grads = numpy_rows(x, params.dtype), numpy_rows(grad_y, params.dtype)
        parts = [
            super(BackwardBlocksOverwritten, self).fff_backward(
                rows[lo : lo + self.block], params, grads[lo : lo + self.block]
            )
            for lo in range(0, max(1, rows.shape[0]), self.block)
        ]
        grad_x = np.concatenate([part[0] for part in parts])
        return (grad_x, *parts[-1][1:])


class BackwardUpstreamSanitized(ReferenceBackend):
    """Replaces NaN in grad_y by 0 and infinities by the largest finite values (``np.nan_to_num``)."""

    name = "broken-backward-nan-to-num"

    def fff_backward(self, x, params, grad_y):
        return super().fff_backward(x, params, np.nan_to_num(numpy_rows(grad_y, params.dtype)))


class BackwardReusesUpstream(ReferenceBackend):
    """Uses the caller's grad_y as scratch space: zeroes its first column after the backward pass."""

    name = "broken-backward-scratch"

    def fff_backward(self, x, params, grad_y):
        grads = numpy_rows(grad_y, params.dtype)
        result = super().fff_backward(x, params, grads)
        if grads.flags.writeable and grads.size:
            grads[:, 0] = 0
        return result


class BackwardSharedState(ReferenceBackend):
    """Keeps its arguments on the backend object for a moment: calls from two threads mix them up."""

    name = "broken-backward-shared"

    def fff_backward(self, x, params, grad_y):
        self.pending = (x, grad_y)
        time.sleep(0.002)
        x, grad_y = self.pending
        return super().fff_backward(x, params, grad_y)


BROKEN_BACKENDS = (
    GreaterOrEqualAtTies,
    TanhGeluForExact,
    ChildOffByOne,
    BiasIgnored,
    LevelSkipped,
    DeepLevelsDropped,
    WrongAboveThreshold,
    WrongTail,
    ExtraLevel,
    TreesNotSummed,
    RowsSwapped,
    Float32Accumulation,
    PartialBatch,
    ParameterStridesIgnored,
    BackwardBlocksOverwritten,
    BackwardUpstreamSanitized,
    BackwardReusesUpstream,
    BackwardSharedState,
)

#: The property that must catch each broken backend.
EXPECTED_FAILURES = {
    "broken-ge-ties": "exact_ties_and_sums",
    "broken-tanh-gelu": "output_along_path",
    "broken-child-index": "valid_paths",
    "broken-no-bias": "logits_along_path",
    "broken-level-skipped": "output_along_path",
    "broken-deep-levels": "output_along_path",
    "broken-above-threshold": "large_batches",
    "broken-tail-block": "large_batches",
    "broken-extra-level": "output_along_path",
    "broken-trees-not-summed": "output_along_path",
    "broken-rows-swapped": "logits_along_path",
    "broken-float32-accumulation": "logits_along_path",
    "broken-partial-batch": "output_along_path",
    "broken-params-strides": "logits_along_path",
    "broken-backward-blocks": "gradients_large_batches",
    "broken-backward-nan-to-num": "gradients_special_upstream",
    "broken-backward-scratch": "gradients_unchanged",
    "broken-backward-shared": "gradients_thread_safety",
}

assert set(EXPECTED_FAILURES) == {backend.name for backend in BROKEN_BACKENDS}


@hookimpl
def register_backends(register):
    for backend in BROKEN_BACKENDS:
        register(backend())

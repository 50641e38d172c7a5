"""The torch kernels: descend every tree (CMM), then sum the visited output rows.

The paper's PyTorch version gathers a (B, d_in) block of ``w_in`` per level
(one dot product per row and level, at memory speed) and a (B, D+1, d_out)
block of ``w_out`` before a ``bmm``. On the CPU a dot product inside a matrix
product costs about 1/60 of a gathered one (measured at float32, d_in 768,
batch 4096), so this backend trades extra arithmetic for matrix products:

1. *Dense top*: the top ``DENSE_LEVELS`` levels of every tree (63 nodes) are
   evaluated for every row with one matrix product, and the rows walk down
   that table of logits.
2. *Grouped subtrees* (CPU): the rows are sorted by the node they reached, and
   each group of rows evaluates the next ``GROUP_LEVELS`` levels of its own
   subtree (63 nodes again) with a matrix product, all groups in one padded
   ``bmm``, then walks down it. Used while groups hold at least
   ``MIN_GROUP_ROWS`` rows on average: smaller groups would make the products
   too small to beat gathering.
3. *Gathered levels*: any level left (deep trees, few rows per group, and on
   accelerators, where a loop over groups would cost one launch each) gathers
   each row's node weights and takes one dot product, as the paper does.
4. *Output*: ``sum_l act(logit_l) * w_out[node_l]`` is one ``embedding_bag``
   in ``sum`` mode with the activations as per-sample weights, which reads the
   visited rows of ``w_out`` without materialising them.

Every function here is device-generic torch (no CUDA-only call) and runs
under ``torch.no_grad``: nothing here is differentiable. Rows and trees are
handled together as (row, tree) *items*, so K trees cost one pass, not K.
"""

from __future__ import annotations

import sys
from typing import Any

from fffcore.backends.torch.activations import activate
from fffcore.backends.torch.prepared import TorchLayer, subtree_weights

#: Elements of the largest temporary per block of rows (rows * K * max(d_in, 63)):
#: 2**24 float32 elements are 64 MiB, which bounds memory, not speed.
BLOCK_ELEMENTS = 1 << 24

#: Levels per grouped subtree; 6 levels are 63 nodes, the size of the dense top.
GROUP_LEVELS = 6

#: Padded grouped products may do at most this many times the useful work before a loop of
#: one product per group (slower per row, but without padding) takes over.
PADDING_LIMIT = 2

#: Smallest average group (rows per subtree) worth grouping: below it the sort, the padding and
#: the small products cost more than the gathered levels they save. Measured on one CPU thread
#: (float32, width 768, depth 11, subtrees at level 6): 4 rows per group were 20% slower grouped
#: than gathered, 8 rows 15% faster, 16 rows 20% faster.
MIN_GROUP_ROWS = 8


def rows_per_block(layer: TorchLayer) -> int:
    """Rows of x per block, so that no temporary exceeds BLOCK_ELEMENTS elements."""
    widest = max(layer.d_in, (1 << max(layer.dense_levels, GROUP_LEVELS)) - 1)
    return max(1, BLOCK_ELEMENTS // (layer.trees * widest))


def level_plan(layer: TorchLayer, rows: int, device_type: str) -> list[tuple[str, int, int]]:
    """How each level is evaluated: ``(kind, first_level, level_count)`` steps, kind dense/grouped/gathered."""
    plan = [("dense", 0, layer.dense_levels)]
    level = layer.dense_levels
    while level < layer.levels:
        groups = 1 << level  # subtrees per tree rooted at this level
        if device_type == "cpu" and rows >= MIN_GROUP_ROWS * groups:
            count = min(GROUP_LEVELS, layer.levels - level)
            plan.append(("grouped", level, count))
            level += count
        else:
            plan.extend(("gathered", deeper, 1) for deeper in range(level, layer.levels))
            level = layer.levels
    return plan


def descend(x: Any, layer: TorchLayer, logits: Any, nodes: Any) -> None:
    """Walk every row of ``x`` down every tree, writing the visited logits and nodes.

    Args:
        x: (R, d_in) rows in the layer's dtype, on the layer's device.
        layer: the prepared parameters.
        logits: (R, K, D+1) contiguous output in the layer's dtype: the logit of each visited node.
        nodes: (R, K, D+1) contiguous int64 output: the visited node's heap index within its tree.
    """
    import torch

    rows, trees = x.shape[0], layer.trees
    item_logits = logits.view(rows * trees, layer.levels)  # item = row * K + tree
    item_nodes = nodes.view(rows * trees, layer.levels)
    node = torch.zeros(rows * trees, dtype=torch.int64, device=x.device)
    for kind, first, count in level_plan(layer, rows, x.device.type):
        if kind == "dense":
            node = _dense_top(x, layer, item_logits, item_nodes)
        elif kind == "grouped":
            node = _grouped_subtrees(x, layer, node, first, count, item_logits, item_nodes)
        else:
            node = _gathered_level(x, layer, node, first, item_logits, item_nodes)


def _matmul(product: Any, a: Any, b: Any) -> Any:
    """``product(a, b)`` (``torch.mm`` or ``torch.bmm``) in a dtype whose products no global setting can coarsen.

    16-bit floats run in float32, which holds every 16-bit value exactly, and the result is
    rounded once to the 16-bit type (one extra rounding, as when any backend accumulates in a
    wider type): on the CPU, torch's 16-bit kernels can return NaN where the exact product is
    infinite (seen with bfloat16 in torch 2.13); on CUDA, cuBLAS may reduce 16-bit products in
    16 bits (``allow_fp16_reduced_precision_reduction``, on by default), wider than the
    float32 accumulation this backend declares. TF32, if a user enables it, cannot round
    16-bit values: its 10-bit mantissa holds them.

    float32 on CUDA runs in float64: with TF32 enabled (``torch.backends.cuda.matmul.allow_tf32``
    or ``torch.set_float32_matmul_precision('high')``), cuBLAS rounds float32 inputs to 10-bit
    mantissas, which moves logits by about 1e-3 of their scale and sends rows down the wrong
    branch. Turning the global setting off and on around each product would race with other
    threads' work; float64, never rounded to TF32, gives logits at least as exact as float32.
    """
    torch = sys.modules["torch"]
    if a.dtype in (torch.float16, torch.bfloat16):
        return product(a.float(), b.float()).to(a.dtype)
    if a.dtype is torch.float32 and a.device.type == "cuda":
        return product(a.double(), b.double()).float()
    return product(a, b)


def _walk_table(table: Any, bias: Any, group: Any, start: Any, count: int) -> tuple[Any, Any, Any]:
    """Walk ``count`` levels down per-item tables of logits in subtree heap order.

    Args:
        table: (I, M) logits without bias of each item's subtree nodes, M = 2**count - 1.
        bias: (G*M,) the biases of G subtrees, subtree after subtree, or None.
        group: (I,) int64 the subtree (0 .. G-1) of each item, to find its biases.
        start: (I,) int64 heap index of each item's subtree root within its tree.
        count: levels to walk.

    Returns:
        ``(logits, nodes, next_node)``: (I, count) logits and int64 heap indices of the
        visited nodes, and (I,) the node each item reaches below the subtree.
    """
    import torch

    items, width = table.shape
    local = torch.zeros((items, 1), dtype=torch.int64, device=table.device)  # index within the subtree
    bias_base = None if bias is None else (group * width).view(items, 1)
    logits = table.new_empty((items, count))
    nodes = torch.empty((items, count), dtype=torch.int64, device=table.device)
    node = start
    for level in range(count):
        logit = table.gather(1, local)
        if bias is not None:
            logit += bias.index_select(0, (bias_base + local).view(items)).view(items, 1)  # dot, then bias
        logits[:, level : level + 1] = logit
        # The subtree's level-t node with local index i is root * 2**t + i in the whole tree.
        node = start * (1 << level) + local.view(items)
        nodes[:, level] = node
        local = 2 * local + 1 + (logit > 0)  # strictly > 0: zero and NaN go left
    return logits, nodes, 2 * node + 1 + (logits[:, count - 1] > 0)


def _dense_top(x: Any, layer: TorchLayer, item_logits: Any, item_nodes: Any) -> Any:
    """Levels 0 .. dense_levels-1 of every tree from one matrix product; returns the next nodes (R*K,)."""
    import torch

    rows, trees, count = x.shape[0], layer.trees, layer.dense_levels
    table = _matmul(torch.mm, x, layer.dense_w_in_t).view(rows * trees, -1)  # (R*K, M): tree k's columns of (r, k)
    tree = torch.arange(trees, device=x.device).repeat(rows)
    start = torch.zeros(rows * trees, dtype=torch.int64, device=x.device)
    logits, nodes, after = _walk_table(table, layer.dense_b_in, tree, start, count)
    item_logits[:, :count] = logits
    item_nodes[:, :count] = nodes
    return after


def _grouped_subtrees(
    x: Any, layer: TorchLayer, node: Any, first: int, count: int, item_logits: Any, item_nodes: Any
) -> Any:
    """Levels first .. first+count-1: items grouped by subtree, one matrix product per subtree.

    The groups are laid out in a padded (G, P, d_in) batch, P the largest group, and
    multiplied with one ``bmm``; when padding would more than double the work (very
    uneven groups), each group gets its own ``mm`` instead.
    """
    import torch

    items, trees = node.shape[0], layer.trees
    width = 1 << first  # subtrees per tree at this level
    weights_t, biases = subtree_weights(layer, first, count)  # (G, d_in, M), (G*M,) or None
    groups, size = weights_t.shape[0], weights_t.shape[2]
    tree = torch.arange(items, device=x.device) % trees
    group = tree * width + (node - (width - 1))  # the subtree each item is in
    group_sorted, order = torch.sort(group)
    counts = torch.bincount(group_sorted, minlength=groups)
    largest = int(counts.max())  # CPU only (see level_plan): no device synchronisation
    if groups * largest <= PADDING_LIMIT * items:
        firsts = torch.cumsum(counts, 0) - counts  # each group's first position in sorted order
        slot = group_sorted * largest + (torch.arange(items, device=x.device) - firsts[group_sorted])
        # Padding slots read row 0: their products are computed and never looked at.
        source = torch.zeros(groups * largest, dtype=torch.int64, device=x.device)
        source[slot] = order // trees
        padded = x.index_select(0, source).view(groups, largest, layer.d_in)
        table = _matmul(torch.bmm, padded, weights_t).view(groups * largest, size).index_select(0, slot)
    else:
        rows_sorted = x.index_select(0, order // trees)
        table = x.new_empty((items, size))
        offset = 0
        for index, members in enumerate(counts.tolist()):
            if members:
                stop = offset + members
                table[offset:stop] = _matmul(torch.mm, rows_sorted[offset:stop], weights_t[index])
                offset = stop
    logits, nodes, after = _walk_table(table, biases, group_sorted, node[order], count)
    item_logits[:, first : first + count].index_copy_(0, order, logits)
    item_nodes[:, first : first + count].index_copy_(0, order, nodes)
    return torch.empty_like(after).index_copy_(0, order, after)


def _gathered_level(x: Any, layer: TorchLayer, node: Any, level: int, item_logits: Any, item_nodes: Any) -> Any:
    """One level by gathering each item's node weights; returns the next nodes (R*K,)."""
    import torch

    rows, trees = x.shape[0], layer.trees
    flat = (node.view(rows, trees) + layer.tree_offsets).view(-1) if trees > 1 else node
    weights = layer.w_in_rows.index_select(0, flat).view(rows, trees, layer.d_in)
    logit = torch.linalg.vecdot(weights, x.unsqueeze(1)).view(-1)
    if layer.b_in_rows is not None:
        logit += layer.b_in_rows.index_select(0, flat)
    item_logits[:, level] = logit
    item_nodes[:, level] = node
    return 2 * node + 1 + (logit > 0)


def tree_sum(logits: Any, nodes: Any, layer: TorchLayer, activation: str) -> Any:
    """``y[r] = sum_k sum_l act(logits[r, k, l]) * w_out[k, nodes[r, k, l]]``.

    Args:
        logits: (R, K, L) visited logits, the layer's dtype.
        nodes: (R, K, L) int64 visited nodes (heap index within each tree).
        layer: the prepared parameters.
        activation: an activation name of the spec.

    Returns:
        (R, d_out) in the layer's dtype.
    """
    import torch

    rows, trees, levels = logits.shape
    weights = activate(activation, logits).view(rows, trees * levels)
    flat = nodes + layer.tree_offsets.view(1, trees, 1) if trees > 1 else nodes
    return torch.nn.functional.embedding_bag(
        flat.reshape(rows, trees * levels), layer.w_out_rows, per_sample_weights=weights, mode="sum"
    )


def cmm_rows(x: Any, layer: TorchLayer) -> tuple[Any, Any]:
    """CMM of (B, d_in) ``x``: logits (B, K, D+1) in x's dtype and nodes (B, K, D+1) int64, on x's device."""
    import torch

    shape = (x.shape[0], layer.trees, layer.levels)
    logits = torch.empty(shape, dtype=x.dtype, device=x.device)
    nodes = torch.empty(shape, dtype=torch.int64, device=x.device)
    with torch.no_grad():
        step = rows_per_block(layer)
        for start in range(0, x.shape[0], step):
            stop = start + step
            descend(x[start:stop], layer, logits[start:stop], nodes[start:stop])
    return logits, nodes


def fff_rows(x: Any, layer: TorchLayer, activation: str) -> Any:
    """The FFF output of (B, d_in) ``x``: (B, d_out) in x's dtype, on x's device."""
    import torch

    rows = x.shape[0]
    if rows <= rows_per_block(layer):  # the common case: one block, no copy into a preallocated output
        with torch.no_grad():
            logits, nodes = cmm_rows(x, layer)
            return tree_sum(logits, nodes, layer, activation)
    output = torch.empty((rows, layer.d_out), dtype=x.dtype, device=x.device)
    with torch.no_grad():
        step = rows_per_block(layer)
        for start in range(0, rows, step):
            logits, nodes = cmm_rows(x[start : start + step], layer)
            output[start : start + step] = tree_sum(logits, nodes, layer, activation)
    return output

// FFF inference kernels of fffcore's cupy backend.
//
// Compiled at run time by NVRTC (cupy.RawModule), in the tests by nvcc, and by
// g++ in the CPU emulation test; the source therefore includes no header.
// Each compiled variant is chosen by macros, which
// fffcore.backends.cupy.kernel_plan.compile_options() writes:
//
//   FFF_STORAGE          1 float32, 2 float64 (arithmetic in the same type), 3 float16 (stored as IEEE
//                        binary16 bits, arithmetic in float32, every logit rounded to float16 before
//                        its branch), 4 bfloat16 (stored as the upper 16 bits of a float32, likewise);
//                        the 16-bit variants are built and emulated, not yet declared by the backend
//   FFF_ACTIVATION       0 gelu, 1 gelu_tanh, 2 relu, 3 silu, 4 identity (fffcore.spec.ACTIVATIONS order)
//   FFF_HAS_BIAS         0 or 1: whether b_in is read
//   FFF_VEC_IN           elements per access of x and w_in rows: 16 bytes' worth, or 1 when unaligned
//   FFF_VEC_OUT          elements per access of w_out and y rows, likewise
//   FFF_X_CHUNKS         chunks of 32 * FFF_VEC_IN elements of x kept in registers; 0: read x at every level
//   FFF_WARPS_PER_BLOCK  the launch bound (blocks may be smaller, never larger)
//
// Layout (C-contiguous): x (rows, d_in); w_in (trees, nodes, d_in); b_in (trees, nodes);
// w_out (trees, nodes, d_out); y (rows, d_out); logits (rows, trees, levels); path (rows, trees, levels) int64.
// nodes = 2^(depth+1) - 1 in heap order: the children of node n are 2n+1 (left) and 2n+2 (right).
//
// Work split: one warp per row, so every weight row is read by 32 lanes as
// consecutive 16-byte vectors (coalesced), the dot product is a butterfly
// shuffle reduction, and the row of x stays in registers across the levels.
// The fused kernel records each level's activated logit and node in shared
// memory, then sweeps the output row once, chunk by chunk, summing the visited
// w_out rows in registers: y is written once per row, in one launch. The
// row-grouped and tiled variants below share each weight-row fetch among rows.

#ifndef FFF_STORAGE
#error "FFF_STORAGE must be defined (1 float32, 2 float64, 3 float16, 4 bfloat16)"
#endif
#ifndef FFF_ACTIVATION
#error "FFF_ACTIVATION must be defined"
#endif
#ifndef FFF_HAS_BIAS
#error "FFF_HAS_BIAS must be defined"
#endif
#ifndef FFF_VEC_IN
#error "FFF_VEC_IN must be defined"
#endif
#ifndef FFF_VEC_OUT
#error "FFF_VEC_OUT must be defined"
#endif
#ifndef FFF_X_CHUNKS
#error "FFF_X_CHUNKS must be defined"
#endif
#ifndef FFF_WARPS_PER_BLOCK
#error "FFF_WARPS_PER_BLOCK must be defined"
#endif

// The CPU emulation supplies its own shared-memory declaration.
#ifndef FFF_DECLARE_SHARED
#define FFF_DECLARE_SHARED(name) extern __shared__ __align__(16) unsigned char name[]
#endif

#if FFF_STORAGE == 1
typedef float scalar_t;
typedef float compute_t;
#elif FFF_STORAGE == 2
typedef double scalar_t;
typedef double compute_t;
#elif FFF_STORAGE == 3
typedef unsigned short scalar_t;  // IEEE binary16 bits: NVRTC gets no cuda_fp16.h without include paths
typedef float compute_t;
#elif FFF_STORAGE == 4
typedef unsigned short scalar_t;  // bfloat16 bits: the sign, exponent and top 7 mantissa bits of a float32
typedef float compute_t;
#else
#error "FFF_STORAGE must be 1 (float32), 2 (float64), 3 (float16) or 4 (bfloat16)"
#endif

#if FFF_STORAGE == 2
#define FFF_ERFC erfc
#define FFF_TANH tanh
#define FFF_EXP exp
#define FFF_MAX_FINITE 1.7976931348623157e+308
#else
#define FFF_ERFC erfcf
#define FFF_TANH tanhf
#define FFF_EXP expf
#define FFF_MAX_FINITE 3.40282347e+38f
#endif

// Stored element -> arithmetic type, and back (rounding to nearest, ties to even).
#if FFF_STORAGE == 3
__device__ __forceinline__ compute_t to_compute(scalar_t h) {
    const unsigned int sign = (static_cast<unsigned int>(h) & 0x8000u) << 16;
    const unsigned int exponent = (h >> 10) & 0x1fu;
    const unsigned int mantissa = h & 0x3ffu;
    if (exponent == 0) {  // zero or subnormal: mantissa * 2^-24, exact in float
        const float magnitude = static_cast<float>(mantissa) * 5.9604644775390625e-8f;
        return sign ? -magnitude : magnitude;
    }
    if (exponent == 31) return __uint_as_float(sign | 0x7f800000u | (mantissa << 13));  // inf, NaN
    return __uint_as_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

__device__ __forceinline__ scalar_t to_storage(compute_t f) {
    const unsigned int bits = __float_as_uint(f);
    const unsigned int sign = (bits >> 16) & 0x8000u;
    const unsigned int magnitude = bits & 0x7fffffffu;
    if (magnitude > 0x7f800000u) return static_cast<scalar_t>(sign | 0x7e00u);  // NaN stays NaN
    if (magnitude >= 0x477ff000u) return static_cast<scalar_t>(sign | 0x7c00u);  // >= 65520 rounds to inf
    if (magnitude >= 0x38800000u) {  // a normal float16: drop 13 mantissa bits, ties to even, rebias
        const unsigned int rounded = magnitude + 0xfffu + ((magnitude >> 13) & 1u);
        return static_cast<scalar_t>(sign | ((rounded - 0x38000000u) >> 13));
    }
    // Subnormal float16 (or zero): count units of 2^-24; the scaling is exact, rintf rounds ties to even.
    const float units = rintf(__uint_as_float(magnitude) * 16777216.0f);
    return static_cast<scalar_t>(sign | static_cast<unsigned int>(units));
}
#elif FFF_STORAGE == 4
__device__ __forceinline__ compute_t to_compute(scalar_t b) {
    return __uint_as_float(static_cast<unsigned int>(b) << 16);  // exact: bfloat16 is a truncated float32
}

__device__ __forceinline__ scalar_t to_storage(compute_t f) {
    const unsigned int bits = __float_as_uint(f);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<scalar_t>((bits >> 16) | 0x0040u);  // quiet NaN
    // Round to nearest, ties to even, on the 16 bits dropped; a carry into the exponent is the
    // correct rounding up (to the next binade, or to infinity past the largest finite bfloat16).
    return static_cast<scalar_t>((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}
#else
__device__ __forceinline__ compute_t to_compute(scalar_t value) { return value; }
__device__ __forceinline__ scalar_t to_storage(compute_t value) { return value; }
#endif

#define FFF_WARP 32
#define FFF_FULL_MASK 0xffffffffu

// VEC consecutive elements, aligned to their size, so that a 16-byte vector is one load or store.
template <int VEC>
struct alignas(sizeof(scalar_t) * VEC) Vec {
    scalar_t v[VEC];
};

template <int VEC>
__device__ __forceinline__ Vec<VEC> load_vec(const scalar_t* __restrict__ base, long long offset) {
    return *reinterpret_cast<const Vec<VEC>*>(base + offset);
}

template <int VEC>
__device__ __forceinline__ void store_vec(scalar_t* __restrict__ base, long long offset, const Vec<VEC>& value) {
    *reinterpret_cast<Vec<VEC>*>(base + offset) = value;
}

// Sum over the warp by a butterfly. Every lane ends with the same bits: at each
// step lanes i and i^offset add the same two numbers, and IEEE addition is
// commutative, so all lanes take the same branch afterwards.
__device__ __forceinline__ compute_t warp_sum(compute_t value) {
#pragma unroll
    for (int offset = FFF_WARP / 2; offset > 0; offset >>= 1) {
        value += __shfl_xor_sync(FFF_FULL_MASK, value, offset);
    }
    return value;
}

// The activation of the spec, in the compute type. act(NaN) is NaN (NaN
// propagates through every formula, and relu keeps it explicitly); act(-inf)
// is the limit, 0 for every activation but identity, where the formulas would
// give -inf * 0 = NaN. z < -FFF_MAX_FINITE is z == -inf, spelled without a
// header-defined infinity.
__device__ __forceinline__ compute_t fff_activate(compute_t z) {
#if FFF_ACTIVATION == 0
    // gelu: x * Phi(x) = 0.5 x erfc(-x / sqrt 2); erfc keeps relative accuracy for negative x.
    if (z < -FFF_MAX_FINITE) return compute_t(0);
    return compute_t(0.5) * z * FFF_ERFC(-z * compute_t(0.70710678118654752440));
#elif FFF_ACTIVATION == 1
    // gelu_tanh: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
    if (z < -FFF_MAX_FINITE) return compute_t(0);
    const compute_t inner = compute_t(0.79788456080286535588) * (z + compute_t(0.044715) * z * z * z);
    return compute_t(0.5) * z * (compute_t(1) + FFF_TANH(inner));
#elif FFF_ACTIVATION == 2
    // relu: max(x, 0), except that NaN stays NaN (fmax would return 0).
    return z > compute_t(0) ? z : (z != z ? z : compute_t(0));
#elif FFF_ACTIVATION == 3
    // silu: x / (1 + exp(-x)).
    if (z < -FFF_MAX_FINITE) return compute_t(0);
    return z / (compute_t(1) + FFF_EXP(-z));
#elif FFF_ACTIVATION == 4
    return z;
#else
#error "FFF_ACTIVATION must be 0..4"
#endif
}

// One row of x, as the dot products read it: in registers (FFF_X_CHUNKS > 0,
// lane l holding elements [(c*32 + l)*VEC, +VEC) of every chunk c, zero past
// d_in) or re-read from memory at every level (FFF_X_CHUNKS == 0, long rows).
struct RowInput {
#if FFF_X_CHUNKS > 0
    compute_t values[FFF_X_CHUNKS][FFF_VEC_IN];
#else
    const scalar_t* __restrict__ row;
#endif

    __device__ __forceinline__ void load(const scalar_t* __restrict__ x_row, int d_in, int lane) {
#if FFF_X_CHUNKS > 0
#pragma unroll
        for (int c = 0; c < FFF_X_CHUNKS; ++c) {
            const int index = (c * FFF_WARP + lane) * FFF_VEC_IN;
            // Issue every load before the first use; lanes past d_in hold zeros.
            Vec<FFF_VEC_IN> chunk;
#pragma unroll
            for (int v = 0; v < FFF_VEC_IN; ++v) chunk.v[v] = scalar_t(0);
            if (index < d_in) chunk = load_vec<FFF_VEC_IN>(x_row, index);
#pragma unroll
            for (int v = 0; v < FFF_VEC_IN; ++v) values[c][v] = to_compute(chunk.v[v]);
        }
#else
        (void)d_in;
        (void)lane;
        row = x_row;
#endif
    }

    // This lane's share of x . w_row; warp_sum of the shares is the dot product.
    __device__ __forceinline__ compute_t partial_dot(const scalar_t* __restrict__ w_row, int d_in, int lane) const {
        compute_t partial = 0;
#if FFF_X_CHUNKS > 0
#pragma unroll
        for (int c = 0; c < FFF_X_CHUNKS; ++c) {
            const int index = (c * FFF_WARP + lane) * FFF_VEC_IN;
            if (index < d_in) {
                const Vec<FFF_VEC_IN> w = load_vec<FFF_VEC_IN>(w_row, index);
#pragma unroll
                for (int v = 0; v < FFF_VEC_IN; ++v) partial += values[c][v] * to_compute(w.v[v]);
            }
        }
#else
        for (int index = lane * FFF_VEC_IN; index < d_in; index += FFF_WARP * FFF_VEC_IN) {
            const Vec<FFF_VEC_IN> xv = load_vec<FFF_VEC_IN>(row, index);
            const Vec<FFF_VEC_IN> w = load_vec<FFF_VEC_IN>(w_row, index);
#pragma unroll
            for (int v = 0; v < FFF_VEC_IN; ++v) partial += to_compute(xv.v[v]) * to_compute(w.v[v]);
        }
#endif
        return partial;
    }
};

// A node's logit from its dot product with the row: plus the node's bias (added after the sum),
// then rounded to the stored dtype (a no-op but for the 16-bit ones), so that the branch, the
// activation and the reported logit all see the same value.
__device__ __forceinline__ compute_t finish_logit(compute_t dot, const scalar_t* __restrict__ b_tree, int node) {
#if FFF_HAS_BIAS
    dot += to_compute(b_tree[node]);
#else
    (void)b_tree;
    (void)node;
#endif
    return to_compute(to_storage(dot));
}

// The logit of `node` in the tree whose weights start at w_tree / b_tree; identical in every lane.
__device__ __forceinline__ compute_t node_logit(const RowInput& input, const scalar_t* __restrict__ w_tree,
                                                const scalar_t* __restrict__ b_tree, int node, int d_in, int lane) {
    const compute_t dot = warp_sum(input.partial_dot(w_tree + static_cast<long long>(node) * d_in, d_in, lane));
    return finish_logit(dot, b_tree, node);
}

// The spec's branch: strictly logit > 0 goes right, so zero and NaN go left.
__device__ __forceinline__ int child(int node, compute_t logit) {
    return 2 * node + 1 + (logit > compute_t(0) ? 1 : 0);
}

// One row of the fused FFF: walk levels [first_level, levels) of each tree of the group, recording
// each level's activated logit and node in this warp's shared `acts` and `path` (lane 0 writes; all
// lanes hold the same logits), then sweep the output row once, summing the visited w_out rows in
// registers: y is written once per row. first_level > 0 resumes walks a top-levels kernel began:
// `top_acts` (tree_count * first_level) and `top_path` (tree_count * (first_level + 1), the last
// entry of each tree being the node where the walk resumes) hold this row's part of its scratch.
__device__ __forceinline__ void forward_row(const RowInput& input, const scalar_t* __restrict__ w_in,
                                            const scalar_t* __restrict__ b_in, const scalar_t* __restrict__ w_out,
                                            scalar_t* __restrict__ y_row, int depth, int d_in, int d_out,
                                            int tree_begin, int tree_count, int accumulate, int first_level,
                                            const compute_t* __restrict__ top_acts, const int* __restrict__ top_path,
                                            compute_t* acts, int* path, int lane) {
    const int levels = depth + 1;
    const long long nodes_per_tree = (2LL << depth) - 1;
    for (int t = 0; t < tree_count; ++t) {
        const long long tree = tree_begin + t;
        const scalar_t* w_tree = w_in + tree * nodes_per_tree * d_in;
        const scalar_t* b_tree = FFF_HAS_BIAS ? b_in + tree * nodes_per_tree : b_in;
        int node = 0;
        if (first_level > 0) {
            if (lane == 0) {
                for (int level = 0; level < first_level; ++level) {
                    acts[t * levels + level] = top_acts[t * first_level + level];
                    path[t * levels + level] = top_path[t * (first_level + 1) + level];
                }
            }
            node = top_path[t * (first_level + 1) + first_level];
        }
        for (int level = first_level; level < levels; ++level) {
            const compute_t logit = node_logit(input, w_tree, b_tree, node, d_in, lane);
            if (lane == 0) {
                acts[t * levels + level] = fff_activate(logit);
                path[t * levels + level] = node;
            }
            node = child(node, logit);
        }
    }
    __syncwarp();

    // Sweep the output row: each lane owns VEC_OUT consecutive elements per chunk,
    // sums the visited w_out rows in registers, and stores once.
    for (int index = lane * FFF_VEC_OUT; index < d_out; index += FFF_WARP * FFF_VEC_OUT) {
        compute_t sum[FFF_VEC_OUT];
#pragma unroll
        for (int v = 0; v < FFF_VEC_OUT; ++v) sum[v] = 0;
        for (int t = 0; t < tree_count; ++t) {
            const scalar_t* w_tree = w_out + (tree_begin + static_cast<long long>(t)) * nodes_per_tree * d_out;
#pragma unroll 4
            for (int level = 0; level < levels; ++level) {
                const compute_t act = acts[t * levels + level];
                const Vec<FFF_VEC_OUT> w =
                    load_vec<FFF_VEC_OUT>(w_tree, static_cast<long long>(path[t * levels + level]) * d_out + index);
#pragma unroll
                for (int v = 0; v < FFF_VEC_OUT; ++v) sum[v] += act * to_compute(w.v[v]);
            }
        }
        Vec<FFF_VEC_OUT> out;
        if (accumulate) {
            out = load_vec<FFF_VEC_OUT>(y_row, index);
#pragma unroll
            for (int v = 0; v < FFF_VEC_OUT; ++v) out.v[v] = to_storage(to_compute(out.v[v]) + sum[v]);
        } else {
#pragma unroll
            for (int v = 0; v < FFF_VEC_OUT; ++v) out.v[v] = to_storage(sum[v]);
        }
        store_vec<FFF_VEC_OUT>(y_row, index, out);
    }
    // The warp's next row overwrites acts and path.
    __syncwarp();
}

// This warp's slices of the block's dynamic shared memory: all warps' activated logits first
// (warps * entries compute_t, so 8-byte aligned for float64), then all warps' int32 nodes, as
// kernel_plan.shared_bytes_for() sizes it.
__device__ __forceinline__ void warp_path_slices(unsigned char* shared, int warp, int warps, int entries,
                                                 compute_t** acts, int** path) {
    *acts = reinterpret_cast<compute_t*>(shared) + static_cast<long long>(warp) * entries;
    *path = reinterpret_cast<int*>(shared + sizeof(compute_t) * static_cast<long long>(warps) * entries) +
            static_cast<long long>(warp) * entries;
}

// Fused FFF: y[row] (=, or += when accumulate) sum over trees [tree_begin, tree_begin + tree_count)
// and levels of act(logit) * w_out[tree, node], one warp per row, rows in order.
//
// Dynamic shared memory: every warp's path (warp_path_slices).
extern "C" __global__ void __launch_bounds__(FFF_WARPS_PER_BLOCK * FFF_WARP)
fff_forward(const scalar_t* __restrict__ x, const scalar_t* __restrict__ w_in, const scalar_t* __restrict__ b_in,
            const scalar_t* __restrict__ w_out, scalar_t* __restrict__ y, long long rows, int depth, int d_in,
            int d_out, int tree_begin, int tree_count, int accumulate) {
    FFF_DECLARE_SHARED(fff_shared);
    const int lane = static_cast<int>(threadIdx.x) % FFF_WARP;
    const int warp = static_cast<int>(threadIdx.x) / FFF_WARP;
    const int warps = static_cast<int>(blockDim.x) / FFF_WARP;
    compute_t* acts;
    int* path;
    warp_path_slices(fff_shared, warp, warps, tree_count * (depth + 1), &acts, &path);

    for (long long row = static_cast<long long>(blockIdx.x) * warps + warp; row < rows;
         row += static_cast<long long>(gridDim.x) * warps) {
        RowInput input;
        input.load(x + row * d_in, d_in, lane);
        forward_row(input, w_in, b_in, w_out, y + row * d_out, depth, d_in, d_out, tree_begin, tree_count, accumulate,
                    0, nullptr, nullptr, acts, path, lane);
    }
}

// The row-grouped variant for large batches, in two launches per tree group with a sort between
// them (kernel_plan.grouped_fff_launches; the host sorts):
//
// 1. fff_top_walk walks every row, in order, through the top `top_levels` levels of each tree,
//    whose few weight rows every row shares, and writes its activated logits and nodes there,
//    the node where its walk resumes, and the first tree's resume node as its sort key.
// 2. The host orders the rows by key (rows in one subtree become neighbours).
// 3. fff_forward_sorted takes the rows in that order, resumes each walk, and sums the output.
//    Neighbouring warps now walk the same subtrees, so each deep w_in and w_out row is fetched
//    from memory about once per group of rows that visit it, then served by the caches.
//
// Scratch, per row and tree: top_acts (top_levels compute_t), top_path (top_levels + 1 int).
extern "C" __global__ void __launch_bounds__(FFF_WARPS_PER_BLOCK * FFF_WARP)
fff_top_walk(const scalar_t* __restrict__ x, const scalar_t* __restrict__ w_in, const scalar_t* __restrict__ b_in,
             compute_t* __restrict__ top_acts, int* __restrict__ top_path, int* __restrict__ keys, long long rows,
             int depth, int d_in, int tree_begin, int tree_count, int top_levels) {
    const int lane = static_cast<int>(threadIdx.x) % FFF_WARP;
    const int warp = static_cast<int>(threadIdx.x) / FFF_WARP;
    const int warps = static_cast<int>(blockDim.x) / FFF_WARP;
    const long long nodes_per_tree = (2LL << depth) - 1;

    for (long long row = static_cast<long long>(blockIdx.x) * warps + warp; row < rows;
         row += static_cast<long long>(gridDim.x) * warps) {
        RowInput input;
        input.load(x + row * d_in, d_in, lane);
        compute_t* acts = top_acts + row * tree_count * top_levels;
        int* path = top_path + row * tree_count * (top_levels + 1);
        for (int t = 0; t < tree_count; ++t) {
            const long long tree = tree_begin + t;
            const scalar_t* w_tree = w_in + tree * nodes_per_tree * d_in;
            const scalar_t* b_tree = FFF_HAS_BIAS ? b_in + tree * nodes_per_tree : b_in;
            int node = 0;
            for (int level = 0; level < top_levels; ++level) {
                const compute_t logit = node_logit(input, w_tree, b_tree, node, d_in, lane);
                if (lane == 0) {
                    acts[t * top_levels + level] = fff_activate(logit);
                    path[t * (top_levels + 1) + level] = node;
                }
                node = child(node, logit);
            }
            if (lane == 0) {
                path[t * (top_levels + 1) + top_levels] = node;
                if (t == 0) keys[row] = node;
            }
        }
    }
}

extern "C" __global__ void __launch_bounds__(FFF_WARPS_PER_BLOCK * FFF_WARP)
fff_forward_sorted(const scalar_t* __restrict__ x, const scalar_t* __restrict__ w_in,
                   const scalar_t* __restrict__ b_in, const scalar_t* __restrict__ w_out, scalar_t* __restrict__ y,
                   const long long* __restrict__ order, const compute_t* __restrict__ top_acts,
                   const int* __restrict__ top_path, long long rows, int depth, int d_in, int d_out, int tree_begin,
                   int tree_count, int accumulate, int top_levels) {
    FFF_DECLARE_SHARED(fff_shared);
    const int lane = static_cast<int>(threadIdx.x) % FFF_WARP;
    const int warp = static_cast<int>(threadIdx.x) / FFF_WARP;
    const int warps = static_cast<int>(blockDim.x) / FFF_WARP;
    compute_t* acts;
    int* path;
    warp_path_slices(fff_shared, warp, warps, tree_count * (depth + 1), &acts, &path);

    for (long long i = static_cast<long long>(blockIdx.x) * warps + warp; i < rows;
         i += static_cast<long long>(gridDim.x) * warps) {
        const long long row = order[i];
        RowInput input;
        input.load(x + row * d_in, d_in, lane);
        forward_row(input, w_in, b_in, w_out, y + row * d_out, depth, d_in, d_out, tree_begin, tree_count, accumulate,
                    top_levels, top_acts + row * tree_count * top_levels,
                    top_path + row * tree_count * (top_levels + 1), acts, path, lane);
    }
}

// The tiled variant, one launch per tree group (kernel_plan.tiled_fff_launches). A block takes a
// tile of `tile_rows` consecutive rows, keeps their x in shared memory and walks them level by
// level, so a visited w_in row is fetched once per warp whose share of the tile visits it, and a
// w_out row once per tile and output chunk, instead of once per row:
//
// 1. The x tile is copied into shared memory (rows past the batch are simply absent).
// 2. Per tree and level, the tile's rows are kept in order of their present node ("positions"),
//    so the rows at one node are a run. Each warp takes an equal share of consecutive positions
//    (equal work, and no scan to cut runs into work items; a run that crosses shares is fetched
//    once per share), loads the w_in row of each node in its share into registers once and
//    computes the dot product of every row of its share at that node against x in shared
//    memory, one row after the other. Between levels each run splits stably into the rows that
//    went left, then those that went right; as the children of n are 2n+1 and 2n+2, the rows
//    stay in node order.
// 3. The x tile is then dead: its memory holds compute_t sums for a chunk of output columns. Each
//    thread owns columns, sweeps each level's positions in node order, fetches w_out[node, column]
//    once per run and adds act * w to the sum of every row of the run.
//
// Each row's arithmetic is the warp-per-row kernel's: the same lane split of each dot product
// (w_in in registers in place of x; a product is commutative), the same butterfly, bias and
// rounding, and each output element summed from 0 over trees, then levels, in compute_t and
// rounded once per tree group. With the same tree groups the results have the same bits.

// Positions and rows of a tile are stored in one byte each (kernel_plan.TILE_MAX_ROWS).
#define FFF_TILE_MAX_ROWS 128
// Output columns per thread in one chunk at most: their w_out values stay in registers
// (kernel_plan.TILE_COLUMN_GROUPS).
#define FFF_TILE_COLUMN_GROUPS 4

// The block's dynamic shared memory in the tiled kernel, as kernel_plan.tiled_shared_bytes sizes it.
// `entries` = tree_count * levels * tile_rows; arrays by position index that level's node order.
struct TileLayout {
    unsigned char* tile;  // the x tile (rows, d_in) scalar_t; after the walk, sums (rows, out_columns) compute_t
    compute_t* acts;      // (tree_count, levels, tile_rows): activated logit of the row at each position
    int* nodes;           // (tree_count, levels, tile_rows): node of each position
    int* children;        // (tile_rows): the child each position's row goes to, at the present level
    int* run_begin;       // (2, tile_rows): first position of each position's run, by the level's parity
    int* run_end;         // (2, tile_rows): one past its last position
    unsigned char* rows;  // (tree_count, levels, tile_rows): row within the tile at each position
};

__device__ __forceinline__ TileLayout tile_layout(unsigned char* shared, int tile_rows, int tree_count, int levels,
                                                  int d_in, int out_columns) {
    const long long x_bytes = static_cast<long long>(tile_rows) * d_in * sizeof(scalar_t);
    const long long sum_bytes = static_cast<long long>(tile_rows) * out_columns * sizeof(compute_t);
    // 16-byte aligned, like the block's base, so every later array is aligned for its type.
    const long long tile_bytes = ((x_bytes > sum_bytes ? x_bytes : sum_bytes) + 15) / 16 * 16;
    const long long entries = static_cast<long long>(tree_count) * levels * tile_rows;
    TileLayout layout;
    layout.tile = shared;
    layout.acts = reinterpret_cast<compute_t*>(shared + tile_bytes);
    layout.nodes = reinterpret_cast<int*>(layout.acts + entries);
    layout.children = layout.nodes + entries;
    layout.run_begin = layout.children + tile_rows;
    layout.run_end = layout.run_begin + 2 * tile_rows;
    layout.rows = reinterpret_cast<unsigned char*>(layout.run_end + 2 * tile_rows);
    return layout;
}

// Copies `elements` consecutive elements of x into the tile: a tile's rows are consecutive in x,
// so it is one span, moved in 16-byte vectors when the rows allow (FFF_VEC_IN > 1).
__device__ __forceinline__ void load_tile(const scalar_t* __restrict__ x_span, int elements, scalar_t* tile) {
    for (int i = static_cast<int>(threadIdx.x) * FFF_VEC_IN; i < elements;
         i += static_cast<int>(blockDim.x) * FFF_VEC_IN) {
        store_vec<FFF_VEC_IN>(tile, i, load_vec<FFF_VEC_IN>(x_span, i));
    }
}

// Level 0 of a tree: every row at the root, positions in row order, one run.
__device__ __forceinline__ void start_walk(const TileLayout& layout, long long level_base, int count) {
    for (int p = static_cast<int>(threadIdx.x); p < count; p += static_cast<int>(blockDim.x)) {
        layout.rows[level_base + p] = static_cast<unsigned char>(p);
        layout.nodes[level_base + p] = 0;
        layout.run_begin[p] = 0;
        layout.run_end[p] = count;
    }
}

// One level's logits: this warp takes positions [warp * share, +share) and loads each node's w_in
// row into registers once for the run of its positions at that node. Lane 0 records each
// position's activated logit and child.
__device__ __forceinline__ void tile_level_logits(const TileLayout& layout, long long level_base,
                                                  const scalar_t* __restrict__ w_tree,
                                                  const scalar_t* __restrict__ b_tree, int count, int d_in, int warp,
                                                  int warps, int lane) {
    const scalar_t* tile = reinterpret_cast<const scalar_t*>(layout.tile);
    const int share = (count + warps - 1) / warps;
    const int first = warp * share;
    const int last = first + share < count ? first + share : count;
    RowInput weights{};  // loaded at the first position: every share starts a run
    int loaded = -1;
    for (int p = first; p < last; ++p) {
        const int node = layout.nodes[level_base + p];
        if (node != loaded) {  // the same in every lane: all read the same position
            weights.load(w_tree + static_cast<long long>(node) * d_in, d_in, lane);
            loaded = node;
        }
        const scalar_t* x_row = tile + static_cast<long long>(layout.rows[level_base + p]) * d_in;
        const compute_t logit = finish_logit(warp_sum(weights.partial_dot(x_row, d_in, lane)), b_tree, node);
        if (lane == 0) {
            layout.acts[level_base + p] = fff_activate(logit);
            layout.children[p] = child(node, logit);
        }
    }
}

// A left child (2n+1) is odd, a right child (2n+2) even.
__device__ __forceinline__ int is_left_child(int node) { return node & 1; }

// The next level's positions: each run splits into the rows that went left, then those that went
// right, each keeping its order, so the next level's positions are in node order again and each
// child's rows are a run. `parity` picks the run bounds of the present level (the other half of
// run_begin / run_end receives the next level's).
__device__ __forceinline__ void order_next_level(const TileLayout& layout, long long level_base,
                                                 long long next_base, int parity, int tile_rows, int count) {
    const int* begins = layout.run_begin + parity * tile_rows;
    const int* ends = layout.run_end + parity * tile_rows;
    int* next_begins = layout.run_begin + (1 - parity) * tile_rows;
    int* next_ends = layout.run_end + (1 - parity) * tile_rows;
    for (int p = static_cast<int>(threadIdx.x); p < count; p += static_cast<int>(blockDim.x)) {
        const int begin = begins[p];
        const int end = ends[p];
        int lefts = 0;
        int lefts_before = 0;
        for (int q = begin; q < end; ++q) {
            const int left = is_left_child(layout.children[q]);
            lefts += left;
            lefts_before += q < p ? left : 0;
        }
        const int node = layout.children[p];
        const bool left = is_left_child(node);
        const int target = left ? begin + lefts_before : begin + lefts + (p - begin - lefts_before);
        layout.rows[next_base + target] = layout.rows[level_base + p];
        layout.nodes[next_base + target] = node;
        next_begins[target] = left ? begin : begin + lefts;
        next_ends[target] = left ? begin + lefts : end;
    }
}

// Walks the tile's `count` rows through tree `t` of the group, recording every level's positions,
// nodes and activated logits. Every phase ends with __syncthreads (the first one also orders the
// tile's load before its first read), so the walk ends with all of it visible to the block.
__device__ __forceinline__ void walk_tile_tree(const TileLayout& layout, const scalar_t* __restrict__ w_tree,
                                               const scalar_t* __restrict__ b_tree, int t, int levels, int tile_rows,
                                               int count, int d_in, int warp, int warps, int lane) {
    const long long tree_base = static_cast<long long>(t) * levels * tile_rows;
    start_walk(layout, tree_base, count);
    __syncthreads();
    for (int level = 0; level < levels; ++level) {
        const long long level_base = tree_base + static_cast<long long>(level) * tile_rows;
        tile_level_logits(layout, level_base, w_tree, b_tree, count, d_in, warp, warps, lane);
        __syncthreads();
        if (level + 1 < levels) {
            order_next_level(layout, level_base, level_base + tile_rows, level & 1, tile_rows, count);
            __syncthreads();
        }
    }
}

// The tile's output, chunk by chunk of `out_columns` columns, in the x tile's memory. This
// thread owns columns chunk + g * blockDim.x + threadIdx.x (g < out_columns / blockDim.x) of
// every row, so no other thread touches its sums and the sweep needs no barrier. Per element:
// 0, then act * w added over trees, then levels, in compute_t; stored (or added to y) once.
__device__ __forceinline__ void sum_tile_output(const TileLayout& layout, const scalar_t* __restrict__ w_out,
                                                scalar_t* __restrict__ y_tile, int count, int levels, int d_out,
                                                int tree_begin, int tree_count, int accumulate, int tile_rows,
                                                int out_columns) {
    compute_t* sums = reinterpret_cast<compute_t*>(layout.tile);  // (count, out_columns)
    const int threads = static_cast<int>(blockDim.x);
    const int thread = static_cast<int>(threadIdx.x);
    const int groups = out_columns / threads;
    const long long nodes_per_tree = (2LL << (levels - 1)) - 1;
    for (int chunk = 0; chunk < d_out; chunk += out_columns) {
        for (int r = 0; r < count; ++r) {
            for (int g = 0; g < groups; ++g) sums[r * out_columns + g * threads + thread] = 0;
        }
        for (int t = 0; t < tree_count; ++t) {
            const scalar_t* w_tree = w_out + (tree_begin + static_cast<long long>(t)) * nodes_per_tree * d_out;
            for (int level = 0; level < levels; ++level) {
                const long long level_base = (static_cast<long long>(t) * levels + level) * tile_rows;
                compute_t w[FFF_TILE_COLUMN_GROUPS];
                int loaded = -1;
                for (int p = 0; p < count; ++p) {
                    const int node = layout.nodes[level_base + p];
                    if (node != loaded) {  // once per run of rows at one node
#pragma unroll
                        for (int g = 0; g < FFF_TILE_COLUMN_GROUPS; ++g) {
                            const int column = chunk + g * threads + thread;
                            w[g] = g < groups && column < d_out
                                       ? to_compute(w_tree[static_cast<long long>(node) * d_out + column])
                                       : compute_t(0);
                        }
                        loaded = node;
                    }
                    const compute_t act = layout.acts[level_base + p];
                    compute_t* row_sums = sums + layout.rows[level_base + p] * out_columns + thread;
#pragma unroll
                    for (int g = 0; g < FFF_TILE_COLUMN_GROUPS; ++g) {
                        if (g < groups) row_sums[g * threads] += act * w[g];
                    }
                }
            }
        }
        for (int r = 0; r < count; ++r) {
            for (int g = 0; g < groups; ++g) {
                const int column = chunk + g * threads + thread;
                if (column >= d_out) continue;
                const compute_t sum = sums[r * out_columns + g * threads + thread];
                scalar_t* out = y_tile + static_cast<long long>(r) * d_out + column;
                *out = accumulate ? to_storage(to_compute(*out) + sum) : to_storage(sum);
            }
        }
    }
}

// Fused FFF, tiled: y[row] (=, or += when accumulate) sum over trees [tree_begin, tree_begin +
// tree_count) and levels of act(logit) * w_out[tree, node], one block per tile of `tile_rows`
// (a power of two, 8 to FFF_TILE_MAX_ROWS) consecutive rows, tiles strided over the grid.
// `out_columns`, a multiple of blockDim.x of at most FFF_TILE_COLUMN_GROUPS * blockDim.x, is the
// output chunk. Dynamic shared memory: tile_layout.
extern "C" __global__ void __launch_bounds__(FFF_WARPS_PER_BLOCK * FFF_WARP)
fff_forward_tiled(const scalar_t* __restrict__ x, const scalar_t* __restrict__ w_in,
                  const scalar_t* __restrict__ b_in, const scalar_t* __restrict__ w_out, scalar_t* __restrict__ y,
                  long long rows, int depth, int d_in, int d_out, int tree_begin, int tree_count, int accumulate,
                  int tile_rows, int out_columns) {
    FFF_DECLARE_SHARED(fff_shared);
    const int lane = static_cast<int>(threadIdx.x) % FFF_WARP;
    const int warp = static_cast<int>(threadIdx.x) / FFF_WARP;
    const int warps = static_cast<int>(blockDim.x) / FFF_WARP;
    const int levels = depth + 1;
    const long long nodes_per_tree = (2LL << depth) - 1;
    const TileLayout layout = tile_layout(fff_shared, tile_rows, tree_count, levels, d_in, out_columns);
    const long long tiles = (rows + tile_rows - 1) / tile_rows;

    for (long long tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
        const long long first_row = tile * tile_rows;
        const int count = rows - first_row < tile_rows ? static_cast<int>(rows - first_row) : tile_rows;
        load_tile(x + first_row * d_in, count * d_in, reinterpret_cast<scalar_t*>(layout.tile));
        for (int t = 0; t < tree_count; ++t) {
            const long long tree = tree_begin + t;
            const scalar_t* w_tree = w_in + tree * nodes_per_tree * d_in;
            const scalar_t* b_tree = FFF_HAS_BIAS ? b_in + tree * nodes_per_tree : b_in;
            walk_tile_tree(layout, w_tree, b_tree, t, levels, tile_rows, count, d_in, warp, warps, lane);
        }
        // The walk ended with a barrier: the x tile is dead and its memory becomes the output sums.
        sum_tile_output(layout, w_out, y + first_row * d_out, count, levels, d_out, tree_begin, tree_count,
                        accumulate, tile_rows, out_columns);
        // The next tile's x overwrites the sums.
        __syncthreads();
    }
}

// Conditional matrix multiplication: the logit and node of every level of every tree.
// Lane `level` keeps that level's result, so a tree's path (levels <= 32) is
// written by consecutive lanes in one coalesced store each.
extern "C" __global__ void __launch_bounds__(FFF_WARPS_PER_BLOCK * FFF_WARP)
fff_conditional_matmul(const scalar_t* __restrict__ x, const scalar_t* __restrict__ w_in,
                       const scalar_t* __restrict__ b_in, scalar_t* __restrict__ logits,
                       long long* __restrict__ path, long long rows, int trees, int depth, int d_in) {
    const int lane = static_cast<int>(threadIdx.x) % FFF_WARP;
    const int warp = static_cast<int>(threadIdx.x) / FFF_WARP;
    const int warps = static_cast<int>(blockDim.x) / FFF_WARP;
    const int levels = depth + 1;
    const long long nodes_per_tree = (2LL << depth) - 1;

    for (long long row = static_cast<long long>(blockIdx.x) * warps + warp; row < rows;
         row += static_cast<long long>(gridDim.x) * warps) {
        RowInput input;
        input.load(x + row * d_in, d_in, lane);
        for (int tree = 0; tree < trees; ++tree) {
            const scalar_t* w_tree = w_in + static_cast<long long>(tree) * nodes_per_tree * d_in;
            const scalar_t* b_tree = FFF_HAS_BIAS ? b_in + static_cast<long long>(tree) * nodes_per_tree : b_in;
            compute_t my_logit = 0;
            int my_node = 0;
            int node = 0;
            for (int level = 0; level < levels; ++level) {
                const compute_t logit = node_logit(input, w_tree, b_tree, node, d_in, lane);
                if (lane == level) {
                    my_logit = logit;
                    my_node = node;
                }
                node = child(node, logit);
            }
            if (lane < levels) {
                const long long out = (row * trees + tree) * levels + lane;
                logits[out] = to_storage(my_logit);
                path[out] = my_node;
            }
        }
    }
}

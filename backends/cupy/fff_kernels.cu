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
// w_out rows in registers: y is written once per row, in one launch.

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

// The logit of `node` in the tree whose weights start at w_tree / b_tree; identical in every lane.
__device__ __forceinline__ compute_t node_logit(const RowInput& input, const scalar_t* __restrict__ w_tree,
                                                const scalar_t* __restrict__ b_tree, int node, int d_in, int lane) {
    compute_t logit = warp_sum(input.partial_dot(w_tree + static_cast<long long>(node) * d_in, d_in, lane));
#if FFF_HAS_BIAS
    logit += to_compute(b_tree[node]);
#else
    (void)b_tree;
#endif
    // Round to the stored dtype (a no-op but for the 16-bit ones), so that the branch, the
    // activation and the reported logit all see the same value.
    return to_compute(to_storage(logit));
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

// CPU emulation of fff_kernels.cu, for the tests only (never shipped, never used by the backend).
//
// It compiles the kernel source unchanged with g++ and runs every CUDA thread of
// a launch as a POSIX thread: threadIdx/blockIdx are thread-local, a warp's
// shuffles and __syncwarp meet at a per-warp barrier, __syncthreads at a barrier
// of the whole block, and the block's dynamic shared memory is a poisoned heap
// buffer followed by a canary that a write past its end would change. The tests
// call the exported emulate_* functions through ctypes with the geometry kernel_plan computes,
// so host plan and kernel are checked together, on any CPU. Only C headers are
// used, which keeps each compile of a variant short.
//
// Build (the test does this): g++ -std=c++17 -O1 -shared -fPIC -pthread
//   -I<this directory> <the -D options of kernel_plan.compile_options> cpu_emulation.cpp
//
// A warp-collective reached by some lanes of a warp but not all, or a
// __syncthreads reached by some threads of a block but not all, would hang a
// real GPU or give undefined results; here the barrier times out, the launch
// reports failure, and every later wait at that barrier returns at once.

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};

namespace fff_emulation {

constexpr int kWarp = 32;
constexpr int kTimeoutSeconds = 20;
constexpr size_t kCanaryBytes = 16;

// Generation-counting barrier of `parties` threads (a warp's 32 lanes, or a block), with a timeout that breaks it.
class Barrier {
   public:
    explicit Barrier(int parties) : parties_(parties) {
        pthread_mutex_init(&mutex_, nullptr);
        pthread_cond_init(&ready_, nullptr);
    }
    ~Barrier() {
        pthread_cond_destroy(&ready_);
        pthread_mutex_destroy(&mutex_);
    }
    Barrier(const Barrier&) = delete;
    Barrier& operator=(const Barrier&) = delete;

    void arrive_and_wait() {
        pthread_mutex_lock(&mutex_);
        if (!broken_) {
            const unsigned long long generation = generation_;
            if (++arrived_ == parties_) {
                arrived_ = 0;
                ++generation_;
                pthread_cond_broadcast(&ready_);
            } else {
                timespec deadline;
                clock_gettime(CLOCK_REALTIME, &deadline);
                deadline.tv_sec += kTimeoutSeconds;
                while (generation_ == generation && !broken_) {
                    if (pthread_cond_timedwait(&ready_, &mutex_, &deadline) == ETIMEDOUT) {
                        broken_ = true;
                        pthread_cond_broadcast(&ready_);
                    }
                }
            }
        }
        pthread_mutex_unlock(&mutex_);
    }
    bool broken() {
        pthread_mutex_lock(&mutex_);
        const bool result = broken_;
        pthread_mutex_unlock(&mutex_);
        return result;
    }

   private:
    const int parties_;
    pthread_mutex_t mutex_;
    pthread_cond_t ready_;
    int arrived_ = 0;
    unsigned long long generation_ = 0;
    bool broken_ = false;
};

struct Warp {
    Barrier barrier{kWarp};
    unsigned long long slots[kWarp] = {};
};

thread_local unsigned char* shared_memory = nullptr;
thread_local Warp* warp = nullptr;
thread_local Barrier* block_barrier = nullptr;

}  // namespace fff_emulation

thread_local dim3 threadIdx;
thread_local dim3 blockIdx;
// Written before a launch's threads start and only read by them.
dim3 blockDim;
dim3 gridDim;

inline float __uint_as_float(unsigned int bits) {
    float value;
    memcpy(&value, &bits, sizeof value);
    return value;
}
inline unsigned int __float_as_uint(float value) {
    unsigned int bits;
    memcpy(&bits, &value, sizeof bits);
    return bits;
}

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define FFF_DECLARE_SHARED(name) unsigned char* name = fff_emulation::shared_memory

template <class T>
T __shfl_xor_sync(unsigned /*mask: the kernels shuffle across the full warp*/, T value, int lane_mask) {
    static_assert(sizeof(T) <= sizeof(unsigned long long), "shuffle of at most 8 bytes");
    fff_emulation::Warp* warp = fff_emulation::warp;
    const int lane = static_cast<int>(threadIdx.x) % fff_emulation::kWarp;
    unsigned long long bits = 0;
    memcpy(&bits, &value, sizeof(T));
    warp->slots[lane] = bits;
    warp->barrier.arrive_and_wait();
    T other;
    memcpy(&other, &warp->slots[lane ^ lane_mask], sizeof(T));
    warp->barrier.arrive_and_wait();
    return other;
}

inline void __syncwarp(unsigned = 0xffffffffu) { fff_emulation::warp->barrier.arrive_and_wait(); }

inline void __syncthreads() { fff_emulation::block_barrier->arrive_and_wait(); }

#include "fff_kernels.cu"

namespace fff_emulation {

template <class Kernel>
struct ThreadStart {
    const Kernel* kernel;
    unsigned thread;
    unsigned block;
    unsigned char* shared;
    Warp* warp;
    Barrier* block_barrier;
};

template <class Kernel>
void* run_thread(void* argument) {
    const ThreadStart<Kernel>* start = static_cast<const ThreadStart<Kernel>*>(argument);
    threadIdx = dim3{start->thread, 0, 0};
    blockIdx = dim3{start->block, 0, 0};
    fff_emulation::shared_memory = start->shared;
    fff_emulation::warp = start->warp;
    fff_emulation::block_barrier = start->block_barrier;
    (*start->kernel)();
    return nullptr;
}

// Runs `kernel` for every thread of a grid x block launch, one block at a time.
// Returns 0, 1 when a warp's collectives or the block's barriers did not line up, 2 for a bad block
// size, 3 when threads could not start, 4 when a block wrote past its dynamic shared memory.
template <class Kernel>
int launch(unsigned grid, unsigned block, unsigned long long shared_bytes, const Kernel& kernel) {
    if (block == 0 || block % kWarp != 0 || block > 1024) return 2;
    gridDim = dim3{grid, 1, 1};
    blockDim = dim3{block, 1, 1};
    int status = 0;
    const unsigned warps = block / kWarp;
    // 0xCD everywhere: a read of shared memory the kernel did not write shows up as garbage, and
    // the kCanaryBytes past the end show a write beyond it.
    const size_t shared_size = static_cast<size_t>(shared_bytes) + kCanaryBytes;
    unsigned char* shared = static_cast<unsigned char*>(aligned_alloc(16, (shared_size + 15) / 16 * 16));
    pthread_t* threads = static_cast<pthread_t*>(calloc(block, sizeof(pthread_t)));
    ThreadStart<Kernel>* starts = static_cast<ThreadStart<Kernel>*>(calloc(block, sizeof(ThreadStart<Kernel>)));
    for (unsigned b = 0; b < grid && status == 0; ++b) {
        memset(shared, 0xCD, shared_size);
        Warp* warp_states = new Warp[warps];
        Barrier block_barrier(static_cast<int>(block));
        unsigned started = 0;
        for (unsigned t = 0; t < block; ++t) {
            starts[t] = ThreadStart<Kernel>{&kernel, t, b, shared, &warp_states[t / kWarp], &block_barrier};
            if (pthread_create(&threads[t], nullptr, run_thread<Kernel>, &starts[t]) != 0) {
                status = 3;  // the lanes already started time out at their first collective
                break;
            }
            ++started;
        }
        for (unsigned t = 0; t < started; ++t) pthread_join(threads[t], nullptr);
        for (unsigned w = 0; w < warps; ++w) {
            if (status == 0 && warp_states[w].barrier.broken()) status = 1;
        }
        if (status == 0 && block_barrier.broken()) status = 1;
        for (size_t i = static_cast<size_t>(shared_bytes); i < shared_size; ++i) {
            if (status == 0 && shared[i] != 0xCD) status = 4;
        }
        delete[] warp_states;
    }
    free(starts);
    free(threads);
    free(shared);
    return status;
}

}  // namespace fff_emulation

extern "C" int emulate_fff_forward(unsigned grid, unsigned block, unsigned long long shared_bytes, const scalar_t* x,
                                   const scalar_t* w_in, const scalar_t* b_in, const scalar_t* w_out, scalar_t* y,
                                   long long rows, int depth, int d_in, int d_out, int tree_begin, int tree_count,
                                   int accumulate) {
    return fff_emulation::launch(grid, block, shared_bytes, [=] {
        fff_forward(x, w_in, b_in, w_out, y, rows, depth, d_in, d_out, tree_begin, tree_count, accumulate);
    });
}

extern "C" int emulate_fff_conditional_matmul(unsigned grid, unsigned block, const scalar_t* x, const scalar_t* w_in,
                                              const scalar_t* b_in, scalar_t* logits, long long* path,
                                              long long rows, int trees, int depth, int d_in) {
    return fff_emulation::launch(grid, block, 0, [=] {
        fff_conditional_matmul(x, w_in, b_in, logits, path, rows, trees, depth, d_in);
    });
}

extern "C" int emulate_fff_top_walk(unsigned grid, unsigned block, const scalar_t* x, const scalar_t* w_in,
                                    const scalar_t* b_in, compute_t* top_acts, int* top_path, int* keys,
                                    long long rows, int depth, int d_in, int tree_begin, int tree_count,
                                    int top_levels) {
    return fff_emulation::launch(grid, block, 0, [=] {
        fff_top_walk(x, w_in, b_in, top_acts, top_path, keys, rows, depth, d_in, tree_begin, tree_count, top_levels);
    });
}

extern "C" int emulate_fff_forward_sorted(unsigned grid, unsigned block, unsigned long long shared_bytes,
                                          const scalar_t* x, const scalar_t* w_in, const scalar_t* b_in,
                                          const scalar_t* w_out, scalar_t* y, const long long* order,
                                          const compute_t* top_acts, const int* top_path, long long rows, int depth,
                                          int d_in, int d_out, int tree_begin, int tree_count, int accumulate,
                                          int top_levels) {
    return fff_emulation::launch(grid, block, shared_bytes, [=] {
        fff_forward_sorted(x, w_in, b_in, w_out, y, order, top_acts, top_path, rows, depth, d_in, d_out, tree_begin,
                           tree_count, accumulate, top_levels);
    });
}

extern "C" int emulate_fff_forward_tiled(unsigned grid, unsigned block, unsigned long long shared_bytes,
                                         const scalar_t* x, const scalar_t* w_in, const scalar_t* b_in,
                                         const scalar_t* w_out, scalar_t* y, long long rows, int depth, int d_in,
                                         int d_out, int tree_begin, int tree_count, int accumulate, int tile_rows,
                                         int out_columns) {
    return fff_emulation::launch(grid, block, shared_bytes, [=] {
        fff_forward_tiled(x, w_in, b_in, w_out, y, rows, depth, d_in, d_out, tree_begin, tree_count, accumulate,
                          tile_rows, out_columns);
    });
}

#if FFF_STORAGE == 3 || FFF_STORAGE == 4
// The 16-bit conversions of the kernel source, exported so the tests can compare them with numpy's and torch's.
extern "C" void emulate_to_storage(const float* values, scalar_t* out, long long count) {
    for (long long i = 0; i < count; ++i) out[i] = to_storage(values[i]);
}

extern "C" void emulate_to_compute(const scalar_t* values, float* out, long long count) {
    for (long long i = 0; i < count; ++i) out[i] = to_compute(values[i]);
}
#endif

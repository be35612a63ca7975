// What every .cu file of the library shares: error reporting, the device state (stream, staging
// buffers), the one lock, small device helpers (f16 -> f32, warp and block reductions).
#pragma once

#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>

#include <mutex>
#include <vector>

#include "edgeinfer_cuda.h"

namespace ei {

// ---- errors: a sentence per host thread, returned by ei_cuda_last_error()
int fail(const char *fmt, ...);
int check(cudaError_t e, const char *what);

#define EI_TRY(expr)                         \
    do {                                     \
        int ei_rc_ = (expr);                 \
        if (ei_rc_ != 0) return ei_rc_;      \
    } while (0)
#define EI_CUDA(call) EI_TRY(::ei::check((call), #call))
// after a kernel launch: a bad configuration shows up here, not at the next call
#define EI_LAUNCHED(name) EI_TRY(::ei::check(cudaGetLastError(), "launching " name))

// ---- device state
std::mutex &lock();
cudaStream_t stream();
// the device chosen by ei_cuda_init made current for the calling host thread; an error before init
int enter();

// One call's copies: inputs gathered into a pinned buffer and sent in one copy, outputs received in
// one copy into a pinned buffer and handed out, device scratch that never crosses. Offsets are
// 256-byte aligned. Use: add every input, output and scratch; send(); launch with dev_*(); receive().
class Transfer {
  public:
    size_t in(const void *host, size_t n_bytes);
    size_t out(void *host, size_t n_bytes);
    size_t scratch(size_t n_bytes);
    int send();
    int receive();
    template <class T>
    T *din(size_t off) const { return reinterpret_cast<T *>(d_in_ + off); }
    template <class T>
    T *dout(size_t off) const { return reinterpret_cast<T *>(d_out_ + off); }
    template <class T>
    T *dscratch(size_t off) const { return reinterpret_cast<T *>(d_scratch_ + off); }

  private:
    struct Part {
        const void *src;
        void *dst;
        size_t n, off;
    };
    std::vector<Part> ins_, outs_;
    size_t in_total_ = 0, out_total_ = 0, scratch_total_ = 0;
    char *d_in_ = nullptr, *d_out_ = nullptr, *d_scratch_ = nullptr;
};

constexpr size_t ALIGN = 256;
inline size_t align_up(size_t n) { return (n + ALIGN - 1) / ALIGN * ALIGN; }

// ---- device helpers
__device__ __forceinline__ float f16_to_f32(uint16_t h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

__device__ __forceinline__ float load_f16(const uint8_t *p) {  // p 2-byte aligned
    return f16_to_f32(*reinterpret_cast<const uint16_t *>(p));
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum (or max) over the whole block, returned to every thread; `red` holds 32 floats of shared memory.
// Every thread of the block must call it.
__device__ __forceinline__ float block_sum(float v, float *red) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = (blockDim.x + 31) >> 5;
    v = warp_sum(v);
    __syncthreads();  // red may still be read by a previous reduction
    if (lane == 0) red[warp] = v;
    __syncthreads();
    float s = 0.0f;
    for (int i = 0; i < n_warps; ++i) s += red[i];  // the same order in every thread
    return s;
}

__device__ __forceinline__ float block_max(float v, float *red) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = (blockDim.x + 31) >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) red[warp] = v;
    __syncthreads();
    float m = red[0];
    for (int i = 1; i < n_warps; ++i) m = fmaxf(m, red[i]);
    return m;
}

}  // namespace ei

// Quantized matrix products y (n_tokens, n_rows) = x (n_tokens, n_cols) @ W.T, W in ggml blocks on
// the device, x and y float32. Weights are dequantized in registers, 32 values (a unit) at a time, and
// multiplied in float32 with float32 activations (no 8-bit activations: closer to the float reference
// than llama.cpp's own path).
//
// - decode and small batches (n_tokens <= MMV_MAX_TOKENS): one warp per weight row; lane i takes the
//   row's units i, i + 32, ...; each unit, once dequantized, is used for every token; a warp sum at the end.
// - prefill: 128 rows x 64 tokens per block of 256 threads; per unit, half the threads dequantize a row
//   each into shared memory while the other half load the 64 tokens' 32 values; then each thread
//   accumulates an 8 x 4 tile of outputs.
#include "quant.cuh"

namespace ei {

constexpr int MMV_MAX_TOKENS = 8;
constexpr int MMV_WARPS = 4;  // rows per block

template <int T, int NT>
__global__ void __launch_bounds__(MMV_WARPS * 32)
    mmv_kernel(const uint8_t *__restrict__ w, int64_t row_bytes, int n_units, const float *__restrict__ x,
               int64_t n_cols, float *__restrict__ y, int64_t n_rows) {
    const int lane = threadIdx.x & 31;
    const int64_t row = (int64_t)blockIdx.x * MMV_WARPS + (threadIdx.x >> 5);
    if (row >= n_rows) return;  // a whole warp leaves together
    const uint8_t *wr = w + row * row_bytes;
    float acc[NT];
#pragma unroll
    for (int t = 0; t < NT; ++t) acc[t] = 0.0f;
    for (int u = lane; u < n_units; u += 32) {
        float v[32];
        dequant_unit<T>(wr, u, v);
#pragma unroll
        for (int t = 0; t < NT; ++t) {
            const float4 *xp = reinterpret_cast<const float4 *>(x + t * n_cols + (int64_t)u * 32);
            float s = 0.0f;
#pragma unroll
            for (int i = 0; i < 8; ++i) {
                const float4 xv = __ldg(xp + i);
                s += v[4 * i] * xv.x + v[4 * i + 1] * xv.y + v[4 * i + 2] * xv.z + v[4 * i + 3] * xv.w;
            }
            acc[t] += s;
        }
    }
#pragma unroll
    for (int t = 0; t < NT; ++t) {
        const float s = warp_sum(acc[t]);
        if (lane == 0) y[t * n_rows + row] = s;
    }
}

constexpr int MM_ROWS = 128, MM_TOKENS = 64, MM_THREADS = 256;

template <int T>
__global__ void __launch_bounds__(MM_THREADS)
    mmm_kernel(const uint8_t *__restrict__ w, int64_t row_bytes, int n_units, const float *__restrict__ x,
               int64_t n_cols, float *__restrict__ y, int64_t n_rows, int64_t n_tokens) {
    __shared__ __align__(16) float ws[32][MM_ROWS];    // [value in unit][row]
    __shared__ __align__(16) float xs[32][MM_TOKENS];  // [value in unit][token]
    const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
    const int64_t row0 = (int64_t)blockIdx.x * MM_ROWS, tok0 = (int64_t)blockIdx.y * MM_TOKENS;
    float acc[8][4];
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;

    for (int u = 0; u < n_units; ++u) {
        if (tid < MM_ROWS) {
            const int64_t r = row0 + tid;
            float v[32];
            if (r < n_rows) {
                dequant_unit<T>(w + r * row_bytes, u, v);
            } else {
#pragma unroll
                for (int i = 0; i < 32; ++i) v[i] = 0.0f;
            }
#pragma unroll
            for (int i = 0; i < 32; ++i) ws[i][tid] = v[i];
        } else {
            const int t2 = tid - MM_ROWS;  // 128 threads, 512 float4 (64 tokens x 8)
#pragma unroll
            for (int k = 0; k < 4; ++k) {
                const int idx = t2 + k * 128, tok = idx & 63, q = idx >> 6;
                float4 xv = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
                if (tok0 + tok < n_tokens)
                    xv = __ldg(reinterpret_cast<const float4 *>(x + (tok0 + tok) * n_cols + (int64_t)u * 32) + q);
                xs[4 * q][tok] = xv.x;
                xs[4 * q + 1][tok] = xv.y;
                xs[4 * q + 2][tok] = xv.z;
                xs[4 * q + 3][tok] = xv.w;
            }
        }
        __syncthreads();
#pragma unroll 8
        for (int k = 0; k < 32; ++k) {
            const float4 a0 = *reinterpret_cast<const float4 *>(&ws[k][tx * 4]);
            const float4 a1 = *reinterpret_cast<const float4 *>(&ws[k][64 + tx * 4]);
            const float4 b = *reinterpret_cast<const float4 *>(&xs[k][ty * 4]);
            const float a[8] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
            const float bb[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
            for (int i = 0; i < 8; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) acc[i][j] += a[i] * bb[j];
        }
        __syncthreads();
    }
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        const int64_t t = tok0 + ty * 4 + j;
        if (t >= n_tokens) continue;
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            const int64_t r = row0 + (i < 4 ? tx * 4 + i : 64 + tx * 4 + (i - 4));
            if (r < n_rows) y[t * n_rows + r] = acc[i][j];
        }
    }
}

template <int T, int NT>
static void launch_mmv_nt(const uint8_t *w, int64_t row_bytes, int n_units, const float *x, int64_t n_cols,
                          float *y, int64_t n_rows) {
    const unsigned blocks = (unsigned)((n_rows + MMV_WARPS - 1) / MMV_WARPS);
    mmv_kernel<T, NT><<<blocks, MMV_WARPS * 32, 0, stream()>>>(w, row_bytes, n_units, x, n_cols, y, n_rows);
}

template <int T>
static int launch(const uint8_t *w, int64_t row_bytes, int64_t n_cols, const float *x, int64_t n_tokens, float *y,
                  int64_t n_rows) {
    const int n_units = (int)(n_cols / 32);
    if (n_tokens <= MMV_MAX_TOKENS) {
        switch (n_tokens) {
            case 1: launch_mmv_nt<T, 1>(w, row_bytes, n_units, x, n_cols, y, n_rows); break;
            case 2: launch_mmv_nt<T, 2>(w, row_bytes, n_units, x, n_cols, y, n_rows); break;
            case 3: launch_mmv_nt<T, 3>(w, row_bytes, n_units, x, n_cols, y, n_rows); break;
            case 4: launch_mmv_nt<T, 4>(w, row_bytes, n_units, x, n_cols, y, n_rows); break;
            case 5: launch_mmv_nt<T, 5>(w, row_bytes, n_units, x, n_cols, y, n_rows); break;
            case 6: launch_mmv_nt<T, 6>(w, row_bytes, n_units, x, n_cols, y, n_rows); break;
            case 7: launch_mmv_nt<T, 7>(w, row_bytes, n_units, x, n_cols, y, n_rows); break;
            default: launch_mmv_nt<T, 8>(w, row_bytes, n_units, x, n_cols, y, n_rows); break;
        }
        EI_LAUNCHED("the matrix-vector kernel");
        return 0;
    }
    if ((n_tokens + MM_TOKENS - 1) / MM_TOKENS > 65535)
        return fail("%lld tokens are more than one matmul takes; split the batch", (long long)n_tokens);
    dim3 grid((unsigned)((n_rows + MM_ROWS - 1) / MM_ROWS), (unsigned)((n_tokens + MM_TOKENS - 1) / MM_TOKENS));
    mmm_kernel<T><<<grid, MM_THREADS, 0, stream()>>>(w, row_bytes, n_units, x, n_cols, y, n_rows, n_tokens);
    EI_LAUNCHED("the matrix-matrix kernel");
    return 0;
}

// bytes of one row of n_cols values, 0 for a type without a kernel
static int64_t row_size(int type, int64_t n_cols) {
    switch (type) {
        case T_F32: return n_cols * 4;
        case T_F16: case T_BF16: return n_cols * 2;
        case T_Q4_0: case T_IQ4_NL: return n_cols / 32 * 18;
        case T_Q4_1: return n_cols / 32 * 20;
        case T_Q5_0: return n_cols / 32 * 22;
        case T_Q5_1: return n_cols / 32 * 24;
        case T_Q8_0: return n_cols / 32 * 34;
        case T_Q4_K: return n_cols / 256 * 144;
        case T_Q5_K: return n_cols / 256 * 176;
        case T_Q6_K: return n_cols / 256 * 210;
        default: return 0;
    }
}

static int64_t block_values(int type) {
    switch (type) {
        case T_Q4_K: case T_Q5_K: case T_Q6_K: return 256;
        default: return 32;
    }
}

}  // namespace ei

using namespace ei;

extern "C" {

int ei_cuda_type_supported(int ggml_type) { return row_size(ggml_type, 256) > 0 ? 1 : 0; }

int ei_cuda_matmul(int ggml_type, const void *w_handle, int64_t n_rows, int64_t n_cols, int64_t row_bytes,
                   const float *x, int64_t n_tokens, float *y) {
    if (!ei_cuda_type_supported(ggml_type)) return fail("no CUDA matmul kernel for ggml type %d", ggml_type);
    if (n_rows <= 0 || n_cols <= 0 || n_tokens < 0)
        return fail("matmul: bad sizes (%lld rows, %lld columns, %lld tokens)", (long long)n_rows,
                    (long long)n_cols, (long long)n_tokens);
    if (n_cols % 32 || n_cols % block_values(ggml_type))
        return fail("matmul: %lld columns are not a whole number of blocks of ggml type %d", (long long)n_cols,
                    ggml_type);
    if (row_bytes != row_size(ggml_type, n_cols))
        return fail("matmul: rows of %lld bytes, but %lld columns of ggml type %d take %lld", (long long)row_bytes,
                    (long long)n_cols, ggml_type, (long long)row_size(ggml_type, n_cols));
    if (n_tokens == 0) return 0;
    std::lock_guard<std::mutex> guard(lock());
    EI_TRY(enter());
    Transfer tr;
    const size_t ox = tr.in(x, sizeof(float) * n_tokens * n_cols);
    const size_t oy = tr.out(y, sizeof(float) * n_tokens * n_rows);
    EI_TRY(tr.send());
    const uint8_t *w = static_cast<const uint8_t *>(w_handle);
    const float *dx = tr.din<float>(ox);
    float *dy = tr.dout<float>(oy);
    int rc = 0;
    switch (ggml_type) {
        case T_F32: rc = launch<T_F32>(w, row_bytes, n_cols, dx, n_tokens, dy, n_rows); break;
        case T_F16: rc = launch<T_F16>(w, row_bytes, n_cols, dx, n_tokens, dy, n_rows); break;
        case T_BF16: rc = launch<T_BF16>(w, row_bytes, n_cols, dx, n_tokens, dy, n_rows); break;
        case T_Q4_0: rc = launch<T_Q4_0>(w, row_bytes, n_cols, dx, n_tokens, dy, n_rows); break;
        case T_Q4_1: rc = launch<T_Q4_1>(w, row_bytes, n_cols, dx, n_tokens, dy, n_rows); break;
        case T_Q5_0: rc = launch<T_Q5_0>(w, row_bytes, n_cols, dx, n_tokens, dy, n_rows); break;
        case T_Q5_1: rc = launch<T_Q5_1>(w, row_bytes, n_cols, dx, n_tokens, dy, n_rows); break;
        case T_Q8_0: rc = launch<T_Q8_0>(w, row_bytes, n_cols, dx, n_tokens, dy, n_rows); break;
        case T_IQ4_NL: rc = launch<T_IQ4_NL>(w, row_bytes, n_cols, dx, n_tokens, dy, n_rows); break;
        case T_Q4_K: rc = launch<T_Q4_K>(w, row_bytes, n_cols, dx, n_tokens, dy, n_rows); break;
        case T_Q5_K: rc = launch<T_Q5_K>(w, row_bytes, n_cols, dx, n_tokens, dy, n_rows); break;
        case T_Q6_K: rc = launch<T_Q6_K>(w, row_bytes, n_cols, dx, n_tokens, dy, n_rows); break;
    }
    EI_TRY(rc);
    return tr.receive();
}

}  // extern "C"

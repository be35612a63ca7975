// The small ops of a layer: RMSNorm, rotary embedding (NORM and NEOX pairs), the Q/K/V split with
// QK-norm and rope, gated activations. Their meaning is edgeinfer/kernels/numpy_ops.py's.
#include "common.cuh"

namespace ei {

constexpr int OPS_THREADS = 256;

// one block per row: x / sqrt(mean(x^2) + eps) * w
__global__ void __launch_bounds__(OPS_THREADS)
    rms_norm_kernel(const float *__restrict__ x, const float *__restrict__ w, int64_t d, float eps,
                    float *__restrict__ out) {
    __shared__ float red[32];
    const float *xr = x + blockIdx.x * d;
    float *yr = out + blockIdx.x * d;
    float s = 0.0f;
    for (int64_t i = threadIdx.x; i < d; i += blockDim.x) s += xr[i] * xr[i];
    s = block_sum(s, red);
    const float scale = 1.0f / sqrtf(s / (float)d + eps);
    for (int64_t i = threadIdx.x; i < d; i += blockDim.x) yr[i] = xr[i] * scale * w[i];
}

// rotate one head: src (head_dim) -> dst, with the token's cos / sin rows (n_rot / 2)
__device__ __forceinline__ void rope_head(const float *src, float *dst, const float *c, const float *s, int head_dim,
                                          int n_rot, bool neox) {
    const int half = n_rot / 2;
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
        const int i0 = neox ? i : 2 * i, i1 = neox ? i + half : 2 * i + 1;
        const float x0 = src[i0], x1 = src[i1];
        dst[i0] = x0 * c[i] - x1 * s[i];
        dst[i1] = x0 * s[i] + x1 * c[i];
    }
    for (int i = n_rot + threadIdx.x; i < head_dim; i += blockDim.x) dst[i] = src[i];
}

// grid (n_head, n): x (n, n_head, head_dim)
__global__ void rope_kernel(const float *__restrict__ x, const float *__restrict__ cos, const float *__restrict__ sin,
                            int n_head, int head_dim, int n_rot, int neox, float *__restrict__ out) {
    const int64_t t = blockIdx.y;
    const int64_t off = (t * n_head + blockIdx.x) * head_dim;
    rope_head(x + off, out + off, cos + t * (n_rot / 2), sin + t * (n_rot / 2), head_dim, n_rot, neox != 0);
}

// grid (H + 2 Hkv, n); dynamic shared memory: max(head_dim, head_dim_v) floats. Slot h < H is query head
// h, then the key heads, then the value heads (copied).
__global__ void qkv_kernel(const float *__restrict__ qkv, int n_head, int n_head_kv, int head_dim, int head_dim_v,
                           const float *__restrict__ cos, const float *__restrict__ sin, int n_rot, int neox,
                           const float *__restrict__ q_norm, const float *__restrict__ k_norm, float eps,
                           float *__restrict__ q, float *__restrict__ k, float *__restrict__ v) {
    extern __shared__ float buf[];
    __shared__ float red[32];
    const int64_t t = blockIdx.y;
    const int slot = blockIdx.x;
    const int64_t width = (int64_t)(n_head + n_head_kv) * head_dim + (int64_t)n_head_kv * head_dim_v;
    const float *row = qkv + t * width;
    if (slot >= n_head + n_head_kv) {  // V: a copy
        const int h = slot - n_head - n_head_kv;
        const float *src = row + (int64_t)(n_head + n_head_kv) * head_dim + (int64_t)h * head_dim_v;
        float *dst = v + (t * n_head_kv + h) * head_dim_v;
        for (int i = threadIdx.x; i < head_dim_v; i += blockDim.x) dst[i] = src[i];
        return;
    }
    const bool is_q = slot < n_head;
    const int h = is_q ? slot : slot - n_head;
    const float *src = row + (int64_t)slot * head_dim;
    const float *nw = is_q ? q_norm : k_norm;
    float *dst = is_q ? q + (t * n_head + h) * head_dim : k + (t * n_head_kv + h) * head_dim;
    for (int i = threadIdx.x; i < head_dim; i += blockDim.x) buf[i] = src[i];
    if (nw != nullptr) {  // block-uniform branch
        float s = 0.0f;
        for (int i = threadIdx.x; i < head_dim; i += blockDim.x) s += buf[i] * buf[i];
        s = block_sum(s, red);  // synchronizes: buf is complete
        const float scale = 1.0f / sqrtf(s / (float)head_dim + eps);
        for (int i = threadIdx.x; i < head_dim; i += blockDim.x) buf[i] = buf[i] * scale * nw[i];
    }
    __syncthreads();
    const int half = n_rot / 2;
    rope_head(buf, dst, cos + t * half, sin + t * half, head_dim, n_rot, neox != 0);
}

__device__ __forceinline__ float silu(float x) { return x / (1.0f + expf(-x)); }

__device__ __forceinline__ float gelu_tanh(float x) {
    const float c = 0.7978845608028654f;  // sqrt(2 / pi)
    return 0.5f * x * (1.0f + tanhf(c * (x + 0.044715f * x * x * x)));
}

__global__ void glu_kernel(const float *__restrict__ gu, int64_t n, int64_t f, int act, float *__restrict__ out) {
    const int64_t total = n * f;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t r = i / f, c = i - r * f;
        const float g = gu[r * 2 * f + c], u = gu[r * 2 * f + f + c];
        out[i] = (act == 0 ? silu(g) : gelu_tanh(g)) * u;
    }
}

static unsigned grid_for(int64_t n, int threads) {
    int64_t b = (n + threads - 1) / threads;
    return (unsigned)(b < 1 ? 1 : (b > 65536 ? 65536 : b));
}

}  // namespace ei

using namespace ei;

extern "C" {

int ei_cuda_rms_norm(const float *x, const float *w, int64_t n_rows, int64_t d, float eps, float *out) {
    if (n_rows < 0 || d <= 0) return fail("rms_norm: bad sizes (%lld rows of %lld)", (long long)n_rows, (long long)d);
    if (n_rows == 0) return 0;
    if (n_rows > 0x7fffffff) return fail("rms_norm: too many rows (%lld)", (long long)n_rows);
    std::lock_guard<std::mutex> guard(lock());
    EI_TRY(enter());
    Transfer tr;
    const size_t ox = tr.in(x, sizeof(float) * n_rows * d), ow = tr.in(w, sizeof(float) * d);
    const size_t oy = tr.out(out, sizeof(float) * n_rows * d);
    EI_TRY(tr.send());
    rms_norm_kernel<<<(unsigned)n_rows, OPS_THREADS, 0, stream()>>>(tr.din<float>(ox), tr.din<float>(ow), d, eps,
                                                                    tr.dout<float>(oy));
    EI_LAUNCHED("rms_norm");
    return tr.receive();
}

int ei_cuda_rope(const float *x, const float *cos, const float *sin, int64_t n, int n_head, int head_dim, int n_rot,
                 int neox, float *out) {
    if (n < 0 || n_head <= 0 || head_dim <= 0 || n_rot < 0 || n_rot > head_dim || n_rot % 2)
        return fail("rope: bad sizes (n %lld, %d heads of %d, n_rot %d)", (long long)n, n_head, head_dim, n_rot);
    if (n == 0) return 0;
    if (n > 65535) return fail("rope: at most 65535 tokens per call, not %lld", (long long)n);
    std::lock_guard<std::mutex> guard(lock());
    EI_TRY(enter());
    Transfer tr;
    const size_t half = (size_t)n_rot / 2;
    const size_t ox = tr.in(x, sizeof(float) * n * n_head * head_dim);
    const size_t oc = tr.in(cos, sizeof(float) * n * half), os = tr.in(sin, sizeof(float) * n * half);
    const size_t oy = tr.out(out, sizeof(float) * n * n_head * head_dim);
    EI_TRY(tr.send());
    rope_kernel<<<dim3((unsigned)n_head, (unsigned)n), 64, 0, stream()>>>(
        tr.din<float>(ox), tr.din<float>(oc), tr.din<float>(os), n_head, head_dim, n_rot, neox, tr.dout<float>(oy));
    EI_LAUNCHED("rope");
    return tr.receive();
}

int ei_cuda_qkv(const float *qkv, int64_t n, int n_head, int n_head_kv, int head_dim, int head_dim_v,
                const float *cos, const float *sin, int n_rot, int neox, const float *q_norm, const float *k_norm,
                float eps, float *q, float *k, float *v) {
    if (n < 0 || n_head <= 0 || n_head_kv <= 0 || head_dim <= 0 || head_dim_v <= 0 || n_rot < 0 ||
        n_rot > head_dim || n_rot % 2)
        return fail("qkv: bad sizes (n %lld, %d/%d heads of %d/%d, n_rot %d)", (long long)n, n_head, n_head_kv,
                    head_dim, head_dim_v, n_rot);
    if ((q_norm == nullptr) != (k_norm == nullptr)) return fail("qkv: give both QK-norm weights or neither");
    if (n == 0) return 0;
    if (n > 65535) return fail("qkv: at most 65535 tokens per call, not %lld", (long long)n);
    std::lock_guard<std::mutex> guard(lock());
    EI_TRY(enter());
    Transfer tr;
    const size_t half = (size_t)n_rot / 2;
    const size_t width = (size_t)(n_head + n_head_kv) * head_dim + (size_t)n_head_kv * head_dim_v;
    const size_t oi = tr.in(qkv, sizeof(float) * n * width);
    const size_t oc = tr.in(cos, sizeof(float) * n * half), os = tr.in(sin, sizeof(float) * n * half);
    size_t oqn = 0, okn = 0;
    if (q_norm) {
        oqn = tr.in(q_norm, sizeof(float) * head_dim);
        okn = tr.in(k_norm, sizeof(float) * head_dim);
    }
    const size_t oq = tr.out(q, sizeof(float) * n * n_head * head_dim);
    const size_t ok = tr.out(k, sizeof(float) * n * n_head_kv * head_dim);
    const size_t ov = tr.out(v, sizeof(float) * n * n_head_kv * head_dim_v);
    EI_TRY(tr.send());
    const int shared = (int)sizeof(float) * (head_dim > head_dim_v ? head_dim : head_dim_v);
    if (shared > 48 * 1024) return fail("qkv: heads of %d values are too large", head_dim);
    qkv_kernel<<<dim3((unsigned)(n_head + 2 * n_head_kv), (unsigned)n), 128, shared, stream()>>>(
        tr.din<float>(oi), n_head, n_head_kv, head_dim, head_dim_v, tr.din<float>(oc), tr.din<float>(os), n_rot,
        neox, q_norm ? tr.din<float>(oqn) : nullptr, k_norm ? tr.din<float>(okn) : nullptr, eps,
        tr.dout<float>(oq), tr.dout<float>(ok), tr.dout<float>(ov));
    EI_LAUNCHED("qkv");
    return tr.receive();
}

int ei_cuda_glu(const float *gu, int64_t n, int64_t f, int act, float *out) {
    if (n < 0 || f <= 0 || (act != 0 && act != 1))
        return fail("glu: bad arguments (n %lld, f %lld, act %d)", (long long)n, (long long)f, act);
    if (n == 0) return 0;
    std::lock_guard<std::mutex> guard(lock());
    EI_TRY(enter());
    Transfer tr;
    const size_t oi = tr.in(gu, sizeof(float) * n * 2 * f);
    const size_t oo = tr.out(out, sizeof(float) * n * f);
    EI_TRY(tr.send());
    glu_kernel<<<grid_for(n * f, OPS_THREADS), OPS_THREADS, 0, stream()>>>(tr.din<float>(oi), n, f, act,
                                                                           tr.dout<float>(oo));
    EI_LAUNCHED("glu");
    return tr.receive();
}

}  // extern "C"

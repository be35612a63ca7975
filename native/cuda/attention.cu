// Attention over a paged KV cache: one block per (query head, query token). Keys are taken 128 at a
// time (one per thread: score = scale q.k, or -inf where the causal mask or the sliding window hides
// it), with a running maximum and sum (online softmax), so any number of cached tokens fits in a fixed
// amount of shared memory; each thread owns up to ATT_MAX_DV_PER_THREAD output values of the head.
#include <math.h>

#include "common.cuh"

namespace ei {

constexpr int ATT_THREADS = 128;
constexpr int ATT_MAX_DV_PER_THREAD = 4;  // head_dim_v <= 512

__global__ void __launch_bounds__(ATT_THREADS)
    attention_kernel(const float *__restrict__ q, const float *__restrict__ k, const float *__restrict__ v,
                     const int32_t *__restrict__ q_pos, const int32_t *__restrict__ kv_pos,
                     const int32_t *__restrict__ cells, int n_head, int head_dim, int n_head_kv, int head_dim_v,
                     int64_t n_kv, int n_swa, float scale, float *__restrict__ out) {
    extern __shared__ float q_sh[];  // head_dim
    __shared__ float p_sh[ATT_THREADS];
    __shared__ int64_t cell_sh[ATT_THREADS];
    __shared__ float red[32];
    const int h = blockIdx.x, tid = threadIdx.x;
    const int64_t i = blockIdx.y;
    const int kvh = h / (n_head / n_head_kv);
    const float *qr = q + (i * n_head + h) * head_dim;
    for (int d = tid; d < head_dim; d += ATT_THREADS) q_sh[d] = qr[d];
    __syncthreads();
    const int64_t qp = q_pos[i];

    float acc[ATT_MAX_DV_PER_THREAD];
#pragma unroll
    for (int c = 0; c < ATT_MAX_DV_PER_THREAD; ++c) acc[c] = 0.0f;
    float m = -INFINITY, l = 0.0f;

    for (int64_t j0 = 0; j0 < n_kv; j0 += ATT_THREADS) {
        const int64_t j = j0 + tid;
        float s = -INFINITY;
        int64_t cell = 0;
        if (j < n_kv) {
            const int64_t delta = qp - (int64_t)kv_pos[j];
            if (delta >= 0 && (n_swa <= 0 || delta < n_swa)) {
                cell = cells ? (int64_t)cells[j] : j;
                const float *kr = k + (cell * n_head_kv + kvh) * head_dim;
                float dot = 0.0f;
                for (int d = 0; d < head_dim; ++d) dot += q_sh[d] * kr[d];
                s = dot * scale;
            }
        }
        const float tile_max = block_max(s, red);
        if (tile_max == -INFINITY) continue;  // nothing visible in this tile (the same in every thread)
        const float m_new = fmaxf(m, tile_max);
        const float corr = expf(m - m_new);  // 0 while m is -inf (acc and l are 0 then)
        const float p = (s == -INFINITY) ? 0.0f : expf(s - m_new);
        p_sh[tid] = p;
        cell_sh[tid] = cell;
        const float tile_sum = block_sum(p, red);  // its barriers also publish p_sh and cell_sh
        l = l * corr + tile_sum;
        m = m_new;
        const int n_tile = (int)(n_kv - j0 < ATT_THREADS ? n_kv - j0 : ATT_THREADS);
#pragma unroll
        for (int c = 0; c < ATT_MAX_DV_PER_THREAD; ++c) {
            const int d = tid + c * ATT_THREADS;
            if (d < head_dim_v) {  // no break: acc stays in registers (constant indices)
                float a = acc[c] * corr;
                for (int jj = 0; jj < n_tile; ++jj) {
                    const float pj = p_sh[jj];
                    if (pj != 0.0f) a += pj * v[(cell_sh[jj] * n_head_kv + kvh) * head_dim_v + d];
                }
                acc[c] = a;
            }
        }
        __syncthreads();  // p_sh and cell_sh are rewritten by the next tile
    }
    float *o = out + (i * n_head + h) * head_dim_v;
    const float inv = l > 0.0f ? 1.0f / l : 0.0f;
#pragma unroll
    for (int c = 0; c < ATT_MAX_DV_PER_THREAD; ++c) {
        const int d = tid + c * ATT_THREADS;
        if (d < head_dim_v) o[d] = acc[c] * inv;
    }
}

}  // namespace ei

using namespace ei;

extern "C" {

int ei_cuda_attention(const float *q, const float *k, const float *v, const int32_t *q_pos, const int32_t *kv_pos,
                      const int32_t *cells, int64_t n, int n_head, int head_dim, int64_t n_cells, int n_head_kv,
                      int head_dim_v, int64_t n_kv, int n_swa, float scale, float *out) {
    if (n < 0 || n_head <= 0 || n_head_kv <= 0 || n_head % n_head_kv || head_dim <= 0 || head_dim_v <= 0 ||
        n_kv < 0 || n_cells < 0)
        return fail("attention: bad sizes (n %lld, %d/%d heads of %d/%d, %lld tokens in %lld cells)", (long long)n,
                    n_head, n_head_kv, head_dim, head_dim_v, (long long)n_kv, (long long)n_cells);
    if (head_dim_v > ATT_THREADS * ATT_MAX_DV_PER_THREAD)
        return fail("attention: value heads of %d are more than %d", head_dim_v, ATT_THREADS * ATT_MAX_DV_PER_THREAD);
    if (head_dim * (int)sizeof(float) > 32 * 1024) return fail("attention: heads of %d values are too large", head_dim);
    if (cells == nullptr && n_cells != n_kv)
        return fail("attention: without cells, the cache holds exactly the sequence's %lld tokens", (long long)n_kv);
    if (n > 65535) return fail("attention: at most 65535 queries per call, not %lld", (long long)n);
    if (n == 0) return 0;
    if (cells) {
        for (int64_t j = 0; j < n_kv; ++j)
            if (cells[j] < 0 || cells[j] >= n_cells)
                return fail("attention: cell %d of token %lld lies outside the cache's %lld cells", cells[j],
                            (long long)j, (long long)n_cells);
    }
    std::lock_guard<std::mutex> guard(lock());
    EI_TRY(enter());
    Transfer tr;
    const size_t oq = tr.in(q, sizeof(float) * n * n_head * head_dim);
    const size_t ok = tr.in(k, sizeof(float) * n_cells * n_head_kv * head_dim);
    const size_t ov = tr.in(v, sizeof(float) * n_cells * n_head_kv * head_dim_v);
    const size_t oqp = tr.in(q_pos, sizeof(int32_t) * n);
    const size_t okp = tr.in(kv_pos, sizeof(int32_t) * n_kv);
    const size_t oc = cells ? tr.in(cells, sizeof(int32_t) * n_kv) : 0;
    const size_t oo = tr.out(out, sizeof(float) * n * n_head * head_dim_v);
    EI_TRY(tr.send());
    attention_kernel<<<dim3((unsigned)n_head, (unsigned)n), ATT_THREADS, sizeof(float) * head_dim, stream()>>>(
        tr.din<float>(oq), tr.din<float>(ok), tr.din<float>(ov), tr.din<int32_t>(oqp), tr.din<int32_t>(okp),
        cells ? tr.din<int32_t>(oc) : nullptr, n_head, head_dim, n_head_kv, head_dim_v, n_kv, n_swa, scale,
        tr.dout<float>(oo));
    EI_LAUNCHED("attention");
    return tr.receive();
}

}  // extern "C"

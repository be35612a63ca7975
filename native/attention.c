/* Attention on the native pool: see native_attention in edgeinfer_native.h.
 *
 * out[t, h*Dv:(h+1)*Dv] = sum_j p_j v[j, g] / sum_j p_j, p_j = e^(scale q[t,h].k[j,g] - max) over the cells j
 * that query t sees (0 <= q_pos[t] - kv_pos[j] < n_swa, or no upper bound when n_swa <= 0), g = h / group.
 * With sinks (gpt-oss), head h's sink logit sinks[h] joins the max and adds e^(sinks[h] - max) to the
 * denominator, after the cells' sum. With softcap > 0 (Gemma 2), each score s = scale q.k becomes
 * softcap * tanh(s * (1 / softcap)) before the mask and the softmax.
 *
 * Each (token, head) output is computed by one thread, by a sequence of operations that depends only on
 * the head size and the cell index j (never on the batch, on n_kv, on the item it falls in or on the
 * thread): a token gives the same bits alone or in a batch, on any number of threads. The softmax sum is
 * kept in 8 lanes indexed by j mod 8 (masked cells add an exact 0), the V rows are summed in cell order.
 *
 * K and V rows in f16 or q8_0 (native_attn_args.kv_type) are converted to float32 as they are loaded, 8
 * values at a time (vcvtph2ps; int8 -> float times the block's d, exact): the same operations then follow
 * as on float32 rows, so a cache in f16 or q8_0 gives the bits its values give in float32.
 */
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "edgeinfer_native.h"
#include "threadpool.h"

#if defined(NATIVE_X86)
#include <immintrin.h>
#define AFN __attribute__((target("avx2,fma,f16c")))
#define AINL static inline __attribute__((always_inline, target("avx2,fma,f16c")))
#endif

/* cells of attention work (tokens x query heads x cells) under which one thread does it all */
#define ATTN_PARALLEL_MIN_WORK 256
/* how many cells ahead the AVX2 code prefetches K and V rows */
#define ATTN_PREFETCH_CELLS 8

typedef struct {
    native_attn_args a;
    int64_t krow, vrow;  /* bytes of a K row and of a V row */
    int64_t group, stride;  /* query heads per KV head; floats of scratch per thread */
    int64_t n_items, heads_per_item, parts;  /* an item: heads_per_item heads of one part of a KV group */
    float *scratch;
    int avx2;
    _Atomic int64_t next;
} attn_job;

static inline int visible(int32_t qp, int32_t kp, int n_swa) {
    const int32_t delta = qp - kp;
    return delta >= 0 && (n_swa <= 0 || delta < n_swa);
}

/* head h's sink logit, -inf for none (then it changes neither the max nor the sum) */
static inline float sink_of(const native_attn_args *a, int64_t h) { return a->sinks ? a->sinks[h] : -INFINITY; }

/* tanh(x) ~ x P(x^2) / Q(x^2) on |x| <= TANH_CLAMP (beyond, tanh is 1 in float32), x itself below TANH_TINY:
 * the rational form of Eigen's generic_fast_tanh_float, as the Numba op's _tanh32 */
#define TANH_CLAMP 7.90531110763549805f
#define TANH_TINY 0.0004f
#define TANH_P13 -2.76076847742355e-16f
#define TANH_P11 2.00018790482477e-13f
#define TANH_P9 -8.60467152213735e-11f
#define TANH_P7 5.12229709037114e-08f
#define TANH_P5 1.48572235717979e-05f
#define TANH_P3 6.37261928875436e-04f
#define TANH_P1 4.89352455891786e-03f
#define TANH_Q6 1.19825839466702e-06f
#define TANH_Q4 1.18534705686654e-04f
#define TANH_Q2 2.26843463243900e-03f
#define TANH_Q0 4.89352518554385e-03f

/* -- portable ---------------------------------------------------------------------------------------- */

static float tanh_scalar(float x) {
    float xc = x < -TANH_CLAMP ? -TANH_CLAMP : x;
    xc = xc > TANH_CLAMP ? TANH_CLAMP : xc;
    const float x2 = xc * xc;
    float p = TANH_P13;
    p = p * x2 + TANH_P11;
    p = p * x2 + TANH_P9;
    p = p * x2 + TANH_P7;
    p = p * x2 + TANH_P5;
    p = p * x2 + TANH_P3;
    p = p * x2 + TANH_P1;
    float q = TANH_Q6;
    q = q * x2 + TANH_Q4;
    q = q * x2 + TANH_Q2;
    q = q * x2 + TANH_Q0;
    return fabsf(x) < TANH_TINY ? x : p * xc / q;
}

/* a score s = scale q.k, soft-capped when the call has a cap */
static inline float capped(const native_attn_args *a, float s) {
    return a->softcap > 0.0f ? tanh_scalar(s * (1.0f / a->softcap)) * a->softcap : s;
}

/* value e of a K/V row in format t, as float32 (exact) */
static inline float kv_at(const uint8_t *row, int64_t e, int t) {
    if (t == GT_F16) {
        uint16_t h;
        memcpy(&h, row + 2 * e, 2);
        return native_fp16_to_fp32(h);
    }
    if (t == GT_Q8_0) {
        const uint8_t *b = row + e / QK * (2 + QK);
        return native_f16_at(b) * (float)(int8_t)b[2 + e % QK];
    }
    float f;
    memcpy(&f, row + 4 * e, 4);
    return f;
}

/* e^x as the Numba op's _exp32: 0 below -87.3 (a masked -inf gives 0), inf above 88.7 */
static float exp_scalar(float x) {
    float xc = x < -87.3f ? -87.3f : x;
    xc = xc > 88.7f ? 88.7f : xc;
    const float n = floorf(xc * 1.4426950408889634f + 0.5f);
    const float r = xc - n * 0.693145751953125f - n * 1.428606765330187e-06f;
    float p = 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    const float y = p * native_f32_from_bits((uint32_t)((int32_t)n + 127) << 23);
    if (x < -87.3f) return 0.0f;
    if (x > 88.7f) return INFINITY;
    return y;
}

static void head_scalar(const attn_job *job, int64_t t, int64_t h, float *s) {
    const native_attn_args *a = &job->a;
    const int64_t D = a->D, Dv = a->Dv, g = h / job->group;
    const float *qh = a->q + (t * a->H + h) * D;
    const int32_t qp = a->q_pos[t];
    const int kt = a->kv_type;
    float *o = a->out + (t * a->H + h) * Dv;
    float best = -INFINITY;
    for (int64_t j = 0; j < a->n_kv; j++) {
        if (!visible(qp, a->kv_pos[j], a->n_swa)) { s[j] = -INFINITY; continue; }
        const uint8_t *kr = (const uint8_t *)a->k + ((int64_t)a->cells[j] * a->Hkv + g) * job->krow;
        float d = 0.0f;
        for (int64_t e = 0; e < D; e++) d += qh[e] * kv_at(kr, e, kt);
        s[j] = capped(a, d * a->scale);
        if (s[j] > best) best = s[j];
    }
    for (int64_t e = 0; e < Dv; e++) o[e] = 0.0f;
    if (best == -INFINITY) return;  /* sees no cell */
    const float sink = sink_of(a, h);
    if (sink > best) best = sink;
    float total = 0.0f;
    for (int64_t j = 0; j < a->n_kv; j++) {
        const float p = s[j] == -INFINITY ? 0.0f : exp_scalar(s[j] - best);
        total += p;
        if (p == 0.0f) continue;
        const uint8_t *vr = (const uint8_t *)a->v + ((int64_t)a->cells[j] * a->Hkv + g) * job->vrow;
        for (int64_t e = 0; e < Dv; e++) o[e] += p * kv_at(vr, e, kt);
    }
    if (sink != -INFINITY) total += exp_scalar(sink - best);
    const float inv = 1.0f / total;
    for (int64_t e = 0; e < Dv; e++) o[e] *= inv;
}

/* -- AVX2 / FMA -------------------------------------------------------------------------------------- */

#if defined(NATIVE_X86)

/* _exp32, 8 lanes: the same reduction and polynomial (FMA Horner), the same ends */
AINL __m256 exp8(__m256 x) {
    const __m256 lo = _mm256_set1_ps(-87.3f), hi = _mm256_set1_ps(88.7f);
    const __m256 xc = _mm256_min_ps(_mm256_max_ps(x, lo), hi);
    const __m256 n = _mm256_floor_ps(_mm256_fmadd_ps(xc, _mm256_set1_ps(1.4426950408889634f), _mm256_set1_ps(0.5f)));
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145751953125f), xc);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.428606765330187e-06f), r);
    __m256 p = _mm256_set1_ps(1.0f / 720.0f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(n), _mm256_set1_epi32(127)), 23);
    __m256 y = _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
    y = _mm256_andnot_ps(_mm256_cmp_ps(x, lo, _CMP_LT_OQ), y);  /* below -87.3 (and -inf): 0 */
    return _mm256_blendv_ps(y, _mm256_set1_ps(INFINITY), _mm256_cmp_ps(x, hi, _CMP_GT_OQ));
}

/* tanh_scalar, 8 lanes: the same clamp and polynomials (FMA Horner) */
AINL __m256 tanh8(__m256 x) {
    const __m256 hi = _mm256_set1_ps(TANH_CLAMP), lo = _mm256_set1_ps(-TANH_CLAMP);
    const __m256 xc = _mm256_min_ps(_mm256_max_ps(x, lo), hi), x2 = _mm256_mul_ps(xc, xc);
    __m256 p = _mm256_fmadd_ps(_mm256_set1_ps(TANH_P13), x2, _mm256_set1_ps(TANH_P11));
    p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(TANH_P9));
    p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(TANH_P7));
    p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(TANH_P5));
    p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(TANH_P3));
    p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(TANH_P1));
    __m256 q = _mm256_fmadd_ps(_mm256_set1_ps(TANH_Q6), x2, _mm256_set1_ps(TANH_Q4));
    q = _mm256_fmadd_ps(q, x2, _mm256_set1_ps(TANH_Q2));
    q = _mm256_fmadd_ps(q, x2, _mm256_set1_ps(TANH_Q0));
    const __m256 y = _mm256_div_ps(_mm256_mul_ps(p, xc), q);
    const __m256 abs_x = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), x);
    return _mm256_blendv_ps(y, x, _mm256_cmp_ps(abs_x, _mm256_set1_ps(TANH_TINY), _CMP_LT_OQ));
}

/* the cache lines of n bytes from p into L1 */
AINL void prefetch_row(const uint8_t *p, int64_t n) {
    for (int64_t i = 0; i < n; i += 64) _mm_prefetch((const char *)(p + i), _MM_HINT_T0);
}

/* values e..e+7 of a K/V row in format t (a constant where it is inlined), as float32 (exact) */
AINL __m256 load8(const uint8_t *row, int64_t e, const int t) {
    if (t == GT_F16) return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(row + 2 * e)));
    if (t == GT_Q8_0) {
        const uint8_t *b = row + e / QK * (2 + QK);
        uint16_t h;
        memcpy(&h, b, 2);
        const __m256i q = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(b + 2 + e % QK)));
        return _mm256_mul_ps(_mm256_set1_ps(_cvtsh_ss(h)), _mm256_cvtepi32_ps(q));
    }
    return _mm256_loadu_ps((const float *)row + e);
}

/* the byte of a K/V row in format t where value e's data starts (its block, for q8_0) */
AINL int64_t kv_offset(int64_t e, const int t) {
    return t == GT_F16 ? 2 * e : t == GT_Q8_0 ? e / QK * (2 + QK) : 4 * e;
}

/* the four sums of a0..a3, each by the same tree: ((x0+x1)+(x2+x3)) + ((x4+x5)+(x6+x7)) */
AINL __m128 reduce4(__m256 a0, __m256 a1, __m256 a2, __m256 a3) {
    const __m256 s = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
    return _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
}

AINL float hsum8(__m256 a) { return _mm_cvtss_f32(reduce4(a, a, a, a)); }

/* q.k of one cell, its tail (D not a multiple of 8) */
AINL float dot_tail(const float *qh, const uint8_t *kr, int64_t D8, int64_t D, const int t) {
    float d = 0.0f;
    for (int64_t e = D8; e < D; e++) d += qh[e] * kv_at(kr, e, t);
    return d;
}

/* Query t, heads h0..h0+nh-1 (1 <= nh <= 4) of one KV head g: they read each K and V row once, together.
 * s: 4 rows of job->stride floats. Every (head, cell) score is one FMA chain over the head size and the
 * same reduction tree (reduce4 is the same for each lane), every output value one FMA chain over the
 * cells in order: the same bits whichever heads share the call. */
AINL void heads_body(const attn_job *job, int64_t t, int64_t h0, const int nh, float *s, const int kt) {
    const native_attn_args *a = &job->a;
    const int64_t D = a->D, Dv = a->Dv, g = h0 / job->group, n_kv = a->n_kv, S = job->stride;
    const int64_t D8 = D & ~(int64_t)7, kstride = a->Hkv * job->krow, vstride = a->Hkv * job->vrow;
    const uint8_t *kg = (const uint8_t *)a->k + g * job->krow, *vg = (const uint8_t *)a->v + g * job->vrow;
    const int32_t *cells = a->cells;
    const int32_t qp = a->q_pos[t];
    const int n_swa = a->n_swa;
    const float scale = a->scale, softcap = a->softcap;
    const float *qh[4];
    float *sh[4], *o[4];
    for (int i = 0; i < 4; i++) {  /* lanes past nh repeat the last head (computed, never stored) */
        const int64_t ih = i < nh ? i : nh - 1, h = h0 + ih;
        qh[i] = a->q + (t * a->H + h) * D;
        sh[i] = s + ih * S;
        o[i] = a->out + (t * a->H + h) * Dv;
    }

    /* scores: 2 cells x 4 heads per step; -inf for the cells it does not see */
    int any = 0;
    int64_t j = 0;
    for (; j < n_kv; j += 2) {
        const int two = j + 1 < n_kv;
        const int m0 = visible(qp, a->kv_pos[j], n_swa), m1 = two && visible(qp, a->kv_pos[j + 1], n_swa);
        if (!(m0 | m1)) {
            for (int i = 0; i < nh; i++) {
                sh[i][j] = -INFINITY;
                if (two) sh[i][j + 1] = -INFINITY;
            }
            continue;
        }
        any = 1;
        const uint8_t *k0 = kg + cells[j] * kstride, *k1 = two ? kg + cells[j + 1] * kstride : k0;
        if (j + ATTN_PREFETCH_CELLS + 2 <= n_kv) {  /* the cache comes from DRAM in a decode: ask ahead */
            prefetch_row(kg + cells[j + ATTN_PREFETCH_CELLS] * kstride, job->krow);
            prefetch_row(kg + cells[j + 1 + ATTN_PREFETCH_CELLS] * kstride, job->krow);
        }
        __m256 a00 = _mm256_setzero_ps(), a01 = a00, a02 = a00, a03 = a00;
        __m256 a10 = a00, a11 = a00, a12 = a00, a13 = a00;
        for (int64_t e = 0; e < D8; e += 8) {
            const __m256 x0 = load8(k0, e, kt), x1 = load8(k1, e, kt);
            const __m256 q0 = _mm256_loadu_ps(qh[0] + e);
            const __m256 q1 = nh > 1 ? _mm256_loadu_ps(qh[1] + e) : q0;
            const __m256 q2 = nh > 2 ? _mm256_loadu_ps(qh[2] + e) : q0;
            const __m256 q3 = nh > 3 ? _mm256_loadu_ps(qh[3] + e) : q0;
            a00 = _mm256_fmadd_ps(q0, x0, a00);
            a10 = _mm256_fmadd_ps(q0, x1, a10);
            if (nh > 1) { a01 = _mm256_fmadd_ps(q1, x0, a01); a11 = _mm256_fmadd_ps(q1, x1, a11); }
            if (nh > 2) { a02 = _mm256_fmadd_ps(q2, x0, a02); a12 = _mm256_fmadd_ps(q2, x1, a12); }
            if (nh > 3) { a03 = _mm256_fmadd_ps(q3, x0, a03); a13 = _mm256_fmadd_ps(q3, x1, a13); }
        }
        float r[8];  /* lane i: head i's q.k with cell j, lane 4 + i with cell j + 1 */
        __m256 sc = _mm256_set_m128(reduce4(a10, a11, a12, a13), reduce4(a00, a01, a02, a03));
        if (D8 < D) {
            _mm256_storeu_ps(r, sc);
            for (int i = 0; i < nh; i++) {
                r[i] += dot_tail(qh[i], k0, D8, D, kt);
                r[4 + i] += dot_tail(qh[i], k1, D8, D, kt);
            }
            sc = _mm256_loadu_ps(r);
        }
        sc = _mm256_mul_ps(sc, _mm256_set1_ps(scale));
        if (softcap > 0.0f)
            sc = _mm256_mul_ps(tanh8(_mm256_mul_ps(sc, _mm256_set1_ps(1.0f / softcap))), _mm256_set1_ps(softcap));
        _mm256_storeu_ps(r, sc);
        for (int i = 0; i < nh; i++) {
            sh[i][j] = m0 ? r[i] : -INFINITY;
            if (two) sh[i][j + 1] = m1 ? r[4 + i] : -INFINITY;
        }
    }
    if (!any) {
        for (int i = 0; i < nh; i++)
            for (int64_t e = 0; e < Dv; e++) o[i][e] = 0.0f;
        return;
    }
    const int64_t n8 = (n_kv + 7) & ~(int64_t)7;

    /* per head: max, then p = e^(s - max) in place (masked cells: exactly 0), the sum in 8 lanes by j mod 8 */
    float inv[4];
    for (int i = 0; i < nh; i++) {
        float *si = sh[i];
        for (j = n_kv; j < n8; j++) si[j] = -INFINITY;  /* the scratch has room */
        __m256 mx = _mm256_set1_ps(-INFINITY);
        for (j = 0; j < n8; j += 8) mx = _mm256_max_ps(mx, _mm256_loadu_ps(si + j));
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        const float sink = sink_of(a, h0 + i);
        const float b = _mm_cvtss_f32(m4) > sink ? _mm_cvtss_f32(m4) : sink;
        const __m256 best = _mm256_set1_ps(b);
        __m256 sum = _mm256_setzero_ps();
        for (j = 0; j < n8; j += 8) {
            const __m256 p = exp8(_mm256_sub_ps(_mm256_loadu_ps(si + j), best));
            _mm256_storeu_ps(si + j, p);
            sum = _mm256_add_ps(sum, p);
        }
        float total = hsum8(sum);
        if (sink != -INFINITY) total += exp_scalar(sink - b);
        inv[i] = 1.0f / total;
    }
    for (int i = nh; i < 4; i++) inv[i] = inv[nh - 1];
    const float *s0 = sh[0], *s1 = sh[1], *s2 = sh[2], *s3 = sh[3];

    /* out = inv * sum_j p_j v_j, in cell order per output value: 16 values x 4 heads per pass over V */
    int64_t e0 = 0;
    for (; e0 + 16 <= Dv; e0 += 16) {
        __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00, c30 = c00, c31 = c00;
        for (j = 0; j < n_kv; j++) {
            if (s0[j] == 0.0f && (nh < 2 || s1[j] == 0.0f) && (nh < 3 || s2[j] == 0.0f) && (nh < 4 || s3[j] == 0.0f))
                continue;  /* a cell none of them sees */
            const uint8_t *vr = vg + cells[j] * vstride;
            if (j + ATTN_PREFETCH_CELLS < n_kv)
                _mm_prefetch((const char *)(vg + cells[j + ATTN_PREFETCH_CELLS] * vstride + kv_offset(e0, kt)), _MM_HINT_T0);
            const __m256 v0 = load8(vr, e0, kt), v1 = load8(vr, e0 + 8, kt);
            __m256 p = _mm256_set1_ps(s0[j]);
            c00 = _mm256_fmadd_ps(p, v0, c00); c01 = _mm256_fmadd_ps(p, v1, c01);
            if (nh > 1) {
                p = _mm256_set1_ps(s1[j]);
                c10 = _mm256_fmadd_ps(p, v0, c10); c11 = _mm256_fmadd_ps(p, v1, c11);
            }
            if (nh > 2) {
                p = _mm256_set1_ps(s2[j]);
                c20 = _mm256_fmadd_ps(p, v0, c20); c21 = _mm256_fmadd_ps(p, v1, c21);
            }
            if (nh > 3) {
                p = _mm256_set1_ps(s3[j]);
                c30 = _mm256_fmadd_ps(p, v0, c30); c31 = _mm256_fmadd_ps(p, v1, c31);
            }
        }
        const __m256 c[4][2] = {{c00, c01}, {c10, c11}, {c20, c21}, {c30, c31}};
        for (int i = 0; i < nh; i++) {
            const __m256 iv = _mm256_set1_ps(inv[i]);
            _mm256_storeu_ps(o[i] + e0, _mm256_mul_ps(c[i][0], iv));
            _mm256_storeu_ps(o[i] + e0 + 8, _mm256_mul_ps(c[i][1], iv));
        }
    }
    for (int i = 0; i < nh; i++) {
        const float *si = sh[i];
        for (int64_t e = e0; e + 8 <= Dv; e += 8) {
            __m256 c0 = _mm256_setzero_ps();
            for (j = 0; j < n_kv; j++)
                c0 = _mm256_fmadd_ps(_mm256_set1_ps(si[j]), load8(vg + cells[j] * vstride, e, kt), c0);
            _mm256_storeu_ps(o[i] + e, _mm256_mul_ps(c0, _mm256_set1_ps(inv[i])));
        }
        for (int64_t e = e0 + ((Dv - e0) & ~(int64_t)7); e < Dv; e++) {
            float c = 0.0f;
            for (j = 0; j < n_kv; j++) c += si[j] * kv_at(vg + cells[j] * vstride, e, kt);
            o[i][e] = c * inv[i];
        }
    }
}


/* nh and the K/V format constants in each: the lanes it does not use cost nothing, the loads are inlined */
#define HEADS_NH(kt)                                         \
    switch (nh) {                                            \
    case 1: heads_body(job, t, h0, 1, s, kt); break;         \
    case 2: heads_body(job, t, h0, 2, s, kt); break;         \
    case 3: heads_body(job, t, h0, 3, s, kt); break;         \
    default: heads_body(job, t, h0, 4, s, kt); break;        \
    }

AFN static void heads_avx2(const attn_job *job, int64_t t, int64_t h0, int nh, float *s) {
    switch (job->a.kv_type) {
    case GT_F16: HEADS_NH(GT_F16); break;
    case GT_Q8_0: HEADS_NH(GT_Q8_0); break;
    default: HEADS_NH(GT_F32); break;
    }
}
#endif

/* -- the job ----------------------------------------------------------------------------------------- */

/* one item of a job: heads_per_item query heads of one part of a KV group, for one token */
static void attn_item(const attn_job *job, int64_t i, float *s) {
    const int64_t per = job->heads_per_item, items_per_t = job->a.Hkv * job->parts;
    const int64_t t = i / items_per_t, r = i % items_per_t, g = r / job->parts;
    const int64_t h0 = g * job->group + (r % job->parts) * per;
    const int64_t h1 = h0 + per < (g + 1) * job->group ? h0 + per : (g + 1) * job->group;
    for (int64_t h = h0; h < h1; h += 4) {
#if defined(NATIVE_X86)
        if (job->avx2) { heads_avx2(job, t, h, h1 - h < 4 ? (int)(h1 - h) : 4, s); continue; }
#endif
        for (int64_t hh = h; hh < h1 && hh < h + 4; hh++) head_scalar(job, t, hh, s);
    }
}

static void attn_worker(void *p, int id, int n) {
    (void)n;
    attn_job *job = p;
    float *s = job->scratch + (int64_t)id * 4 * job->stride;
    for (;;) {
        const int64_t i = atomic_fetch_add_explicit(&job->next, 1, memory_order_relaxed);
        if (i >= job->n_items) break;
        attn_item(job, i, s);
    }
}

static float *attn_scratch;
static size_t attn_scratch_size;

int native_attention(const native_attn_args *a, int n_threads, int avx2) {
    if (a->n == 0) return 0;
    attn_job job;
    job.a = *a;
    job.group = a->H / a->Hkv;
    job.krow = native_kv_row_bytes(a->kv_type, a->D);
    job.vrow = native_kv_row_bytes(a->kv_type, a->Dv);
    job.avx2 = avx2;
    const int64_t work = a->n * a->H * a->n_kv;
    if (work < ATTN_PARALLEL_MIN_WORK) n_threads = 1;
    /* items: (token, KV head), its query heads reading the same K and V rows once; in a decode where those
     * are too few to share evenly between the threads, each group is cut into parts */
    int64_t parts = 1;
    const int64_t tg = a->n * a->Hkv;
    if (n_threads > 1)
        while (parts < job.group && tg * parts < 4 * n_threads && (tg * parts) % n_threads) parts++;
    job.heads_per_item = (job.group + parts - 1) / parts;
    job.parts = (job.group + job.heads_per_item - 1) / job.heads_per_item;
    job.n_items = tg * job.parts;
    if (n_threads > job.n_items) n_threads = (int)job.n_items;
    if (n_threads > TP_MAX_THREADS) n_threads = TP_MAX_THREADS;
    if (n_threads < 1) n_threads = 1;
    job.stride = (((a->n_kv + 7) & ~(int64_t)7) + 15) & ~(int64_t)15;  /* 64-byte rows */
    const size_t need = (size_t)job.stride * 4 * (size_t)n_threads * sizeof(float);
    if (need > attn_scratch_size) {
        free(attn_scratch);
        const size_t size = ((need + need / 4) + 4095) & ~(size_t)63;
        attn_scratch = aligned_alloc(64, size);
        attn_scratch_size = attn_scratch ? size : 0;
        if (!attn_scratch) return -1;
    }
    job.scratch = attn_scratch;
    atomic_store_explicit(&job.next, 0, memory_order_relaxed);
    if (n_threads == 1) attn_worker(&job, 0, 1);
    else tp_run(n_threads, attn_worker, &job);
    return 0;
}

/* -- several sequences at once (continuous batching) ----------------------------------------------- */

typedef struct {
    attn_job *jobs;
    const int64_t *first;  /* first[s]: the index of sequence s's first item; first[S]: all items */
    int S;
    int64_t stride;  /* the largest sequence's scratch row */
    float *scratch;
    _Atomic int64_t next;
} attn_many_job;

static void attn_many_worker(void *p, int id, int n) {
    (void)n;
    attn_many_job *m = p;
    float *sc = m->scratch + (int64_t)id * 4 * m->stride;
    int seq = 0;
    for (;;) {
        const int64_t i = atomic_fetch_add_explicit(&m->next, 1, memory_order_relaxed);
        if (i >= m->first[m->S]) break;
        while (i >= m->first[seq + 1]) seq++;  /* items are taken in increasing order */
        while (i < m->first[seq]) seq--;
        attn_item(&m->jobs[seq], i - m->first[seq], sc);
    }
}

int native_attention_many(const native_attn_args *as, int S, int n_threads, int avx2) {
    if (S <= 0) return 0;
    attn_job *jobs = malloc((size_t)S * sizeof *jobs);
    int64_t *first = malloc(((size_t)S + 1) * sizeof *first);
    if (!jobs || !first) { free(jobs); free(first); return -1; }
    int64_t total = 0, stride = 16, work = 0;
    for (int s = 0; s < S; s++) {
        attn_job *job = &jobs[s];
        job->a = as[s];
        job->group = as[s].H / as[s].Hkv;
        job->krow = native_kv_row_bytes(as[s].kv_type, as[s].D);
        job->vrow = native_kv_row_bytes(as[s].kv_type, as[s].Dv);
        job->avx2 = avx2;
        /* whole KV groups per item: each head's arithmetic is the same whatever the grouping, so a
         * sequence's result does not depend on the others */
        job->heads_per_item = job->group;
        job->parts = 1;
        job->n_items = as[s].n * as[s].Hkv;
        job->stride = (((as[s].n_kv + 7) & ~(int64_t)7) + 15) & ~(int64_t)15;
        if (job->stride > stride) stride = job->stride;
        first[s] = total;
        total += job->n_items;
        work += as[s].n * as[s].H * as[s].n_kv;
    }
    first[S] = total;
    if (work < ATTN_PARALLEL_MIN_WORK) n_threads = 1;
    if (n_threads > total) n_threads = (int)total;
    if (n_threads > TP_MAX_THREADS) n_threads = TP_MAX_THREADS;
    if (n_threads < 1) n_threads = 1;
    const size_t need = (size_t)stride * 4 * (size_t)n_threads * sizeof(float);
    if (need > attn_scratch_size) {
        free(attn_scratch);
        const size_t size = ((need + need / 4) + 4095) & ~(size_t)63;
        attn_scratch = aligned_alloc(64, size);
        attn_scratch_size = attn_scratch ? size : 0;
        if (!attn_scratch) { free(jobs); free(first); return -1; }
    }
    attn_many_job m;
    m.jobs = jobs;
    m.first = first;
    m.S = S;
    m.stride = stride;
    m.scratch = attn_scratch;
    for (int s = 0; s < S; s++) jobs[s].scratch = attn_scratch, jobs[s].stride = stride;
    atomic_store_explicit(&m.next, 0, memory_order_relaxed);
    if (n_threads == 1) attn_many_worker(&m, 0, 1);
    else tp_run(n_threads, attn_many_worker, &m);
    free(jobs);
    free(first);
    return 0;
}

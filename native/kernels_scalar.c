/* Portable scalar reference of every native kernel: the path where there is no AVX2 (or NEON), and the
 * oracle of the tests (EDGEINFER_NATIVE_ISA=scalar). Integer block dots in int32, float scales per
 * block, as ggml's generic vec_dot code; the float kernels sum in 8 lanes like the vector code. */
#include "edgeinfer_native.h"
#include "x8.h"
#include "lowbit.h"

/* -- activation quantizers (ggml's reference quantizers, bit for bit) -------------------------------- */

static void quantize_q8_0(const float *x, int64_t n, int8_t *q, float *d, float *s) {
    for (int64_t b = 0; b < n / QK; b++) {
        const float *xb = x + QK * b;
        float amax = 0;
        for (int j = 0; j < QK; j++) {
            float v = xb[j] < 0 ? -xb[j] : xb[j];
            amax = amax > v ? amax : v;
        }
        const float dd = amax / 127.0f;
        const float id = dd != 0 ? 1.0f / dd : 0.0f;
        int sum = 0;
        for (int j = 0; j < QK; j++) {
            int v = native_roundf(xb[j] * id);
            q[QK * b + j] = (int8_t)v;
            sum += v;
        }
        d[b] = native_f16_round(dd);
        if (s) s[b] = native_f16_round((float)sum * dd);
    }
}

static void quantize_q8_k(const float *x, int64_t n, int8_t *q, float *d, int16_t *bsums) {
    for (int64_t b = 0; b < n / QK_K; b++) {
        const float *xb = x + QK_K * b;
        int8_t *qb = q + QK_K * b;
        float amax = 0, vmax = 0;
        for (int j = 0; j < QK_K; j++) {
            float ax = xb[j] < 0 ? -xb[j] : xb[j];
            if (ax > amax) { amax = ax; vmax = xb[j]; }
        }
        if (amax == 0) {
            d[b] = 0;
            memset(qb, 0, QK_K);
            memset(bsums + 16 * b, 0, 16 * sizeof(int16_t));
            continue;
        }
        const float iscale = -127.f / vmax;
        for (int j = 0; j < QK_K; j++) {
            int v = native_nearest_int(iscale * xb[j]);
            qb[j] = (int8_t)(v < 127 ? v : 127);
        }
        for (int g = 0; g < 16; g++) {
            int sum = 0;
            for (int j = 0; j < 16; j++) sum += qb[16 * g + j];
            bsums[16 * b + g] = (int16_t)sum;
        }
        d[b] = 1 / iscale;
    }
}

void native_quantize_row_scalar(const float *x, native_act *a, int64_t t) {
    const int64_t n = a->n_cols;
    switch (a->kind) {
    case ACT_Q8_0:
    case ACT_Q8_1:
        quantize_q8_0(x, n, a->q + t * n, a->d + t * a->nb, a->kind == ACT_Q8_1 ? a->s + t * a->nb : NULL);
        break;
    case ACT_Q8_K:
        quantize_q8_k(x, n, a->q + t * n, a->d + t * a->nb, a->bsums + t * (n / 16));
        break;
    case ACT_F16:
        for (int64_t j = 0; j < n; j++) a->f[t * n + j] = native_f16_round(x[j]);
        break;
    case ACT_F32:
        memcpy(a->f + t * n, x, (size_t)n * sizeof(float));
        break;
    }
}

/* -- legacy formats: blocks of 32 against Q8_0 / Q8_1 ----------------------------------------------- */

/* the 32 quants of a block as ggml's dot products see them (signed, or 0..31 for Q4_1 / Q5_1) */
static void decode_legacy(int type, const uint8_t *b, int32_t v[QK]) {
    uint32_t qh;
    switch (type) {
    case GT_Q4_0:
        for (int j = 0; j < 16; j++) { v[j] = (b[2 + j] & 0x0F) - 8; v[j + 16] = (b[2 + j] >> 4) - 8; }
        break;
    case GT_Q4_1:
        for (int j = 0; j < 16; j++) { v[j] = b[4 + j] & 0x0F; v[j + 16] = b[4 + j] >> 4; }
        break;
    case GT_Q5_0:
        memcpy(&qh, b + 2, 4);
        for (int j = 0; j < 16; j++) {
            v[j] = ((b[6 + j] & 0x0F) | (((qh >> j) & 1) << 4)) - 16;
            v[j + 16] = ((b[6 + j] >> 4) | (((qh >> (j + 16)) & 1) << 4)) - 16;
        }
        break;
    case GT_Q5_1:
        memcpy(&qh, b + 4, 4);
        for (int j = 0; j < 16; j++) {
            v[j] = (b[8 + j] & 0x0F) | (((qh >> j) & 1) << 4);
            v[j + 16] = (b[8 + j] >> 4) | (((qh >> (j + 16)) & 1) << 4);
        }
        break;
    case GT_Q8_0:
        for (int j = 0; j < QK; j++) v[j] = (int8_t)b[2 + j];
        break;
    case GT_IQ4_NL:
        for (int j = 0; j < 16; j++) {
            v[j] = native_kvalues_iq4nl[b[2 + j] & 0x0F];
            v[j + 16] = native_kvalues_iq4nl[b[2 + j] >> 4];
        }
        break;
    }
}

static int legacy_size(int type) {
    switch (type) {
    case GT_Q4_0: case GT_IQ4_NL: return 18;
    case GT_Q4_1: return 20;
    case GT_Q5_0: return 22;
    case GT_Q5_1: return 24;
    default: return 34;  /* Q8_0 */
    }
}

static float dot_legacy(int type, const uint8_t *row, const native_act *a, int64_t t) {
    const int ts = legacy_size(type);
    const int with_min = type == GT_Q4_1 || type == GT_Q5_1;
    const int64_t nb = a->nb;
    const int8_t *y = a->q + t * a->n_cols;
    float sum = 0, summ = 0;
    int32_t v[QK];
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = row + ts * b;
        decode_legacy(type, blk, v);
        int32_t sumi = 0;
        for (int j = 0; j < QK; j++) sumi += v[j] * y[QK * b + j];
        sum += (float)sumi * (native_f16_at(blk) * a->d[t * nb + b]);
        if (with_min) summ += native_f16_at(blk + 2) * a->s[t * nb + b];
    }
    return sum + summ;
}

/* -- K-quants: super-blocks of 256 against Q8_K ----------------------------------------------------- */

static float dot_q4_k(int type, const uint8_t *row, const native_act *a, int64_t t) {
    const int64_t nb = a->nb;
    const int ts = type == GT_Q4_K ? 144 : 176;
    float sum = 0;
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = row + ts * b;
        const int8_t *y = a->q + t * a->n_cols + QK_K * b;
        const int16_t *bs = a->bsums + (t * nb + b) * 16;
        uint8_t sm[16];
        native_scales_mins_k4(blk + 4, sm);
        const uint8_t *qs = blk + (type == GT_Q4_K ? 16 : 48);
        const uint8_t *qh = blk + 16;
        int32_t isum = 0, msum = 0;
        for (int c = 0; c < 4; c++) {
            int32_t lo = 0, hi = 0;
            for (int l = 0; l < 32; l++) {
                int ql = qs[32 * c + l] & 0x0F, qhi = qs[32 * c + l] >> 4;
                if (type == GT_Q5_K) {
                    ql |= ((qh[l] >> (2 * c)) & 1) << 4;
                    qhi |= ((qh[l] >> (2 * c + 1)) & 1) << 4;
                }
                lo += ql * y[64 * c + l];
                hi += qhi * y[64 * c + 32 + l];
            }
            isum += sm[2 * c] * lo + sm[2 * c + 1] * hi;
        }
        for (int g = 0; g < 16; g++) msum += sm[8 + g / 2] * bs[g];
        const float dy = a->d[t * nb + b];
        sum += native_f16_at(blk) * dy * (float)isum;
        sum -= native_f16_at(blk + 2) * dy * (float)msum;
    }
    return sum;
}

static float dot_q6_k(const uint8_t *row, const native_act *a, int64_t t) {
    const int64_t nb = a->nb;
    float sum = 0;
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = row + 210 * b;
        const int8_t *y = a->q + t * a->n_cols + QK_K * b;
        const int8_t *sc = (const int8_t *)(blk + 192);
        int32_t isum = 0;
        for (int n = 0; n < 2; n++) {
            const uint8_t *ql = blk + 64 * n, *qh = blk + 128 + 32 * n;
            const int8_t *yn = y + 128 * n;
            for (int l = 0; l < 32; l++) {
                const int is = 8 * n + l / 16;
                const int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
                const int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
                const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                isum += sc[is + 0] * q1 * yn[l] + sc[is + 2] * q2 * yn[l + 32] + sc[is + 4] * q3 * yn[l + 64] +
                        sc[is + 6] * q4 * yn[l + 96];
            }
        }
        sum += native_f16_at(blk + 208) * a->d[t * nb + b] * (float)isum;
    }
    return sum;
}

/* -- float weights: 8 lanes, then the tail ---------------------------------------------------------- */

static float dot_float(int type, const uint8_t *row, const native_act *a, int64_t t) {
    const int64_t n = a->n_cols, n8 = n - n % 8;
    const float *y = a->f + t * n;
    float lanes[8] = {0};
    for (int64_t j = 0; j < n8; j += 8)
        for (int k = 0; k < 8; k++) {
            float wv;
            if (type == GT_F32) memcpy(&wv, row + 4 * (j + k), 4);
            else wv = native_f16_at(row + 2 * (j + k));
            lanes[k] += wv * y[j + k];
        }
    float s = ((lanes[0] + lanes[4]) + (lanes[2] + lanes[6])) + ((lanes[1] + lanes[5]) + (lanes[3] + lanes[7]));
    for (int64_t j = n8; j < n; j++) {
        float wv;
        if (type == GT_F32) memcpy(&wv, row + 4 * j, 4);
        else wv = native_f16_at(row + 2 * j);
        s += wv * y[j];
    }
    return s;
}

/* -- row drivers ------------------------------------------------------------------------------------ */

#define ROWS(name, expr)                                                                              \
    static void rows_##name(const uint8_t *w, int64_t row_bytes, int64_t r0, int64_t r1, int64_t n_rows, \
                            const native_act *a, float *out) {                                        \
        for (int64_t t = 0; t < a->n_tokens; t++)                                                     \
            for (int64_t r = r0; r < r1; r++) {                                                       \
                const uint8_t *row = w + r * row_bytes;                                               \
                out[t * n_rows + r] = (expr);                                                         \
            }                                                                                         \
    }

ROWS(q4_0, dot_legacy(GT_Q4_0, row, a, t))
ROWS(q4_1, dot_legacy(GT_Q4_1, row, a, t))
ROWS(q5_0, dot_legacy(GT_Q5_0, row, a, t))
ROWS(q5_1, dot_legacy(GT_Q5_1, row, a, t))
ROWS(q8_0, dot_legacy(GT_Q8_0, row, a, t))
ROWS(iq4_nl, dot_legacy(GT_IQ4_NL, row, a, t))
ROWS(q4_k, dot_q4_k(GT_Q4_K, row, a, t))
ROWS(q5_k, dot_q4_k(GT_Q5_K, row, a, t))
ROWS(q6_k, dot_q6_k(row, a, t))
ROWS(f32, dot_float(GT_F32, row, a, t))
ROWS(f16, dot_float(GT_F16, row, a, t))

const native_kernels native_kernels_scalar = {
    .name = "scalar",
    .rows = {
        [GT_F32] = rows_f32, [GT_F16] = rows_f16,
        [GT_Q4_0] = rows_q4_0, [GT_Q4_1] = rows_q4_1, [GT_Q5_0] = rows_q5_0, [GT_Q5_1] = rows_q5_1,
        [GT_Q8_0] = rows_q8_0, [GT_IQ4_NL] = rows_iq4_nl,
        [GT_Q4_K] = rows_q4_k, [GT_Q5_K] = rows_q5_k, [GT_Q6_K] = rows_q6_k,
        LOWBIT_ROWS_scalar  /* lowbit_scalar.c */
    },
    .quantize = native_quantize_row_scalar,
    .x8 = native_x8_scalar,
};

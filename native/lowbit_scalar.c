/* The low-bit formats' portable kernels (see lowbit.h): each format is a decoder, from its block to the
 * values ggml's integer dot products see (grid value x sign, -1..1 digits, FP4 values), and one driver
 * multiplies them by the activations. The reference every ISA is tested against (EDGEINFER_ISA=scalar). */
#include "iq_grids.h"
#include "lowbit.h"

/* A block's values: x[k] (k < values), the scale ls[g] of values 16g..16g+15 and, for IQ1_S / IQ1_M, the
 * sign of the delta of each value, xd[k] = +-1. Returns the block's float scale d. */
typedef float (*decode_fn)(const uint8_t *blk, int8_t x[QK_K], int8_t xd[QK_K], int32_t ls[16]);

static inline uint32_t u32_at(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline uint32_t u16_at(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }

/* 8 magnitudes (a grid entry's bytes) with the signs of the mask's 0xff bytes: x[0..7] */
static inline void signed8(int8_t *x, uint64_t grid, uint64_t mask) {
    for (int j = 0; j < 8; j++) {
        const int v = (int)(grid >> (8 * j) & 0xFF);
        x[j] = (int8_t)(mask >> (8 * j) & 1 ? -v : v);
    }
}

/* 4 magnitudes (an IQ3 grid entry) with signs of mask bytes 0..3 */
static inline void signed4(int8_t *x, uint32_t grid, uint64_t mask) {
    for (int j = 0; j < 4; j++) {
        const int v = (int)(grid >> (8 * j) & 0xFF);
        x[j] = (int8_t)(mask >> (8 * j) & 1 ? -v : v);
    }
}

static float decode_iq2_xxs(const uint8_t *blk, int8_t x[QK_K], int8_t xd[QK_K], int32_t ls[16]) {
    (void)xd;
    for (int ib = 0; ib < 8; ib++) {
        const uint8_t *q = blk + 2 + 8 * ib;
        const uint32_t aux = u32_at(q + 4);
        for (int l = 0; l < 4; l++)
            signed8(x + 32 * ib + 8 * l, native_iq2xxs_grid[q[l]], native_ksigns_mask[aux >> (7 * l) & 127]);
        ls[2 * ib] = ls[2 * ib + 1] = (int32_t)(2 * (aux >> 28) + 1);
    }
    return native_f16_at(blk);
}

static float decode_iq2_xs(const uint8_t *blk, int8_t x[QK_K], int8_t xd[QK_K], int32_t ls[16]) {
    (void)xd;
    for (int ib = 0; ib < 8; ib++) {
        for (int l = 0; l < 4; l++) {
            const uint32_t v = u16_at(blk + 2 + 2 * (4 * ib + l));
            signed8(x + 32 * ib + 8 * l, native_iq2xs_grid[v & 511], native_ksigns_mask[v >> 9]);
        }
        const int sc = blk[66 + ib];
        ls[2 * ib] = 2 * (sc & 15) + 1;
        ls[2 * ib + 1] = 2 * (sc >> 4) + 1;
    }
    return native_f16_at(blk);
}

static float decode_iq2_s(const uint8_t *blk, int8_t x[QK_K], int8_t xd[QK_K], int32_t ls[16]) {
    (void)xd;
    for (int ib = 0; ib < 8; ib++) {
        const uint32_t qh = blk[66 + ib];
        for (int l = 0; l < 4; l++) {
            const uint32_t g = blk[2 + 4 * ib + l] | (qh << (8 - 2 * l) & 0x300);
            signed8(x + 32 * ib + 8 * l, native_iq2s_grid[g], native_signs8_mask[blk[34 + 4 * ib + l]]);
        }
        const int sc = blk[74 + ib];
        ls[2 * ib] = 2 * (sc & 15) + 1;
        ls[2 * ib + 1] = 2 * (sc >> 4) + 1;
    }
    return native_f16_at(blk);
}

static float decode_iq3_xxs(const uint8_t *blk, int8_t x[QK_K], int8_t xd[QK_K], int32_t ls[16]) {
    (void)xd;
    for (int ib = 0; ib < 8; ib++) {
        const uint8_t *q = blk + 2 + 8 * ib;
        const uint32_t aux = u32_at(blk + 66 + 4 * ib);
        for (int l = 0; l < 4; l++) {
            const uint64_t m = native_ksigns_mask[aux >> (7 * l) & 127];
            signed4(x + 32 * ib + 8 * l, native_iq3xxs_grid[q[2 * l]], m);
            signed4(x + 32 * ib + 8 * l + 4, native_iq3xxs_grid[q[2 * l + 1]], m >> 32);
        }
        ls[2 * ib] = ls[2 * ib + 1] = (int32_t)(2 * (aux >> 28) + 1);
    }
    return native_f16_at(blk);
}

static float decode_iq3_s(const uint8_t *blk, int8_t x[QK_K], int8_t xd[QK_K], int32_t ls[16]) {
    (void)xd;
    for (int ib = 0; ib < 8; ib++) {
        const uint8_t *q = blk + 2 + 8 * ib;
        const uint32_t qh = blk[66 + ib];
        for (int l = 0; l < 4; l++) {
            const uint64_t m = native_signs8_mask[blk[74 + 4 * ib + l]];
            signed4(x + 32 * ib + 8 * l, native_iq3s_grid[q[2 * l] | (qh << (8 - 2 * l) & 256)], m);
            signed4(x + 32 * ib + 8 * l + 4, native_iq3s_grid[q[2 * l + 1] | (qh << (7 - 2 * l) & 256)], m >> 32);
        }
        ls[2 * ib] = ls[2 * ib + 1] = 2 * (blk[106 + ib / 2] >> (4 * (ib % 2)) & 15) + 1;
    }
    return native_f16_at(blk);
}

static float decode_iq1_s(const uint8_t *blk, int8_t x[QK_K], int8_t xd[QK_K], int32_t ls[16]) {
    for (int ib = 0; ib < 8; ib++) {
        const uint32_t qh = u16_at(blk + 34 + 2 * ib);
        for (int l = 0; l < 4; l++)
            signed8(x + 32 * ib + 8 * l, native_iq1s_grid[blk[2 + 4 * ib + l] | (qh >> (3 * l) & 7) << 8], 0);
        memset(xd + 32 * ib, qh & 0x8000 ? -1 : 1, 32);
        ls[2 * ib] = ls[2 * ib + 1] = (int32_t)(2 * (qh >> 12 & 7) + 1);
    }
    return native_f16_at(blk);
}

static float decode_iq1_m(const uint8_t *blk, int8_t x[QK_K], int8_t xd[QK_K], int32_t ls[16]) {
    for (int ib = 0; ib < 8; ib++) {
        const uint32_t sc = u16_at(blk + 48 + 2 * (ib / 2));
        for (int h = 0; h < 2; h++) {
            const uint32_t qh = blk[32 + 2 * ib + h];
            for (int m = 0; m < 2; m++) {
                const int k = 32 * ib + 16 * h + 8 * m;
                signed8(x + k, native_iq1s_grid[blk[4 * ib + 2 * h + m] | (qh >> (4 * m) & 7) << 8], 0);
                memset(xd + k, qh >> (4 * m) & 8 ? -1 : 1, 8);
            }
            ls[2 * ib + h] = (int32_t)(2 * (sc >> (6 * (ib % 2) + 3 * h) & 7) + 1);
        }
    }
    return native_fp16_to_fp32(lowbit_iq1m_scale_bits(blk));
}

/* TQ1_0's ternary digit n of a byte: ((uint8)(byte * 3^n) * 3) >> 8, minus 1 (pow3 = 3^n) */
static inline int8_t tq1_digit(uint8_t byte, int pow3) { return (int8_t)((((byte * pow3) & 0xFF) * 3 >> 8) - 1); }

static float decode_tq1_0(const uint8_t *blk, int8_t x[QK_K], int8_t xd[QK_K], int32_t ls[16]) {
    (void)xd;
    for (int n = 0, p = 1; n < 5; n++, p *= 3) {
        for (int m = 0; m < 32; m++) x[32 * n + m] = tq1_digit(blk[m], p);
        for (int m = 0; m < 16; m++) x[160 + 16 * n + m] = tq1_digit(blk[32 + m], p);
    }
    for (int n = 0, p = 1; n < 4; n++, p *= 3)
        for (int j = 0; j < 4; j++) x[240 + 4 * n + j] = tq1_digit(blk[48 + j], p);
    for (int g = 0; g < 16; g++) ls[g] = 1;
    return native_f16_at(blk + 52);
}

static float decode_tq2_0(const uint8_t *blk, int8_t x[QK_K], int8_t xd[QK_K], int32_t ls[16]) {
    (void)xd;
    for (int h = 0; h < 2; h++)
        for (int l = 0; l < 4; l++)
            for (int k = 0; k < 32; k++) x[128 * h + 32 * l + k] = (int8_t)((blk[32 * h + k] >> (2 * l) & 3) - 1);
    for (int g = 0; g < 16; g++) ls[g] = 1;
    return native_f16_at(blk + 64);
}

static float decode_mxfp4(const uint8_t *blk, int8_t x[QK_K], int8_t xd[QK_K], int32_t ls[16]) {
    (void)xd;
    for (int j = 0; j < 16; j++) {
        x[j] = lowbit_kvalues_mxfp4[blk[1 + j] & 15];
        x[j + 16] = lowbit_kvalues_mxfp4[blk[1 + j] >> 4];
    }
    ls[0] = ls[1] = 1;
    return lowbit_e8m0_half(blk[0]);
}

/* sum over groups of 16 of ls[g] x (v . y) */
static int32_t scaled_dot(const int8_t *v, const int8_t *y, const int32_t *ls, int n) {
    int32_t s = 0;
    for (int g = 0; g < n / 16; g++) {
        int32_t sg = 0;
        for (int k = 16 * g; k < 16 * g + 16; k++) sg += v[k] * y[k];
        s += ls[g] * sg;
    }
    return s;
}

/* The driver: tokens four at a time, each block decoded once for the four, then every (row, token) as
 * lowbit.h fixes it. */
static void scalar_rows(int type, decode_fn decode, const uint8_t *w, int64_t row_bytes, int64_t r0, int64_t r1,
                        int64_t n_rows, const native_act *a, float *out) {
    const lowbit_traits *tr = lowbit_traits_of(type);
    const int64_t nb = a->nb, nc = a->n_cols, T = a->n_tokens;
    int8_t x[QK_K], xd[QK_K];
    int32_t ls[16];
    for (int64_t t = 0; t < T; t += 4) {
        const int nt = T - t < 4 ? (int)(T - t) : 4;
        for (int64_t r = r0; r < r1; r++) {
            float sumf[4] = {0};
            for (int64_t b = 0; b < nb; b++) {
                const float d = decode(w + r * row_bytes + tr->type_size * b, x, xd, ls);
                for (int j = 0; j < nt; j++) {
                    const int8_t *y = a->q + (t + j) * nc + tr->values * b;
                    const int32_t s = scaled_dot(x, y, ls, tr->values);
                    const int32_t e = tr->delta ? scaled_dot(xd, y, ls, tr->values) : 0;
                    sumf[j] = lowbit_acc(tr, sumf[j], d, a->d[(t + j) * nb + b], s, e);
                }
            }
            for (int j = 0; j < nt; j++) out[(t + j) * n_rows + r] = lowbit_final(tr, sumf[j]);
        }
    }
}

#define SCALAR_ROWS(name, type)                                                                            \
    void lowbit_scalar_##name(const uint8_t *w, int64_t row_bytes, int64_t r0, int64_t r1, int64_t n_rows, \
                              const native_act *a, float *out) {                                          \
        scalar_rows(type, decode_##name, w, row_bytes, r0, r1, n_rows, a, out);                           \
    }
LOWBIT_FORMATS(SCALAR_ROWS)

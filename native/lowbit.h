/* The low-bit formats (IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S, IQ1_S, IQ1_M, TQ1_0, TQ2_0, MXFP4): one table
 * row per format, one row driver per instruction set (lowbit_scalar.c, lowbit_avx2.c) fed by the format's
 * block function, as ggml's type traits feed its one mul_mat.
 *
 * What every kernel computes, per (row, token), is fixed here and is what edgeinfer/kernels/numba/lowbit.py
 * computes (ggml's vec_dot_<type>_q8_K / _q8_0): per weight block b, in order,
 *     sumf += (d * d_tok) * v,   v = (float)s                       (every format but the IQ1 ones)
 *                                v = (float)s + 0.125f * (float)e   (IQ1_S, IQ1_M: e the delta's sum)
 * with s (and e) the block's exact integer sums (grid value x sign x activation quant, weighted by the
 * sub-block scales), d the block's scale and d_tok the activation block's; then out = final * sumf (final
 * 0.125 for the IQ2 formats, 0.25 for IQ3_XXS, no multiply for the others). The integer sums are exact on
 * every ISA and the float operations the same in the same order, whatever the tile of tokens or the thread:
 * the native kernels give the Numba kernels' bits, a token's result does not depend on its batch. */
#ifndef EDGEINFER_LOWBIT_H
#define EDGEINFER_LOWBIT_H

#include "edgeinfer_native.h"

/* X(name, ggml type): every low-bit format with a native kernel */
#define LOWBIT_FORMATS(X)                                                                                  \
    X(iq2_xxs, GT_IQ2_XXS) X(iq2_xs, GT_IQ2_XS) X(iq2_s, GT_IQ2_S) X(iq3_xxs, GT_IQ3_XXS) X(iq3_s, GT_IQ3_S) \
    X(iq1_s, GT_IQ1_S) X(iq1_m, GT_IQ1_M) X(tq1_0, GT_TQ1_0) X(tq2_0, GT_TQ2_0) X(mxfp4, GT_MXFP4)

#define LOWBIT_DELTA 0.125f  /* IQ1S_DELTA = IQ1M_DELTA */

typedef struct {
    int type_size;  /* bytes per block */
    int values;     /* values per block: QK_K, or QK (MXFP4, against Q8_0) */
    float final;    /* the row's sum times this at the end (1: no multiply) */
    int delta;      /* IQ1_S / IQ1_M: a second integer sum e, weighted by LOWBIT_DELTA */
} lowbit_traits;

/* the table row of a ggml type, NULL for a type that is not low-bit */
static inline const lowbit_traits *lowbit_traits_of(int ggml_type) {
    static const lowbit_traits iq2_xxs = {66, QK_K, 0.125f, 0}, iq2_xs = {74, QK_K, 0.125f, 0},
                               iq2_s = {82, QK_K, 0.125f, 0}, iq3_xxs = {98, QK_K, 0.25f, 0},
                               iq3_s = {110, QK_K, 1.0f, 0}, iq1_s = {50, QK_K, 1.0f, 1}, iq1_m = {56, QK_K, 1.0f, 1},
                               tq1_0 = {54, QK_K, 1.0f, 0}, tq2_0 = {66, QK_K, 1.0f, 0}, mxfp4 = {17, QK, 1.0f, 0};
    switch (ggml_type) {
#define LOWBIT_CASE(name, type) case type: return &name;
    LOWBIT_FORMATS(LOWBIT_CASE)
#undef LOWBIT_CASE
    default: return NULL;
    }
}

/* one block's float work for one (row, token): sumf + (d * d_tok) * v */
static inline float lowbit_acc(const lowbit_traits *tr, float sumf, float d, float d_tok, int32_t s, int32_t e) {
    const float v = tr->delta ? (float)s + LOWBIT_DELTA * (float)e : (float)s;
    return sumf + (d * d_tok) * v;
}

static inline float lowbit_final(const lowbit_traits *tr, float sumf) {
    return tr->final == 1.0f ? sumf : tr->final * sumf;
}

/* GGML_E8M0_TO_FP32_HALF: 2^(e - 128) (MXFP4's block scale) */
static inline float lowbit_e8m0_half(uint8_t e) {
    return native_f32_from_bits(e < 2 ? 0x00200000u << e : (uint32_t)(e - 1) << 23);
}

/* IQ1_M's fp16 scale: the top nibbles of its four 16-bit scale words */
static inline uint16_t lowbit_iq1m_scale_bits(const uint8_t *blk) {
    uint16_t sc[4];
    memcpy(sc, blk + 48, 8);
    return (uint16_t)((sc[0] >> 12) | ((sc[1] >> 8) & 0x00F0) | ((sc[2] >> 4) & 0x0F00) | (sc[3] & 0xF000));
}

static const int8_t lowbit_kvalues_mxfp4[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};

/* the row kernels (native_rows_fn) of each ISA: lowbit_<isa>_<name> */
#define LOWBIT_DECLARE(isa, name)                                                                          \
    void lowbit_##isa##_##name(const uint8_t *w, int64_t row_bytes, int64_t r0, int64_t r1, int64_t n_rows, \
                               const native_act *a, float *out);
#define LOWBIT_DECLARE_SCALAR(name, type) LOWBIT_DECLARE(scalar, name)
LOWBIT_FORMATS(LOWBIT_DECLARE_SCALAR)
#if defined(NATIVE_X86)
#define LOWBIT_DECLARE_AVX2(name, type) LOWBIT_DECLARE(avx2, name)
LOWBIT_FORMATS(LOWBIT_DECLARE_AVX2)
#endif

/* designated initializers of a native_kernels.rows table: LOWBIT_ROWS_scalar, LOWBIT_ROWS_avx2 */
#define LOWBIT_INIT_SCALAR(name, type) [type] = lowbit_scalar_##name,
#define LOWBIT_INIT_AVX2(name, type) [type] = lowbit_avx2_##name,
#define LOWBIT_ROWS_scalar LOWBIT_FORMATS(LOWBIT_INIT_SCALAR)
#define LOWBIT_ROWS_avx2 LOWBIT_FORMATS(LOWBIT_INIT_AVX2)

#endif

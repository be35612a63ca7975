/* NEON kernels (ARM): Q4_0 and Q8_0 against Q8_0 activations in the file's layout, after ggml's
 * ggml_vec_dot_q4_0_q8_0 NEON code; the x8 formats run repacked (x8_neon.c); every other type uses the
 * scalar kernels (the table leaves them empty and the caller falls back). Compiled only where the compiler targets ARM with NEON; elsewhere this file is empty. Each
 * (row, token) output is computed by one function whatever the batch: prefill == decode, bit for bit. */
#include "edgeinfer_native.h"
#include "x8.h"

#if defined(__ARM_NEON)
#include <arm_neon.h>

static inline int32x4_t dot_i8x16(int32x4_t acc, int8x16_t a, int8x16_t b) {
#if defined(__ARM_FEATURE_DOTPROD)
    return vdotq_s32(acc, a, b);
#else
    const int16x8_t lo = vmull_s8(vget_low_s8(a), vget_low_s8(b));
    const int16x8_t hi = vmull_s8(vget_high_s8(a), vget_high_s8(b));
    return vaddq_s32(acc, vaddq_s32(vpaddlq_s16(lo), vpaddlq_s16(hi)));
#endif
}

static float dot_q4_0(const uint8_t *row, const native_act *a, int64_t t) {
    const int64_t nb = a->nb;
    const int8_t *y = a->q + t * a->n_cols;
    float32x4_t acc = vdupq_n_f32(0);
    const uint8x16_t m4 = vdupq_n_u8(0x0F);
    const int8x16_t s8 = vdupq_n_s8(8);
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = row + 18 * b;
        const uint8x16_t v = vld1q_u8(blk + 2);
        const int8x16_t lo = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(v, m4)), s8);
        const int8x16_t hi = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(v, 4)), s8);
        int32x4_t p = dot_i8x16(vdupq_n_s32(0), lo, vld1q_s8(y + QK * b));
        p = dot_i8x16(p, hi, vld1q_s8(y + QK * b + 16));
        acc = vmlaq_n_f32(acc, vcvtq_f32_s32(p), native_f16_at(blk) * a->d[t * nb + b]);
    }
    return vaddvq_f32(acc);
}

static float dot_q8_0(const uint8_t *row, const native_act *a, int64_t t) {
    const int64_t nb = a->nb;
    const int8_t *y = a->q + t * a->n_cols;
    float32x4_t acc = vdupq_n_f32(0);
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = row + 34 * b;
        int32x4_t p = dot_i8x16(vdupq_n_s32(0), vld1q_s8((const int8_t *)blk + 2), vld1q_s8(y + QK * b));
        p = dot_i8x16(p, vld1q_s8((const int8_t *)blk + 18), vld1q_s8(y + QK * b + 16));
        acc = vmlaq_n_f32(acc, vcvtq_f32_s32(p), native_f16_at(blk) * a->d[t * nb + b]);
    }
    return vaddvq_f32(acc);
}

#define ROWS(name, fn)                                                                                \
    static void rows_##name(const uint8_t *w, int64_t row_bytes, int64_t r0, int64_t r1, int64_t n_rows, \
                            const native_act *a, float *out) {                                        \
        for (int64_t t = 0; t < a->n_tokens; t++)                                                     \
            for (int64_t r = r0; r < r1; r++) out[t * n_rows + r] = fn(w + r * row_bytes, a, t);      \
    }

ROWS(q4_0, dot_q4_0)
ROWS(q8_0, dot_q8_0)

const native_kernels native_kernels_neon = {
    .name = "neon",
    .rows = { [GT_Q4_0] = rows_q4_0, [GT_Q8_0] = rows_q8_0 },
    .quantize = native_quantize_row_scalar,
    .x8 = native_x8_neon,  /* x8_neon.c; the dotprod set (x8_neon_dotprod.c) is this one with its own x8 */
};

#endif /* __ARM_NEON */

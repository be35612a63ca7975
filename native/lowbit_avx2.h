/* AVX2 kernels of the low-bit formats with a C kernel (IQ2_XXS, TQ2_0, MXFP4): included by kernels_avx2.c.
 * One row against one token per call, 32 lanes at a time (ggml's AVX2 vec_dot: the signed grid values
 * built with xor/sub from sign masks, pmaddubsw / pmaddwd); the integer sums are exact, and the float
 * operations per block are those of kernels_scalar.c, so the results are its bits. */
#ifndef EDGEINFER_LOWBIT_AVX2_H
#define EDGEINFER_LOWBIT_AVX2_H
#include "iq2xxs_grid.h"

/* ksigns_iq2xs[s] as 8 bytes of 0x00 / 0xff (0xff where the value is negated) */
static const uint64_t lowbit_ksigns64[128] = {
    0x0000000000000000, 0xff000000000000ff, 0xff0000000000ff00, 0x000000000000ffff,
    0xff00000000ff0000, 0x0000000000ff00ff, 0x0000000000ffff00, 0xff00000000ffffff,
    0xff000000ff000000, 0x00000000ff0000ff, 0x00000000ff00ff00, 0xff000000ff00ffff,
    0x00000000ffff0000, 0xff000000ffff00ff, 0xff000000ffffff00, 0x00000000ffffffff,
    0xff0000ff00000000, 0x000000ff000000ff, 0x000000ff0000ff00, 0xff0000ff0000ffff,
    0x000000ff00ff0000, 0xff0000ff00ff00ff, 0xff0000ff00ffff00, 0x000000ff00ffffff,
    0x000000ffff000000, 0xff0000ffff0000ff, 0xff0000ffff00ff00, 0x000000ffff00ffff,
    0xff0000ffffff0000, 0x000000ffffff00ff, 0x000000ffffffff00, 0xff0000ffffffffff,
    0xff00ff0000000000, 0x0000ff00000000ff, 0x0000ff000000ff00, 0xff00ff000000ffff,
    0x0000ff0000ff0000, 0xff00ff0000ff00ff, 0xff00ff0000ffff00, 0x0000ff0000ffffff,
    0x0000ff00ff000000, 0xff00ff00ff0000ff, 0xff00ff00ff00ff00, 0x0000ff00ff00ffff,
    0xff00ff00ffff0000, 0x0000ff00ffff00ff, 0x0000ff00ffffff00, 0xff00ff00ffffffff,
    0x0000ffff00000000, 0xff00ffff000000ff, 0xff00ffff0000ff00, 0x0000ffff0000ffff,
    0xff00ffff00ff0000, 0x0000ffff00ff00ff, 0x0000ffff00ffff00, 0xff00ffff00ffffff,
    0xff00ffffff000000, 0x0000ffffff0000ff, 0x0000ffffff00ff00, 0xff00ffffff00ffff,
    0x0000ffffffff0000, 0xff00ffffffff00ff, 0xff00ffffffffff00, 0x0000ffffffffffff,
    0xffff000000000000, 0x00ff0000000000ff, 0x00ff00000000ff00, 0xffff00000000ffff,
    0x00ff000000ff0000, 0xffff000000ff00ff, 0xffff000000ffff00, 0x00ff000000ffffff,
    0x00ff0000ff000000, 0xffff0000ff0000ff, 0xffff0000ff00ff00, 0x00ff0000ff00ffff,
    0xffff0000ffff0000, 0x00ff0000ffff00ff, 0x00ff0000ffffff00, 0xffff0000ffffffff,
    0x00ff00ff00000000, 0xffff00ff000000ff, 0xffff00ff0000ff00, 0x00ff00ff0000ffff,
    0xffff00ff00ff0000, 0x00ff00ff00ff00ff, 0x00ff00ff00ffff00, 0xffff00ff00ffffff,
    0xffff00ffff000000, 0x00ff00ffff0000ff, 0x00ff00ffff00ff00, 0xffff00ffff00ffff,
    0x00ff00ffffff0000, 0xffff00ffffff00ff, 0xffff00ffffffff00, 0x00ff00ffffffffff,
    0x00ffff0000000000, 0xffffff00000000ff, 0xffffff000000ff00, 0x00ffff000000ffff,
    0xffffff0000ff0000, 0x00ffff0000ff00ff, 0x00ffff0000ffff00, 0xffffff0000ffffff,
    0xffffff00ff000000, 0x00ffff00ff0000ff, 0x00ffff00ff00ff00, 0xffffff00ff00ffff,
    0x00ffff00ffff0000, 0xffffff00ffff00ff, 0xffffff00ffffff00, 0x00ffff00ffffffff,
    0xffffffff00000000, 0x00ffffff000000ff, 0x00ffffff0000ff00, 0xffffffff0000ffff,
    0x00ffffff00ff0000, 0xffffffff00ff00ff, 0xffffffff00ffff00, 0x00ffffff00ffffff,
    0x00ffffffff000000, 0xffffffffff0000ff, 0xffffffffff00ff00, 0x00ffffffff00ffff,
    0xffffffffffff0000, 0x00ffffffffff00ff, 0x00ffffffffffff00, 0xffffffffffffffff,
};

static const int8_t lowbit_kvalues_mxfp4[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};

INL int32_t lowbit_hsum_i32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
    return _mm_cvtsi128_si32(s);
}

/* x (|x| < 128) . y (-127..127): 16 int16 pair sums, times s in int32 pairs */
INL __m256i lowbit_sdot(__m256i x, __m256i y, int16_t s) {
    const __m256i p = _mm256_maddubs_epi16(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x));
    return _mm256_madd_epi16(p, _mm256_set1_epi16(s));
}

FN static float lowbit_dot_iq2_xxs(const uint8_t *row, const native_act *a, int64_t t) {
    const int64_t nb = a->nb;
    float sumf = 0;
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = row + 66 * b;
        const int8_t *y = a->q + t * a->n_cols + QK_K * b;
        __m256i acc = _mm256_setzero_si256();
        for (int ib = 0; ib < 8; ib++) {
            const uint8_t *q = blk + 2 + 8 * ib;
            uint32_t aux1;
            memcpy(&aux1, q + 4, 4);
            const __m256i g = _mm256_set_epi64x((long long)native_iq2xxs_grid[q[3]], (long long)native_iq2xxs_grid[q[2]],
                                                (long long)native_iq2xxs_grid[q[1]], (long long)native_iq2xxs_grid[q[0]]);
            const __m256i m = _mm256_set_epi64x((long long)lowbit_ksigns64[(aux1 >> 21) & 127],
                                                (long long)lowbit_ksigns64[(aux1 >> 14) & 127],
                                                (long long)lowbit_ksigns64[(aux1 >> 7) & 127],
                                                (long long)lowbit_ksigns64[aux1 & 127]);
            const __m256i x = _mm256_sub_epi8(_mm256_xor_si256(g, m), m);
            acc = _mm256_add_epi32(acc, lowbit_sdot(x, load256(y + 32 * ib), (int16_t)(2 * (aux1 >> 28) + 1)));
        }
        sumf += (native_f16_at(blk) * a->d[t * nb + b]) * (float)lowbit_hsum_i32(acc);
    }
    return 0.125f * sumf;
}

FN static float lowbit_dot_tq2_0(const uint8_t *row, const native_act *a, int64_t t) {
    const int64_t nb = a->nb;
    const __m256i three = _mm256_set1_epi8(3), one = _mm256_set1_epi8(1);
    float sumf = 0;
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = row + 66 * b;
        const int8_t *y = a->q + t * a->n_cols + QK_K * b;
        __m256i acc = _mm256_setzero_si256();
        for (int h = 0; h < 2; h++) {
            const __m256i v = load256(blk + 32 * h);
            for (int l = 0; l < 4; l++) {
                const __m256i x = _mm256_sub_epi8(_mm256_and_si256(_mm256_srl_epi16(v, _mm_cvtsi32_si128(2 * l)), three), one);
                acc = _mm256_add_epi32(acc, lowbit_sdot(x, load256(y + 128 * h + 32 * l), 1));
            }
        }
        sumf += (float)lowbit_hsum_i32(acc) * (a->d[t * nb + b] * native_f16_at(blk + 64));
    }
    return sumf;
}

FN static float lowbit_dot_mxfp4(const uint8_t *row, const native_act *a, int64_t t) {
    const int64_t nb = a->nb;
    const __m256i table = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)lowbit_kvalues_mxfp4));
    const __m128i low4 = _mm_set1_epi8(0x0F);
    float sumf = 0;
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = row + 17 * b;
        const int8_t *y = a->q + t * a->n_cols + QK * b;
        const __m128i q = _mm_loadu_si128((const __m128i *)(blk + 1));
        const __m256i idx = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(q, 4), low4), _mm_and_si128(q, low4));
        const __m256i x = _mm256_shuffle_epi8(table, idx);
        const int32_t s = lowbit_hsum_i32(lowbit_sdot(x, load256(y), 1));
        const uint8_t e = blk[0];
        const float d = native_f32_from_bits(e < 2 ? 0x00200000u << e : (uint32_t)(e - 1) << 23);
        sumf += (a->d[t * nb + b] * d) * (float)s;
    }
    return sumf;
}

#define LOWBIT_ROWS(name)                                                                                  \
    FN static void rows_##name(const uint8_t *w, int64_t row_bytes, int64_t r0, int64_t r1, int64_t n_rows, \
                               const native_act *a, float *out) {                                          \
        for (int64_t t = 0; t < a->n_tokens; t++)                                                          \
            for (int64_t r = r0; r < r1; r++) out[t * n_rows + r] = lowbit_dot_##name(w + r * row_bytes, a, t); \
    }

LOWBIT_ROWS(iq2_xxs)
LOWBIT_ROWS(tq2_0)
LOWBIT_ROWS(mxfp4)

#endif

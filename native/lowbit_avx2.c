/* AVX2 kernels of the low-bit formats (see lowbit.h), after ggml's ggml_vec_dot_<type>_q8_K / _q8_0
 * (ggml-cpu/arch/x86/quants.c): grid entries gathered by scalar loads, signs applied from 0x00 / 0xff byte
 * masks, pmaddubsw / pmaddwd with the sub-block scales as int16; the ternary formats (TQ1_0, TQ2_0) as
 * unsigned digits 0..3 against the activations, minus the activations' sum (the Q8_K bsums).
 *
 * A format is one block function: block b of one row against NT tokens (1..4, a constant once inlined), its
 * exact integer sums per token (8 int32 lanes each), the block decoded once for all of them. One driver runs
 * every format over rows and tokens: 4-token tiles (a prefill) with the rows of a chunk inside (its weights
 * stay in cache), then the last 1..3 tokens; a decode reduces the sums of 8 blocks at once and prefetches
 * the weights native_prefetch_bytes ahead. Every function carries target("avx2,fma,f16c"): this file
 * compiles with the default flags and runs only where the CPU has them (edgeinfer_native.c chooses). */
#include "lowbit.h"

#if defined(NATIVE_X86)
#include <immintrin.h>

#include "iq_grids.h"

#define FN __attribute__((target("avx2,fma,f16c")))
#define INL static inline __attribute__((always_inline, target("avx2,fma,f16c")))

/* a format's block: blk against the activation blocks y[j] (with their sums of 16, bs[j], for Q8_K) of NT
 * tokens -> s[j] (and e[j], IQ1's delta sums) as 8 int32 lanes whose sum is the block's exact integer sum;
 * returns the block's scale */
typedef float (*block_fn)(const uint8_t *blk, const int8_t *const *y, const int16_t *const *bs, const int NT,
                          __m256i *s, __m256i *e);

INL __m256i load256(const void *p) { return _mm256_loadu_si256((const __m256i *)p); }
INL uint32_t u16_at(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }
INL uint32_t u32_at(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
INL float f16_at(const uint8_t *p) { return _cvtsh_ss((unsigned short)u16_at(p)); }

INL int32_t hsum_i32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
    return _mm_cvtsi128_si32(s);
}

/* int16 scales: s0 for quants 0..15 of a 32-quant group, s1 for 16..31 */
INL __m256i scales16(int s0, int s1) { return _mm256_set_m128i(_mm_set1_epi16((short)s1), _mm_set1_epi16((short)s0)); }

INL __m256i gather64(const uint64_t *table, uint32_t i0, uint32_t i1, uint32_t i2, uint32_t i3) {
    return _mm256_set_epi64x((long long)table[i3], (long long)table[i2], (long long)table[i1], (long long)table[i0]);
}

INL __m256i gather32(const uint32_t *table, const uint32_t i[8]) {
    return _mm256_set_epi32((int)table[i[7]], (int)table[i[6]], (int)table[i[5]], (int)table[i[4]], (int)table[i[3]],
                            (int)table[i[2]], (int)table[i[1]], (int)table[i[0]]);
}

/* 32 bits -> 32 bytes, 0xff where the bit is set (bit j of byte k: byte 8k + j) */
INL __m256i bits_to_mask(const uint8_t *p) {
    const __m256i shuf = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0);
    const __m256i bytes = _mm256_shuffle_epi8(_mm256_set1_epi32((int)u32_at(p)), shuf);
    return _mm256_cmpeq_epi8(_mm256_or_si256(bytes, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe)), _mm256_set1_epi64x(-1));
}

/* magnitudes g (< 128) with the signs of mask m, against 32 quants of each token at y[j] + off, in pairs
 * times the scales sc: acc[j] += 8 int32 partial sums */
INL void masked_dot(__m256i g, __m256i m, __m256i sc, const int8_t *const *y, int off, const int NT, __m256i *acc) {
    const __m256i sign = _mm256_or_si256(m, _mm256_set1_epi8(1));  /* -1 or +1 */
    for (int j = 0; j < NT; j++) {
        const __m256i p = _mm256_maddubs_epi16(g, _mm256_sign_epi8(load256(y[j] + off), sign));
        acc[j] = _mm256_add_epi32(acc[j], _mm256_madd_epi16(p, sc));
    }
}

/* signed x (|x| < 128) . y[j] + off, pairs times sc */
INL void signed_dot(__m256i x, __m256i sc, const int8_t *const *y, int off, const int NT, __m256i *acc) {
    const __m256i ax = _mm256_sign_epi8(x, x);
    for (int j = 0; j < NT; j++) {
        const __m256i p = _mm256_maddubs_epi16(ax, _mm256_sign_epi8(load256(y[j] + off), x));
        acc[j] = _mm256_add_epi32(acc[j], _mm256_madd_epi16(p, sc));
    }
}

INL void zero(__m256i *acc, const int NT) {
    for (int j = 0; j < NT; j++) acc[j] = _mm256_setzero_si256();
}

/* lane k: the sum of the lanes of a[k] */
INL __m256i reduce8(const __m256i a[8]) {
    const __m256i h0 = _mm256_hadd_epi32(_mm256_hadd_epi32(a[0], a[1]), _mm256_hadd_epi32(a[2], a[3]));
    const __m256i h1 = _mm256_hadd_epi32(_mm256_hadd_epi32(a[4], a[5]), _mm256_hadd_epi32(a[6], a[7]));
    return _mm256_add_epi32(_mm256_permute2x128_si256(h0, h1, 0x20), _mm256_permute2x128_si256(h0, h1, 0x31));
}

/* -- the IQ2 / IQ3 lattices: 32 magnitudes and 32 signs per sub-block of 32 -------------------------------- */

INL float blk_iq2_xxs(const uint8_t *blk, const int8_t *const *y, const int16_t *const *bs, const int NT,
                      __m256i *s, __m256i *e) {
    (void)bs; (void)e;
    zero(s, NT);
    for (int ib = 0; ib < 8; ib++) {
        const uint8_t *q = blk + 2 + 8 * ib;
        const uint32_t aux = u32_at(q + 4);
        const __m256i g = gather64(native_iq2xxs_grid, q[0], q[1], q[2], q[3]);
        const __m256i m = gather64(native_ksigns_mask, aux & 127, aux >> 7 & 127, aux >> 14 & 127, aux >> 21 & 127);
        masked_dot(g, m, _mm256_set1_epi16((short)(2 * (aux >> 28) + 1)), y, 32 * ib, NT, s);
    }
    return f16_at(blk);
}

INL float blk_iq2_xs(const uint8_t *blk, const int8_t *const *y, const int16_t *const *bs, const int NT,
                     __m256i *s, __m256i *e) {
    (void)bs; (void)e;
    zero(s, NT);
    for (int ib = 0; ib < 8; ib++) {
        const uint8_t *q = blk + 2 + 8 * ib;
        const uint32_t v0 = u16_at(q), v1 = u16_at(q + 2), v2 = u16_at(q + 4), v3 = u16_at(q + 6);
        const __m256i g = gather64(native_iq2xs_grid, v0 & 511, v1 & 511, v2 & 511, v3 & 511);
        const __m256i m = gather64(native_ksigns_mask, v0 >> 9, v1 >> 9, v2 >> 9, v3 >> 9);
        const int sc = blk[66 + ib];
        masked_dot(g, m, scales16(2 * (sc & 15) + 1, 2 * (sc >> 4) + 1), y, 32 * ib, NT, s);
    }
    return f16_at(blk);
}

INL float blk_iq2_s(const uint8_t *blk, const int8_t *const *y, const int16_t *const *bs, const int NT,
                    __m256i *s, __m256i *e) {
    (void)bs; (void)e;
    zero(s, NT);
    for (int ib = 0; ib < 8; ib++) {
        const uint8_t *q = blk + 2 + 4 * ib;
        const uint32_t qh = blk[66 + ib];
        const __m256i g = gather64(native_iq2s_grid, q[0] | (qh << 8 & 0x300), q[1] | (qh << 6 & 0x300),
                                   q[2] | (qh << 4 & 0x300), q[3] | (qh << 2 & 0x300));
        const int sc = blk[74 + ib];
        masked_dot(g, bits_to_mask(q + 32), scales16(2 * (sc & 15) + 1, 2 * (sc >> 4) + 1), y, 32 * ib, NT, s);
    }
    return f16_at(blk);
}

INL float blk_iq3_xxs(const uint8_t *blk, const int8_t *const *y, const int16_t *const *bs, const int NT,
                      __m256i *s, __m256i *e) {
    (void)bs; (void)e;
    zero(s, NT);
    for (int ib = 0; ib < 8; ib++) {
        const uint8_t *q = blk + 2 + 8 * ib;
        const uint32_t aux = u32_at(blk + 66 + 4 * ib);
        const uint32_t idx[8] = {q[0], q[1], q[2], q[3], q[4], q[5], q[6], q[7]};
        const __m256i g = gather32(native_iq3xxs_grid, idx);
        const __m256i m = gather64(native_ksigns_mask, aux & 127, aux >> 7 & 127, aux >> 14 & 127, aux >> 21 & 127);
        masked_dot(g, m, _mm256_set1_epi16((short)(2 * (aux >> 28) + 1)), y, 32 * ib, NT, s);
    }
    return f16_at(blk);
}

INL float blk_iq3_s(const uint8_t *blk, const int8_t *const *y, const int16_t *const *bs, const int NT,
                    __m256i *s, __m256i *e) {
    (void)bs; (void)e;
    zero(s, NT);
    for (int ib = 0; ib < 8; ib++) {
        const uint8_t *q = blk + 2 + 8 * ib;
        const uint32_t qh = blk[66 + ib];
        uint32_t idx[8];
        for (int k = 0; k < 8; k++) idx[k] = q[k] | (qh << (8 - k) & 256);
        const __m256i g = gather32(native_iq3s_grid, idx);
        const int ls = 2 * (blk[106 + ib / 2] >> (4 * (ib % 2)) & 15) + 1;
        masked_dot(g, bits_to_mask(blk + 74 + 4 * ib), _mm256_set1_epi16((short)ls), y, 32 * ib, NT, s);
    }
    return f16_at(blk);
}

/* -- IQ1: values -1, 0, 1 from a 2048-entry grid, and a delta of +-1/8 (e: its sum, scaled) ---------------- */

INL float blk_iq1_s(const uint8_t *blk, const int8_t *const *y, const int16_t *const *bs, const int NT,
                    __m256i *s, __m256i *e) {
    zero(s, NT);
    int32_t ei[4] = {0, 0, 0, 0};
    for (int ib = 0; ib < 8; ib++) {
        const uint8_t *q = blk + 2 + 4 * ib;
        const uint32_t qh = u16_at(blk + 34 + 2 * ib);
        const __m256i x = gather64(native_iq1s_grid, q[0] | (qh << 8 & 0x700), q[1] | (qh << 5 & 0x700),
                                   q[2] | (qh << 2 & 0x700), q[3] | (qh >> 1 & 0x700));
        const int ls = 2 * (qh >> 12 & 7) + 1, lsd = qh & 0x8000 ? -ls : ls;
        signed_dot(x, _mm256_set1_epi16((short)ls), y, 32 * ib, NT, s);
        for (int j = 0; j < NT; j++) ei[j] += lsd * (bs[j][2 * ib] + bs[j][2 * ib + 1]);
    }
    for (int j = 0; j < NT; j++) e[j] = _mm256_setr_epi32(ei[j], 0, 0, 0, 0, 0, 0, 0);
    return f16_at(blk);
}

INL float blk_iq1_m(const uint8_t *blk, const int8_t *const *y, const int16_t *const *bs, const int NT,
                    __m256i *s, __m256i *e) {
    (void)bs;
    zero(s, NT);
    zero(e, NT);
    for (int ib = 0; ib < 8; ib++) {
        const uint8_t *q = blk + 4 * ib;
        const uint32_t h0 = blk[32 + 2 * ib], h1 = blk[33 + 2 * ib];
        const __m256i x = gather64(native_iq1s_grid, q[0] | (h0 << 8 & 0x700), q[1] | (h0 << 4 & 0x700),
                                   q[2] | (h1 << 8 & 0x700), q[3] | (h1 << 4 & 0x700));
        /* the delta's sign per 8 values: bit 3 of each nibble, as bytes -1 / +1 */
        const long long plus = 0x0101010101010101LL, minus = -1LL;
        const __m256i dv = _mm256_set_epi64x(h1 & 0x80 ? minus : plus, h1 & 8 ? minus : plus,
                                             h0 & 0x80 ? minus : plus, h0 & 8 ? minus : plus);
        const uint32_t sc = u16_at(blk + 48 + 2 * (ib / 2)) >> (6 * (ib % 2));
        const __m256i scales = scales16(2 * (sc & 7) + 1, 2 * (sc >> 3 & 7) + 1);
        signed_dot(x, scales, y, 32 * ib, NT, s);
        signed_dot(dv, scales, y, 32 * ib, NT, e);
    }
    return _cvtsh_ss(lowbit_iq1m_scale_bits(blk));
}

/* -- the ternary formats: digits 0..3 (value + 1) as unsigned bytes; s = digits . y - sum(y) ------------- */

/* each byte of q (a TQ1_0 byte times 3^n, mod 256) -> its ternary digit (q * 3) >> 8 without 8-bit multiplies,
 * as ggml: with q' = q - 1 (saturated), two rounding averages give (q' + ((q' + 1) >> 1) + 1) >> 1, whose
 * bits 6..7 are that digit for every byte value */
INL __m256i tq1_digits(__m256i q) {
    q = _mm256_subs_epu8(q, _mm256_set1_epi8(1));
    q = _mm256_avg_epu8(q, _mm256_avg_epu8(q, _mm256_setzero_si256()));
    return _mm256_and_si256(_mm256_srli_epi16(q, 6), _mm256_set1_epi8(3));
}

/* bytes times 3 and times 9, mod 256 (8-bit multiplies from adds and a masked shift) */
INL __m256i times3(__m256i q) { return _mm256_add_epi8(q, _mm256_add_epi8(q, q)); }
INL __m256i times9(__m256i q) {
    return _mm256_add_epi8(_mm256_and_si256(_mm256_slli_epi16(q, 3), _mm256_set1_epi8((char)0xF8)), q);
}

/* 8 vectors of unsigned digits u[k] against the quants y[j] + off[k] of each token: s[j] = sum u . y - the
 * block's sum of y (int16 lanes: each at most 8 x 2 x 3 x 127 + 2032, exact) */
INL void digits_dot(const __m256i u[8], const int off[8], const int8_t *const *y, const int16_t *const *bs,
                    const int NT, __m256i *s) {
    for (int j = 0; j < NT; j++) {
        __m256i s16 = _mm256_sub_epi16(_mm256_setzero_si256(), load256(bs[j]));
        for (int k = 0; k < 8; k++) s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(u[k], load256(y[j] + off[k])));
        s[j] = _mm256_madd_epi16(s16, _mm256_set1_epi16(1));
    }
}

INL float blk_tq1_0(const uint8_t *blk, const int8_t *const *y, const int16_t *const *bs, const int NT,
                    __m256i *s, __m256i *e) {
    (void)e;
    /* bytes 0..31: 5 digits each (values 32n + m); bytes 32..47: 5 digits (160 + 16n + m); bytes 48..51: 4
     * digits (240 + 4n + j) */
    const __m256i q0 = load256(blk), q1 = times3(q0), q2 = times9(q0), q3 = times9(q1), q4 = times9(q2);
    const __m128i h0 = _mm_loadu_si128((const __m128i *)(blk + 32));
    const __m256i hh = _mm256_broadcastsi128_si256(h0);
    const __m256i h01 = _mm256_blend_epi32(hh, times3(hh), 0xF0);  /* h0 | h0 * 3 */
    const __m256i h23 = times9(h01);                               /* h0 * 9 | h0 * 27 */
    const __m256i h4 = times9(h23);                                /* (h0 * 81 | ...) low half used */
    __m256i qh = _mm256_cvtepu8_epi16(_mm_set1_epi32((int)u32_at(blk + 48)));
    qh = _mm256_and_si256(_mm256_mullo_epi16(qh, _mm256_set_epi16(27, 27, 27, 27, 9, 9, 9, 9, 3, 3, 3, 3, 1, 1, 1, 1)),
                          _mm256_set1_epi16(0xFF));
    const __m128i q5 = _mm_packus_epi16(_mm256_castsi256_si128(qh), _mm256_extracti128_si256(qh, 1));
    const __m256i h45 = _mm256_set_m128i(q5, _mm256_castsi256_si128(h4));
    const __m256i u[8] = {tq1_digits(q0), tq1_digits(q1), tq1_digits(q2), tq1_digits(q3), tq1_digits(q4),
                          tq1_digits(h01), tq1_digits(h23), tq1_digits(h45)};
    static const int off[8] = {0, 32, 64, 96, 128, 160, 192, 224};
    digits_dot(u, off, y, bs, NT, s);
    return f16_at(blk + 52);
}

INL float blk_tq2_0(const uint8_t *blk, const int8_t *const *y, const int16_t *const *bs, const int NT,
                    __m256i *s, __m256i *e) {
    (void)e;
    const __m256i three = _mm256_set1_epi8(3), v0 = load256(blk), v1 = load256(blk + 32);
    const __m256i u[8] = {
        _mm256_and_si256(v0, three), _mm256_and_si256(_mm256_srli_epi16(v0, 2), three),
        _mm256_and_si256(_mm256_srli_epi16(v0, 4), three), _mm256_and_si256(_mm256_srli_epi16(v0, 6), three),
        _mm256_and_si256(v1, three), _mm256_and_si256(_mm256_srli_epi16(v1, 2), three),
        _mm256_and_si256(_mm256_srli_epi16(v1, 4), three), _mm256_and_si256(_mm256_srli_epi16(v1, 6), three),
    };
    static const int off[8] = {0, 32, 64, 96, 128, 160, 192, 224};
    digits_dot(u, off, y, bs, NT, s);
    return f16_at(blk + 64);
}

/* -- MXFP4: 32 FP4 values by a byte shuffle, one E8M0 scale, against Q8_0 ------------------------------ */

INL float blk_mxfp4(const uint8_t *blk, const int8_t *const *y, const int16_t *const *bs, const int NT,
                    __m256i *s, __m256i *e) {
    (void)bs; (void)e;
    const __m256i table = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)lowbit_kvalues_mxfp4));
    const __m128i q = _mm_loadu_si128((const __m128i *)(blk + 1)), low4 = _mm_set1_epi8(0x0F);
    const __m256i idx = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(q, 4), low4), _mm_and_si128(q, low4));
    zero(s, NT);
    signed_dot(_mm256_shuffle_epi8(table, idx), _mm256_set1_epi16(1), y, 0, NT, s);
    return lowbit_e8m0_half(blk[0]);
}

/* -- the driver ------------------------------------------------------------------------------------------ */

INL void prefetch_range(const uint8_t *p, int64_t n) {
    const uintptr_t end = (uintptr_t)p + (uintptr_t)n;
    for (uintptr_t l = (uintptr_t)p & ~(uintptr_t)63; l < end; l += 64) _mm_prefetch((const char *)l, _MM_HINT_T0);
}

/* the activation blocks of tokens t..t+NT-1 for weight block b */
INL void act_blocks(const lowbit_traits *tr, const native_act *a, int64_t t, int64_t b, const int NT,
                    const int8_t **y, const int16_t **bs) {
    for (int j = 0; j < NT; j++) {
        y[j] = a->q + (t + j) * a->n_cols + tr->values * b;
        bs[j] = tr->values == QK_K ? a->bsums + (t + j) * (a->n_cols / 16) + 16 * b : NULL;
    }
}

/* row r against tokens t..t+NT-1. One token: 8 blocks at a time, their integer sums reduced together and
 * their float products in one vector (the same IEEE operations per block), then added in block order. */
INL void tile(const int type, block_fn block, const uint8_t *row, const native_act *a, int64_t t, const int NT,
              float *out, int64_t n_rows, int64_t r) {
    const lowbit_traits *tr = lowbit_traits_of(type);
    const int64_t nb = a->nb;
    float sumf[4] = {0, 0, 0, 0};
    const int8_t *y[4];
    const int16_t *bs[4];
    int64_t b = 0;
    if (NT == 1)
        for (; b + 8 <= nb; b += 8) {
            __m256i s8[8], e8[8];
            float d[8];
            for (int k = 0; k < 8; k++) {
                act_blocks(tr, a, t, b + k, 1, y, bs);
                d[k] = block(row + tr->type_size * (b + k), y, bs, 1, &s8[k], &e8[k]);
            }
            __m256 v = _mm256_cvtepi32_ps(reduce8(s8));
            if (tr->delta)
                v = _mm256_add_ps(v, _mm256_mul_ps(_mm256_set1_ps(LOWBIT_DELTA), _mm256_cvtepi32_ps(reduce8(e8))));
            const __m256 dd = _mm256_mul_ps(_mm256_loadu_ps(d), _mm256_loadu_ps(a->d + t * nb + b));
            float p[8];
            _mm256_storeu_ps(p, _mm256_mul_ps(dd, v));
            for (int k = 0; k < 8; k++) sumf[0] += p[k];
        }
    for (; b < nb; b++) {
        act_blocks(tr, a, t, b, NT, y, bs);
        __m256i s[4], e[4];
        const float d = block(row + tr->type_size * b, y, bs, NT, s, e);
        for (int j = 0; j < NT; j++) {
            const int32_t ej = tr->delta ? hsum_i32(e[j]) : 0;
            sumf[j] = lowbit_acc(tr, sumf[j], d, a->d[(t + j) * nb + b], hsum_i32(s[j]), ej);
        }
    }
    for (int j = 0; j < NT; j++) out[(t + j) * n_rows + r] = lowbit_final(tr, sumf[j]);
}

INL void rows(const int type, block_fn block, const uint8_t *w, int64_t row_bytes, int64_t r0, int64_t r1,
              int64_t n_rows, const native_act *a, float *out) {
    const int64_t T = a->n_tokens;
    int64_t t = 0;
    for (; t + 4 <= T; t += 4)
        for (int64_t r = r0; r < r1; r++) tile(type, block, w + r * row_bytes, a, t, 4, out, n_rows, r);
    if (T - t == 3) {
        for (int64_t r = r0; r < r1; r++) tile(type, block, w + r * row_bytes, a, t, 3, out, n_rows, r);
    } else if (T - t == 2) {
        for (int64_t r = r0; r < r1; r++) tile(type, block, w + r * row_bytes, a, t, 2, out, n_rows, r);
    } else if (T - t == 1) {
        const int64_t pf = T == 1 ? native_prefetch_bytes : 0;  /* a decode streams the weights once */
        if (pf) prefetch_range(w + r0 * row_bytes, pf);
        for (int64_t r = r0; r < r1; r++) {
            if (pf) prefetch_range(w + r * row_bytes + pf, row_bytes);
            tile(type, block, w + r * row_bytes, a, t, 1, out, n_rows, r);
        }
    }
}

#define AVX2_ROWS(name, type)                                                                              \
    FN void lowbit_avx2_##name(const uint8_t *w, int64_t row_bytes, int64_t r0, int64_t r1, int64_t n_rows, \
                               const native_act *a, float *out) {                                         \
        rows(type, blk_##name, w, row_bytes, r0, r1, n_rows, a, out);                                     \
    }
LOWBIT_FORMATS(AVX2_ROWS)

#endif /* NATIVE_X86 */

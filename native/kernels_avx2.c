/* AVX2 / FMA / F16C kernels (x86-64), after ggml's ggml_vec_dot_<type>_q8_<k> (ggml-cpu/arch/x86/quants.c).
 *
 * Every function carries __attribute__((target("avx2,fma,f16c"))): the file compiles with the default
 * flags and is only called after __builtin_cpu_supports said yes.
 *
 * Tiles: tile_<fmt>(R, NT) computes R consecutive rows against NT consecutive tokens, decoding each
 * weight block once for the NT tokens. Each (row, token) output has its own accumulator and sees the
 * same operations in the same order whatever R and NT are, so the results do not depend on the tiling
 * (decode == prefill, bit for bit). Decode runs R = 4 rows x 1 token (independent chains; Q8_0 1 row),
 * prefill R x 4 tokens. A decode prefetches the weights native_prefetch_bytes ahead of the tile.
 */
#include "edgeinfer_native.h"
#include "lowbit.h"
#include "x8.h"

#if defined(NATIVE_X86)
#include <immintrin.h>

#include "transpose_avx2.h"

#define FN __attribute__((target("avx2,fma,f16c")))
#define INL static inline __attribute__((always_inline, target("avx2,fma,f16c")))

INL float f16_at(const uint8_t *p) {
    uint16_t h; memcpy(&h, p, 2);
    return _cvtsh_ss(h);
}

INL float hsum8(__m256 v) {
    __m128 r = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r = _mm_add_ss(r, _mm_movehdup_ps(r));
    return _mm_cvtss_f32(r);
}

INL __m256i load256(const void *p) { return _mm256_loadu_si256((const __m256i *)p); }

/* 16 bytes of nibbles -> 32 bytes: low nibbles, then high nibbles */
INL __m256i nibbles32(const uint8_t *p) {
    const __m128i t = _mm_loadu_si128((const __m128i *)p);
    const __m256i b = _mm256_insertf128_si256(_mm256_castsi128_si256(t), _mm_srli_epi16(t, 4), 1);
    return _mm256_and_si256(b, _mm256_set1_epi8(0x0F));
}

/* 32 bits -> 32 bytes, 0xFF where the bit is set */
INL __m256i bytes_from_bits32(const uint8_t *p) {
    uint32_t x32; memcpy(&x32, p, 4);
    const __m256i shuf = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0);
    __m256i bytes = _mm256_shuffle_epi8(_mm256_set1_epi32((int)x32), shuf);
    bytes = _mm256_or_si256(bytes, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe));
    return _mm256_cmpeq_epi8(bytes, _mm256_set1_epi64x(-1));
}

/* unsigned x (0..255) . signed y, pairs of 4 -> int32x8 */
INL __m256i dot_u8(__m256i x, __m256i y) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(x, y), _mm256_set1_epi16(1));
}

/* -- activation quantizers, bit for bit ggml's reference ones ----------------------------------------- */

INL __m256 abs8(__m256 v) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), v); }

INL float hmax8(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

/* C's roundf: halves away from zero (exact: v - trunc(v) is exact below 2^23) */
INL __m256 roundf8(__m256 v) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    const __m256 t = _mm256_round_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    const __m256 frac = abs8(_mm256_sub_ps(v, t));
    const __m256 up = _mm256_cmp_ps(frac, _mm256_set1_ps(0.5f), _CMP_GE_OQ);
    const __m256 one = _mm256_or_ps(_mm256_set1_ps(1.0f), _mm256_and_ps(v, sign));
    return _mm256_add_ps(t, _mm256_and_ps(up, one));
}

INL float f16_round(float f) { return _cvtsh_ss(_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT)); }

/* 32 floats holding integers in -128..127 -> 32 int8 in order */
INL __m256i pack32(__m256 v0, __m256 v1, __m256 v2, __m256 v3) {
    __m256i i0 = _mm256_cvtps_epi32(v0), i1 = _mm256_cvtps_epi32(v1);
    __m256i i2 = _mm256_cvtps_epi32(v2), i3 = _mm256_cvtps_epi32(v3);
    i0 = _mm256_packs_epi32(i0, i1);
    i2 = _mm256_packs_epi32(i2, i3);
    i0 = _mm256_packs_epi16(i0, i2);
    return _mm256_permutevar8x32_epi32(i0, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

FN static void quantize_q8_0(const float *x, int64_t n, int8_t *q, float *d, float *s) {
    for (int64_t b = 0; b < n / QK; b++) {
        const float *xb = x + QK * b;
        __m256 v0 = _mm256_loadu_ps(xb), v1 = _mm256_loadu_ps(xb + 8);
        __m256 v2 = _mm256_loadu_ps(xb + 16), v3 = _mm256_loadu_ps(xb + 24);
        const float amax = hmax8(_mm256_max_ps(_mm256_max_ps(abs8(v0), abs8(v1)), _mm256_max_ps(abs8(v2), abs8(v3))));
        const float dd = amax / 127.0f;
        const __m256 id = _mm256_set1_ps(dd != 0 ? 1.0f / dd : 0.0f);
        v0 = roundf8(_mm256_mul_ps(v0, id));
        v1 = roundf8(_mm256_mul_ps(v1, id));
        v2 = roundf8(_mm256_mul_ps(v2, id));
        v3 = roundf8(_mm256_mul_ps(v3, id));
        _mm256_storeu_si256((__m256i *)(q + QK * b), pack32(v0, v1, v2, v3));
        d[b] = f16_round(dd);
        if (s) {
            const float sum = hsum8(_mm256_add_ps(_mm256_add_ps(v0, v1), _mm256_add_ps(v2, v3)));  /* exact */
            s[b] = f16_round((float)(int)sum * dd);
        }
    }
}

FN static void quantize_q8_k(const float *x, int64_t n, int8_t *q, float *d, int16_t *bsums) {
    for (int64_t b = 0; b < n / QK_K; b++) {
        const float *xb = x + QK_K * b;
        int8_t *qb = q + QK_K * b;
        __m256 m = _mm256_setzero_ps();
        for (int j = 0; j < QK_K; j += 8) m = _mm256_max_ps(m, abs8(_mm256_loadu_ps(xb + j)));
        const float amax = hmax8(m);
        if (!(amax > 0)) {
            d[b] = 0;
            memset(qb, 0, QK_K);
            memset(bsums + 16 * b, 0, 16 * sizeof(int16_t));
            continue;
        }
        float vmax = 0;  /* the first value of largest magnitude, with its sign (8 compared at a time) */
        const __m256 am = _mm256_set1_ps(amax);
        for (int j = 0; j < QK_K; j += 8) {
            const int hit = _mm256_movemask_ps(_mm256_cmp_ps(abs8(_mm256_loadu_ps(xb + j)), am, _CMP_EQ_OQ));
            if (hit) { vmax = xb[j + __builtin_ctz((unsigned)hit)]; break; }
        }
        const float iscale = -127.f / vmax;
        const __m256 is = _mm256_set1_ps(iscale), top = _mm256_set1_ps(127.0f);
        for (int j = 0; j < QK_K; j += 32) {
            __m256 v[4];
            for (int k = 0; k < 4; k++) {
                v[k] = _mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(xb + j + 8 * k), is),
                                       _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
                v[k] = _mm256_min_ps(v[k], top);
            }
            const __m256i p = pack32(v[0], v[1], v[2], v[3]);
            _mm256_storeu_si256((__m256i *)(qb + j), p);
            /* sums of 16: int16 pair sums, then pairs of those ... */
            __m256i s16 = _mm256_maddubs_epi16(_mm256_set1_epi8(1), p);       /* 16 sums of 2 */
            __m256i s32 = _mm256_madd_epi16(s16, _mm256_set1_epi16(1));       /* 8 sums of 4 */
            __m256i s64 = _mm256_hadd_epi32(s32, s32);                       /* sums of 8: 0,1 | 4,5 per lane */
            s64 = _mm256_hadd_epi32(s64, s64);                               /* sums of 16: lane 0 | lane 1 */
            bsums[16 * b + j / 16] = (int16_t)_mm256_extract_epi32(s64, 0);
            bsums[16 * b + j / 16 + 1] = (int16_t)_mm256_extract_epi32(s64, 4);
        }
        d[b] = 1 / iscale;
    }
}

FN static void quantize_row(const float *x, native_act *a, int64_t t) {
    const int64_t n = a->n_cols;
    switch (a->kind) {
    case ACT_Q8_0:
    case ACT_Q8_1:
        quantize_q8_0(x, n, a->q + t * n, a->d + t * a->nb, a->kind == ACT_Q8_1 ? a->s + t * a->nb : NULL);
        break;
    case ACT_Q8_K:
        quantize_q8_k(x, n, a->q + t * n, a->d + t * a->nb, a->bsums + t * (n / 16));
        break;
    case ACT_F16: {
        int64_t j = 0;
        for (; j + 8 <= n; j += 8)
            _mm256_storeu_ps(a->f + t * n + j,
                             _mm256_cvtph_ps(_mm256_cvtps_ph(_mm256_loadu_ps(x + j), _MM_FROUND_TO_NEAREST_INT)));
        for (; j < n; j++) a->f[t * n + j] = f16_round(x[j]);
        break;
    }
    default:
        memcpy(a->f + t * n, x, (size_t)n * sizeof(float));
    }
}

/* -- legacy formats: blocks of 32 against Q8_0 / Q8_1 ----------------------------------------------- */

/* 16 bytes of nibbles -> 32 bytes (low nibbles, then high nibbles): one broadcast load, a shift of the
 * upper lane, a mask */
INL __m256i nibbles32_b(const uint8_t *p) {
    const __m256i t = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)p));
    return _mm256_and_si256(_mm256_srlv_epi64(t, _mm256_setr_epi64x(0, 0, 4, 4)), _mm256_set1_epi8(0x0F));
}

/* 32 bits -> 32 bytes, 0xFF where the bit is set (a broadcast load, no general-purpose register) */
INL __m256i bytes_from_bits32_b(const uint8_t *p) {
    const __m256i shuf = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0);
    __m256i bytes = _mm256_shuffle_epi8(_mm256_castps_si256(_mm256_broadcast_ss((const float *)p)), shuf);
    bytes = _mm256_or_si256(bytes, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe));
    return _mm256_cmpeq_epi8(bytes, _mm256_set1_epi64x(-1));
}

INL __m256i decode_legacy(const int type, const uint8_t *b) {
    switch (type) {
    case GT_Q4_0:
        return _mm256_sub_epi8(nibbles32_b(b + 2), _mm256_set1_epi8(8));
    case GT_Q4_1:
        return nibbles32_b(b + 4);
    case GT_Q5_0:  /* a clear fifth bit: nibble | 0xF0 = nibble - 16 as int8 */
        return _mm256_or_si256(nibbles32_b(b + 6), _mm256_andnot_si256(bytes_from_bits32_b(b + 2), _mm256_set1_epi8((char)0xF0)));
    case GT_Q5_1:
        return _mm256_or_si256(nibbles32_b(b + 8), _mm256_and_si256(bytes_from_bits32_b(b + 4), _mm256_set1_epi8(0x10)));
    case GT_IQ4_NL: {
        const __m256i values = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)native_kvalues_iq4nl));
        return _mm256_shuffle_epi8(values, nibbles32_b(b + 2));
    }
    default:  /* Q8_0 */
        return load256(b + 2);
    }
}

#define LEGACY_SIZE(type) ((type) == GT_Q4_0 || (type) == GT_IQ4_NL ? 18 : (type) == GT_Q4_1 ? 20 : \
                           (type) == GT_Q5_0 ? 22 : (type) == GT_Q5_1 ? 24 : 34)
#define LEGACY_MIN(type) ((type) == GT_Q4_1 || (type) == GT_Q5_1)

/* The float work of a block, per (row, token): s = (dx * yd, mx * ys) in one 2-lane multiply (the fp16
 * d and m of the weight block converted together, the activation's d and s paired once per block for
 * every row), acc += s[0] * float(int32 dot) lane by lane, summ += s[1] (lane 1 of a 4-lane sum; the other
 * lanes carry unused values). The same IEEE operations in the same order as the scalar formula
 * sum_b (dx*yd) * dot_b, plus sum_b mx*ys. */
INL void tile_legacy(const int type, const int R, const int NT, const uint8_t *w, int64_t row_bytes,
                     int64_t r, const native_act *a, int64_t t, float *out, int64_t n_rows) {
    const int ts = LEGACY_SIZE(type);
    const int with_min = LEGACY_MIN(type);
    const int is_signed = !with_min;
    const int64_t nb = a->nb, nc = a->n_cols;
    __m256 acc[4][4];
    __m128 summ[4][4];
    for (int i = 0; i < R; i++)
        for (int j = 0; j < NT; j++) { acc[i][j] = _mm256_setzero_ps(); summ[i][j] = _mm_setzero_ps(); }
    const int8_t *yq = a->q + t * nc;
    const float *yd = a->d + t * nb;
    const float *ys = with_min ? a->s + t * nb : NULL;
    const uint8_t *w0 = w + r * row_bytes;
    for (int64_t b = 0; b < nb; b++) {
        __m128 yds[4];
        for (int j = 0; j < NT; j++)
            yds[j] = with_min ? _mm_unpacklo_ps(_mm_load_ss(yd + j * nb + b), _mm_load_ss(ys + j * nb + b))
                              : _mm_load_ss(yd + j * nb + b);
        for (int i = 0; i < R; i++) {
            const uint8_t *blk = w0 + i * row_bytes + ts * b;
            const __m256i qx = decode_legacy(type, blk);
            const __m256i ax = is_signed ? _mm256_sign_epi8(qx, qx) : qx;
            uint32_t dm32; memcpy(&dm32, blk, 4);  /* d (and m): fp16 */
            const __m128 dm = _mm_cvtph_ps(_mm_cvtsi32_si128((int)dm32));
            for (int j = 0; j < NT; j++) {
                __m256i y = load256(yq + j * nc + QK * b);
                if (is_signed) y = _mm256_sign_epi8(y, qx);
                const __m256 p = _mm256_cvtepi32_ps(dot_u8(ax, y));
                const __m128 s = with_min ? _mm_mul_ps(dm, yds[j]) : _mm_mul_ss(dm, yds[j]);
                acc[i][j] = _mm256_fmadd_ps(_mm256_broadcastss_ps(s), p, acc[i][j]);
                if (with_min) summ[i][j] = _mm_add_ps(summ[i][j], s);
            }
        }
    }
    for (int i = 0; i < R; i++)
        for (int j = 0; j < NT; j++)
            out[(t + j) * n_rows + r + i] =
                with_min ? hsum8(acc[i][j]) + _mm_cvtss_f32(_mm_movehdup_ps(summ[i][j])) : hsum8(acc[i][j]);
}

/* -- K-quants: super-blocks of 256 against Q8_K ----------------------------------------------------- */

/* shuffle masks: int16 element k of each 128-bit lane, in every int16 of the lane */
INL __m256i pick16(int lo, int hi) {
    const int a = 2 * lo | (2 * lo + 1) << 8, b = 2 * hi | (2 * hi + 1) << 8;
    return _mm256_setr_epi16(a, a, a, a, a, a, a, a, b, b, b, b, b, b, b, b);
}

INL void tile_q45_k(const int type, const int R, const int NT, const uint8_t *w, int64_t row_bytes,
                    int64_t r, const native_act *a, int64_t t, float *out, int64_t n_rows) {
    const int ts = type == GT_Q4_K ? 144 : 176;
    const int64_t nb = a->nb, nc = a->n_cols;
    const __m256i m4 = _mm256_set1_epi8(0x0F), one = _mm256_set1_epi8(1);
    __m256 acc[4][4];
    for (int i = 0; i < R; i++)
        for (int j = 0; j < NT; j++) acc[i][j] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        for (int i = 0; i < R; i++) {
            const uint8_t *blk = w + (r + i) * row_bytes + ts * b;
            uint8_t sm[16];
            native_scales_mins_k4(blk + 4, sm);
            const __m256i ms16 = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)sm));
            const __m128i sc128 = _mm256_castsi256_si128(ms16), mn128 = _mm256_extracti128_si256(ms16, 1);
            const __m256i scales = _mm256_broadcastsi128_si256(sc128);
            /* each min twice: it applies to two sums of 16 */
            const __m256i mins = _mm256_insertf128_si256(_mm256_castsi128_si256(_mm_unpacklo_epi16(mn128, mn128)),
                                                         _mm_unpackhi_epi16(mn128, mn128), 1);
            const float dx = f16_at(blk), dmx = f16_at(blk + 2);
            const uint8_t *qs = blk + (type == GT_Q4_K ? 16 : 48);
            __m256i hbits = _mm256_setzero_si256();
            if (type == GT_Q5_K) hbits = load256(blk + 16);
            __m256i isum[4];
            for (int j = 0; j < NT; j++) isum[j] = _mm256_setzero_si256();
            for (int c = 0; c < 4; c++) {
                const __m256i q = load256(qs + 32 * c);
                __m256i lo = _mm256_and_si256(q, m4);
                __m256i hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
                if (type == GT_Q5_K) {
                    lo = _mm256_or_si256(lo, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hbits, 2 * c), one), 4));
                    hi = _mm256_or_si256(hi, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hbits, 2 * c + 1), one), 4));
                }
                const __m256i s_lo = _mm256_shuffle_epi8(scales, pick16(2 * c, 2 * c));
                const __m256i s_hi = _mm256_shuffle_epi8(scales, pick16(2 * c + 1, 2 * c + 1));
                for (int j = 0; j < NT; j++) {
                    const int8_t *y = a->q + (t + j) * nc + QK_K * b + 64 * c;
                    const __m256i p_lo = _mm256_madd_epi16(s_lo, _mm256_maddubs_epi16(lo, load256(y)));
                    const __m256i p_hi = _mm256_madd_epi16(s_hi, _mm256_maddubs_epi16(hi, load256(y + 32)));
                    isum[j] = _mm256_add_epi32(isum[j], _mm256_add_epi32(p_lo, p_hi));
                }
            }
            for (int j = 0; j < NT; j++) {
                const int64_t yb = (t + j) * nb + b;
                const float dy = a->d[yb];
                const __m256i msum = _mm256_madd_epi16(load256(a->bsums + 16 * yb), mins);
                acc[i][j] = _mm256_fmadd_ps(_mm256_set1_ps(dx * dy), _mm256_cvtepi32_ps(isum[j]), acc[i][j]);
                acc[i][j] = _mm256_fmadd_ps(_mm256_set1_ps(-dmx * dy), _mm256_cvtepi32_ps(msum), acc[i][j]);
            }
        }
    }
    for (int i = 0; i < R; i++)
        for (int j = 0; j < NT; j++) out[(t + j) * n_rows + r + i] = hsum8(acc[i][j]);
}

INL void tile_q6_k(const int type, const int R, const int NT, const uint8_t *w, int64_t row_bytes,
                   int64_t r, const native_act *a, int64_t t, float *out, int64_t n_rows) {
    (void)type;
    const int64_t nb = a->nb, nc = a->n_cols;
    const __m256i m4 = _mm256_set1_epi8(0x0F), m3 = _mm256_set1_epi8(3);
    __m256 acc[4][4];
    for (int i = 0; i < R; i++)
        for (int j = 0; j < NT; j++) acc[i][j] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        for (int i = 0; i < R; i++) {
            const uint8_t *blk = w + (r + i) * row_bytes + 210 * b;
            const float dx = f16_at(blk + 208);
            const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(blk + 192)));
            __m256i isum[4];
            for (int j = 0; j < NT; j++) isum[j] = _mm256_setzero_si256();
            for (int n = 0; n < 2; n++) {
                const __m256i scn = _mm256_permute2x128_si256(sc16, sc16, n ? 0x11 : 0x00);
                const __m256i ql0 = load256(blk + 64 * n), ql1 = load256(blk + 64 * n + 32);
                const __m256i qh = load256(blk + 128 + 32 * n);
                for (int k = 0; k < 4; k++) {
                    const __m256i l = k == 0 ? _mm256_and_si256(ql0, m4)
                                    : k == 1 ? _mm256_and_si256(ql1, m4)
                                    : k == 2 ? _mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4)
                                             : _mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4);
                    const __m256i h = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2 * k), m3), 4);
                    const __m256i q = _mm256_or_si256(l, h);
                    const __m256i s = _mm256_shuffle_epi8(scn, pick16(2 * k, 2 * k + 1));
                    for (int j = 0; j < NT; j++) {
                        const int8_t *y = a->q + (t + j) * nc + QK_K * b + 128 * n + 32 * k;
                        isum[j] = _mm256_add_epi32(isum[j], _mm256_madd_epi16(s, _mm256_maddubs_epi16(q, load256(y))));
                    }
                }
            }
            for (int j = 0; j < NT; j++) {
                const int64_t yb = (t + j) * nb + b;
                /* the - 32 of every quant: 32 * sum over sub-blocks of scale * bsum */
                const __m256i off = _mm256_slli_epi32(_mm256_madd_epi16(sc16, load256(a->bsums + 16 * yb)), 5);
                acc[i][j] = _mm256_fmadd_ps(_mm256_set1_ps(dx * a->d[yb]),
                                            _mm256_cvtepi32_ps(_mm256_sub_epi32(isum[j], off)), acc[i][j]);
            }
        }
    }
    for (int i = 0; i < R; i++)
        for (int j = 0; j < NT; j++) out[(t + j) * n_rows + r + i] = hsum8(acc[i][j]);
}

/* -- float weights ---------------------------------------------------------------------------------- */

INL __m256 load_w8(const int type, const uint8_t *row, int64_t j) {
    if (type == GT_F32) return _mm256_loadu_ps((const float *)(row + 4 * j));
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(row + 2 * j)));
}

INL float load_w1(const int type, const uint8_t *row, int64_t j) {
    if (type == GT_F32) { float v; memcpy(&v, row + 4 * j, 4); return v; }
    return f16_at(row + 2 * j);
}

INL void tile_float(const int type, const int R, const int NT, const uint8_t *w, int64_t row_bytes,
                    int64_t r, const native_act *a, int64_t t, float *out, int64_t n_rows) {
    const int64_t n = a->n_cols, n8 = n - n % 8;
    __m256 acc[4][4];
    for (int i = 0; i < R; i++)
        for (int j = 0; j < NT; j++) acc[i][j] = _mm256_setzero_ps();
    for (int64_t k = 0; k < n8; k += 8)
        for (int i = 0; i < R; i++) {
            const __m256 wv = load_w8(type, w + (r + i) * row_bytes, k);
            for (int j = 0; j < NT; j++)
                acc[i][j] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(a->f + (t + j) * n + k), acc[i][j]);
        }
    for (int i = 0; i < R; i++)
        for (int j = 0; j < NT; j++) {
            float s = hsum8(acc[i][j]);
            for (int64_t k = n8; k < n; k++) s += load_w1(type, w + (r + i) * row_bytes, k) * a->f[(t + j) * n + k];
            out[(t + j) * n_rows + r + i] = s;
        }
}

/* -- row drivers: tiles of NT_P tokens x R_P rows (prefill), then single tokens x R_D rows (decode) --- */

/* software prefetch of the weight bytes [p, p + n) (decode streams the weights from DRAM once) */
INL void prefetch_range(const uint8_t *p, int64_t n) {
    const uintptr_t end = (uintptr_t)p + (uintptr_t)n;
    for (uintptr_t l = (uintptr_t)p & ~(uintptr_t)63; l < end; l += 64) _mm_prefetch((const char *)l, _MM_HINT_T0);
}

/* Up to SMALL_BATCH tokens (continuous batching: one token of each of a few sequences), rows outer and
 * token tiles inner: a block of rows comes from memory once (prefetched ahead, as in a decode) and is
 * used for every token while it is in L1. The tiles compute each (row, token) as they always do. */
#define SMALL_BATCH 16
#define SMALL(name, tile, type, R_P, NT_P)                                                              \
    FN static void small_##name(const uint8_t *w, int64_t row_bytes, int64_t r0, int64_t r1,           \
                                int64_t n_rows, const native_act *a, float *out) {                     \
        const int64_t T = a->n_tokens, pf = native_prefetch_bytes;                                     \
        int64_t r = r0;                                                                                \
        prefetch_range(w + r0 * row_bytes, pf + R_P * row_bytes);                                      \
        for (; r + R_P <= r1; r += R_P) {                                                              \
            prefetch_range(w + (r + R_P) * row_bytes + pf, R_P * row_bytes);                           \
            int64_t t = 0;                                                                             \
            for (; t + NT_P <= T; t += NT_P) tile(type, R_P, NT_P, w, row_bytes, r, a, t, out, n_rows);\
            if (T - t == 3) tile(type, R_P, 3, w, row_bytes, r, a, t, out, n_rows);                    \
            else if (T - t == 2) tile(type, R_P, 2, w, row_bytes, r, a, t, out, n_rows);               \
            else if (T - t == 1) tile(type, R_P, 1, w, row_bytes, r, a, t, out, n_rows);               \
        }                                                                                              \
        for (; r < r1; r++) {                                                                          \
            int64_t t = 0;                                                                             \
            for (; t + NT_P <= T; t += NT_P) tile(type, 1, NT_P, w, row_bytes, r, a, t, out, n_rows);  \
            if (T - t == 3) tile(type, 1, 3, w, row_bytes, r, a, t, out, n_rows);                      \
            else if (T - t == 2) tile(type, 1, 2, w, row_bytes, r, a, t, out, n_rows);                 \
            else if (T - t == 1) tile(type, 1, 1, w, row_bytes, r, a, t, out, n_rows);                 \
        }                                                                                              \
    }

#define ROWS(name, tile, type, R_P, NT_P, R_D)                                                         \
    SMALL(name, tile, type, R_P, NT_P)                                                                 \
    FN static void rows_##name(const uint8_t *w, int64_t row_bytes, int64_t r0, int64_t r1,            \
                               int64_t n_rows, const native_act *a, float *out) {                      \
        const int64_t T = a->n_tokens;                                                                 \
        int64_t t = 0;                                                                                 \
        if (T >= NT_P && T <= SMALL_BATCH) { /* a few sequences' decode step: every row once for all */ \
            small_##name(w, row_bytes, r0, r1, n_rows, a, out);                                        \
            return;                                                                                    \
        }                                                                                              \
        for (; t + NT_P <= T; t += NT_P) {                                                             \
            int64_t r = r0;                                                                            \
            for (; r + R_P <= r1; r += R_P) tile(type, R_P, NT_P, w, row_bytes, r, a, t, out, n_rows); \
            for (; r < r1; r++) tile(type, 1, NT_P, w, row_bytes, r, a, t, out, n_rows);               \
        }                                                                                              \
        /* 2 or 3 tokens left: one narrower tile (each weight block decoded once for all of them) */    \
        if (T - t == 2 || T - t == 3) { /* the tile's NT must be a constant (immediates inside) */     \
            int64_t r = r0;                                                                            \
            if (T - t == 2) {                                                                          \
                for (; r + R_P <= r1; r += R_P) tile(type, R_P, 2, w, row_bytes, r, a, t, out, n_rows);\
                for (; r < r1; r++) tile(type, 1, 2, w, row_bytes, r, a, t, out, n_rows);              \
            } else {                                                                                   \
                for (; r + R_P <= r1; r += R_P) tile(type, R_P, 3, w, row_bytes, r, a, t, out, n_rows);\
                for (; r < r1; r++) tile(type, 1, 3, w, row_bytes, r, a, t, out, n_rows);              \
            }                                                                                          \
            t = T;                                                                                     \
        }                                                                                              \
        /* a decode (fewer tokens than a prefill tile): the rows stream from memory, prefetched */     \
        const int64_t pf = T < NT_P ? native_prefetch_bytes : 0;                                       \
        for (; t < T; t++) {                                                                           \
            int64_t r = r0;                                                                            \
            if (pf) prefetch_range(w + r0 * row_bytes, pf + R_D * row_bytes);                          \
            for (; r + R_D <= r1; r += R_D) {                                                          \
                if (pf) prefetch_range(w + (r + R_D) * row_bytes + pf, R_D * row_bytes);               \
                tile(type, R_D, 1, w, row_bytes, r, a, t, out, n_rows);                                \
            }                                                                                          \
            for (; r < r1; r++) tile(type, 1, 1, w, row_bytes, r, a, t, out, n_rows);                  \
        }                                                                                              \
    }


/* -- Q4_1 for several tokens: eight rows at once, in lanes -----------------------------------------------
 *
 * tile_legacy's arithmetic for Q4_1, (row, token) by (row, token): per block, s = (dx * yd, mx * ys),
 * acc[k] = fma(s0, P[k], acc[k]) for the 8 int32 partial dots P[k] (bytes 4k..4k+3 of the block), summ +=
 * s1; at the end hsum8(acc) + summ. Here eight rows' blocks are decoded and transposed as an 8x8 matrix of
 * int32, so that vector k holds bytes 4k..4k+3 of every row (lane i: row i). A token's bytes 4k..4k+3
 * broadcast to every lane then give P[k] of all eight rows in one maddubs + madd, the float work of eight
 * rows is one vector, and hsum8 becomes adds between the eight accumulators: the same IEEE operations per
 * output as tile_legacy's, so a token's outputs are the same bits alone (a decode, tile_legacy) and among
 * others (this tile). The transposition is paid once per block for every token of the tile. A partial
 * group of rows is padded with copies of its last row (lanes never mix). */

INL int32_t load_i32(const void *p) { int32_t v; memcpy(&v, p, 4); return v; }

#define Q41_TOKENS 16  /* tokens per tile_q4_1_x8 call */
#define Q41_CHUNK 32   /* blocks decoded and transposed at a time (8 KiB + 2 KiB of stack) */

/* rows r..r+nr-1 (nr <= 8) x tokens t..t+nt-1 (nt <= Q41_TOKENS). The blocks are transposed a chunk at a
 * time into a buffer in L1, then each token runs over the chunk with its eight accumulators in registers. */
INL void tile_q4_1_x8(const uint8_t *w, int64_t row_bytes, int64_t r, int nr, const native_act *a,
                      int64_t t, int nt, float *out, int64_t n_rows) {
    const int64_t nb = a->nb, nc = a->n_cols;
    const uint8_t *rows[8];
    for (int i = 0; i < 8; i++) rows[i] = w + (r + (i < nr ? i : nr - 1)) * row_bytes;
    const __m256i ones = _mm256_set1_epi16(1);
    const __m256i pick_dm = _mm256_setr_epi8(0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15,
                                             0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15);
    __m256i buf[Q41_CHUNK][8];
    __m256 dxs[Q41_CHUNK], mxs[Q41_CHUNK];
    __m256 acc[Q41_TOKENS][8], summ[Q41_TOKENS];
    for (int j = 0; j < nt; j++) {
        summ[j] = _mm256_setzero_ps();
        for (int k = 0; k < 8; k++) acc[j][k] = _mm256_setzero_ps();
    }
    const int8_t *yq = a->q + t * nc;
    const float *yd = a->d + t * nb, *ys = a->s + t * nb;
    for (int64_t b0 = 0; b0 < nb; b0 += Q41_CHUNK) {
        const int n = nb - b0 < Q41_CHUNK ? (int)(nb - b0) : Q41_CHUNK;
        for (int c = 0; c < n; c++) {
            const int64_t off = 20 * (b0 + c);
            __m256i *v = buf[c];
            for (int i = 0; i < 8; i++) v[i] = nibbles32_b(rows[i] + off + 4);
            transpose8_epi32(v);
            /* d and m (fp16) of the 8 rows: [d0..d3 m0..m3 | d4..d7 m4..m7] -> d0..d7, m0..m7 */
            const __m256i dm = _mm256_setr_epi32(load_i32(rows[0] + off), load_i32(rows[1] + off),
                                                 load_i32(rows[2] + off), load_i32(rows[3] + off),
                                                 load_i32(rows[4] + off), load_i32(rows[5] + off),
                                                 load_i32(rows[6] + off), load_i32(rows[7] + off));
            const __m256i p = _mm256_permute4x64_epi64(_mm256_shuffle_epi8(dm, pick_dm), _MM_SHUFFLE(3, 1, 2, 0));
            dxs[c] = _mm256_cvtph_ps(_mm256_castsi256_si128(p));
            mxs[c] = _mm256_cvtph_ps(_mm256_extracti128_si256(p, 1));
        }
        for (int j = 0; j < nt; j++) {
            __m256 c0 = acc[j][0], c1 = acc[j][1], c2 = acc[j][2], c3 = acc[j][3];
            __m256 c4 = acc[j][4], c5 = acc[j][5], c6 = acc[j][6], c7 = acc[j][7], sm = summ[j];
            const int8_t *y = yq + j * nc + QK * b0;
            const float *ydj = yd + j * nb + b0, *ysj = ys + j * nb + b0;
            for (int c = 0; c < n; c++, y += QK) {
                const __m256 s0 = _mm256_mul_ps(dxs[c], _mm256_set1_ps(ydj[c]));
                sm = _mm256_add_ps(sm, _mm256_mul_ps(mxs[c], _mm256_set1_ps(ysj[c])));
                const __m256i *v = buf[c];
#define Q41_K(k, ck) ck = _mm256_fmadd_ps(s0, _mm256_cvtepi32_ps(_mm256_madd_epi16(                           \
                         _mm256_maddubs_epi16(v[k], _mm256_set1_epi32(load_i32(y + 4 * k))), ones)), ck)
                Q41_K(0, c0); Q41_K(1, c1); Q41_K(2, c2); Q41_K(3, c3);
                Q41_K(4, c4); Q41_K(5, c5); Q41_K(6, c6); Q41_K(7, c7);
#undef Q41_K
            }
            acc[j][0] = c0; acc[j][1] = c1; acc[j][2] = c2; acc[j][3] = c3;
            acc[j][4] = c4; acc[j][5] = c5; acc[j][6] = c6; acc[j][7] = c7; summ[j] = sm;
        }
    }
    for (int j = 0; j < nt; j++) {
        const __m256 *c = acc[j];  /* hsum8's order: ((0+4) + (2+6)) + ((1+5) + (3+7)) */
        const __m256 h = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(c[0], c[4]), _mm256_add_ps(c[2], c[6])),
                                       _mm256_add_ps(_mm256_add_ps(c[1], c[5]), _mm256_add_ps(c[3], c[7])));
        const __m256 res = _mm256_add_ps(h, summ[j]);
        float *o = out + (t + j) * n_rows + r;
        if (nr == 8) {
            _mm256_storeu_ps(o, res);
        } else {
            float tmp[8];
            _mm256_storeu_ps(tmp, res);
            memcpy(o, tmp, (size_t)nr * sizeof(float));
        }
    }
}

/* One token (a decode): the legacy row driver (tile_legacy, 4 rows at a time, prefetched ahead). Several:
 * groups of 8 rows, each against the tokens Q41_TOKENS at a time (a few sequences' step also prefetches). */
ROWS(q4_1_one, tile_legacy, GT_Q4_1, 1, 4, 4)

FN static void rows_q4_1(const uint8_t *w, int64_t row_bytes, int64_t r0, int64_t r1, int64_t n_rows,
                         const native_act *a, float *out) {
    const int64_t T = a->n_tokens;
    if (T == 1) {
        rows_q4_1_one(w, row_bytes, r0, r1, n_rows, a, out);
        return;
    }
    const int64_t pf = T <= SMALL_BATCH ? native_prefetch_bytes : 0;
    if (pf) prefetch_range(w + r0 * row_bytes, pf + 8 * row_bytes);
    for (int64_t r = r0; r < r1; r += 8) {
        const int nr = r1 - r < 8 ? (int)(r1 - r) : 8;
        if (pf) prefetch_range(w + (r + 8) * row_bytes + pf, 8 * row_bytes);
        for (int64_t t = 0; t < T; t += Q41_TOKENS)
            tile_q4_1_x8(w, row_bytes, r, nr, a, t, T - t < Q41_TOKENS ? (int)(T - t) : Q41_TOKENS, out, n_rows);
    }
}

ROWS(q4_0, tile_legacy, GT_Q4_0, 2, 4, 4)
ROWS(q5_0, tile_legacy, GT_Q5_0, 2, 4, 4)
ROWS(q5_1, tile_legacy, GT_Q5_1, 1, 4, 4)
ROWS(q8_0, tile_legacy, GT_Q8_0, 2, 4, 1)
ROWS(iq4_nl, tile_legacy, GT_IQ4_NL, 2, 4, 4)
ROWS(q4_k, tile_q45_k, GT_Q4_K, 1, 4, 2)
ROWS(q5_k, tile_q45_k, GT_Q5_K, 1, 4, 2)
ROWS(q6_k, tile_q6_k, GT_Q6_K, 1, 4, 2)
ROWS(f32, tile_float, GT_F32, 2, 4, 4)
ROWS(f16, tile_float, GT_F16, 2, 4, 4)

const native_kernels native_kernels_avx2 = {
    .name = "avx2",
    .rows = {
        [GT_F32] = rows_f32, [GT_F16] = rows_f16,
        [GT_Q4_0] = rows_q4_0, [GT_Q4_1] = rows_q4_1, [GT_Q5_0] = rows_q5_0, [GT_Q5_1] = rows_q5_1,
        [GT_Q8_0] = rows_q8_0, [GT_IQ4_NL] = rows_iq4_nl,
        [GT_Q4_K] = rows_q4_k, [GT_Q5_K] = rows_q5_k, [GT_Q6_K] = rows_q6_k,
        LOWBIT_ROWS_avx2  /* lowbit_avx2.c */
    },
    .quantize = quantize_row,
    .x8 = native_x8_avx2,
};

#endif /* NATIVE_X86 */

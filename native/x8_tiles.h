/* The x8 tiles (x8.h), written once for every x86 kernel set that includes this file after defining:
 *   X8_TARGET               the target attribute of its functions (the instruction sets it may use)
 *   ACC_ADD(acc, u, s)      acc + the products of unsigned bytes u and signed bytes s, summed in pairs (the
 *                           AVX2 form keeps int16 pairs: callers bound the sums; VNNI keeps int32 quads)
 *   ACC_I32(acc)            such an accumulator as int32 lanes (each lane: one row's sum)
 *   ACC_SCALED(acc, sc)     the same times sc, given as an int16 pair (sc, sc) per 32-bit lane
 *   ACC_ADD32(acc, u, s)    int32 acc + the products of u and s summed per 32-bit lane
 *   X8_TABLE                the name of the table of kernels this file defines at its end
 * The integer results are exact either way: every kernel set gives the same bits.
 *
 * X8_EMULATED (tests/isa/: never in the extension) drops the target attributes: the harness compiles a set
 * against SIMDe's portable intrinsics, checking on any x86 CPU the bits of a set this one cannot run. */
#include <immintrin.h>

#if defined(X8_EMULATED)
#define FN
#define INL static inline __attribute__((always_inline))
#else
#define FN __attribute__((target(X8_TARGET)))
#define INL static inline __attribute__((always_inline, target(X8_TARGET)))
#endif

/* v, opaque to the compiler: a chain of int16 / int32 adds it would otherwise reassociate (integer adds
 * wrap: any order gives the same bits), computing every product of a sub-block first and spilling them */
#if defined(X8_EMULATED) || !defined(__GNUC__)
#define KEEP_ORDER(v) ((void)0)
#else
#define KEEP_ORDER(v) __asm__("" : "+x"(v))
#endif

INL __m256i load256(const void *p) { return _mm256_loadu_si256((const __m256i *)p); }
INL int32_t load_i32(const void *p) { int32_t v; memcpy(&v, p, 4); return v; }
INL __m256i bcast32(const void *p) { return _mm256_set1_epi32(load_i32(p)); }
INL __m256 load_f16x8(const uint8_t *p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)); }

INL void prefetch_range(const uint8_t *p, int64_t n) {
    const uintptr_t end = (uintptr_t)p + (uintptr_t)n;
    for (uintptr_t l = (uintptr_t)p & ~(uintptr_t)63; l < end; l += 64) _mm_prefetch((const char *)l, _MM_HINT_T0);
}

/* part i of `parts` of a group block of gb bytes, pf bytes ahead: a large block's lines are requested a few
 * at a time as its sub-blocks are computed (as a small block's are), not all at its start (in one burst,
 * a 1680-byte Q6_K block streamed ~10% slower from DRAM on one Zen 3 core) */
INL void prefetch_part(const uint8_t *blk, int64_t pf, int gb, int i, int parts) {
    if (pf) prefetch_range(blk + pf + gb * i / parts, gb * (i + 1) / parts - gb * i / parts);
}

INL void store_tile(float *out, int64_t n_rows, int64_t t, int64_t r, int nr, const __m256 *acc, const int NT) {
    for (int j = 0; j < NT; j++) {
        float *o = out + (t + j) * n_rows + r;
        if (nr == 8) {
            _mm256_storeu_ps(o, acc[j]);
        } else {
            float tmp[8];
            _mm256_storeu_ps(tmp, acc[j]);
            memcpy(o, tmp, (size_t)nr * sizeof(float));
        }
    }
}

/* acc[j] = fma(d8 * d_tok, float(sumi), acc[j]) */
INL __m256 scale_acc(__m256 d8, float dy, __m256i sumi, __m256 acc) {
    return _mm256_fmadd_ps(_mm256_mul_ps(d8, _mm256_set1_ps(dy)), _mm256_cvtepi32_ps(sumi), acc);
}

/* -- Q4_0: nibbles taken unsigned (0..15); the -8 is 8 x the activation block's sum of quants ---------- */

INL void tile_q4_0(const uint8_t *g, const native_act *a, int64_t t, const int NT, float *out, int64_t n_rows,
                   int64_t r, int nr, int64_t pf) {
    const int64_t nb = a->nb, nc = a->n_cols;
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    __m256 acc[4];
    for (int j = 0; j < NT; j++) acc[j] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = g + 144 * b;
        if (pf) prefetch_range(blk + pf, 144);
        __m256i s16[4];  /* 8 pair sums of <= 2 * 15 * 127 each: within int16 */
        for (int j = 0; j < NT; j++) s16[j] = _mm256_setzero_si256();
        _Pragma("GCC unroll 16")
        for (int k = 0; k < 4; k++) {
            const __m256i w = load256(blk + 16 + 32 * k);
            const __m256i lo = _mm256_and_si256(w, m4), hi = _mm256_and_si256(_mm256_srli_epi16(w, 4), m4);
            for (int j = 0; j < NT; j++) {
                const int8_t *y = a->q + (t + j) * nc + QK * b + 4 * k;
                s16[j] = ACC_ADD(s16[j], lo, bcast32(y));
                s16[j] = ACC_ADD(s16[j], hi, bcast32(y + 16));
                KEEP_ORDER(s16[j]);
            }
        }
        const __m256 d8 = load_f16x8(blk);
        for (int j = 0; j < NT; j++) {
            const int64_t yb = (t + j) * nb + b;
            const __m256i sumi = _mm256_sub_epi32(ACC_I32(s16[j]), _mm256_set1_epi32(8 * a->qsum[yb]));
            acc[j] = scale_acc(d8, a->d[yb], sumi, acc[j]);
        }
    }
    store_tile(out, n_rows, t, r, nr, acc, NT);
}

/* -- Q8_0: |w| . (y with w's sign), pairs of int16 summed to int32 at once ------------------------------ */

INL void tile_q8_0(const uint8_t *g, const native_act *a, int64_t t, const int NT, float *out, int64_t n_rows,
                   int64_t r, int nr, int64_t pf) {
    const int64_t nb = a->nb, nc = a->n_cols;
    __m256 acc[4];
    for (int j = 0; j < NT; j++) acc[j] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = g + 272 * b;
        if (pf) prefetch_range(blk + pf, 272);
        __m256i s32[4];
        for (int j = 0; j < NT; j++) s32[j] = _mm256_setzero_si256();
        _Pragma("GCC unroll 16")
        for (int k = 0; k < 8; k++) {
            const __m256i w = load256(blk + 16 + 32 * k);
            const __m256i aw = _mm256_sign_epi8(w, w);
            for (int j = 0; j < NT; j++) {
                const __m256i y = _mm256_sign_epi8(bcast32(a->q + (t + j) * nc + QK * b + 4 * k), w);
                s32[j] = ACC_ADD32(s32[j], aw, y);
                KEEP_ORDER(s32[j]);
            }
        }
        const __m256 d8 = load_f16x8(blk);
        for (int j = 0; j < NT; j++) {
            const int64_t yb = (t + j) * nb + b;
            acc[j] = scale_acc(d8, a->d[yb], s32[j], acc[j]);
        }
    }
    store_tile(out, n_rows, t, r, nr, acc, NT);
}

/* -- Q4_K / Q5_K: the eight rows' 6-bit scales unpacked together (a lane per row), each applied as an
 * int16 pair in the madd that widens a sub-block's sums --------------------------------------------------- */

/* vpshufb masks: byte jj of every 32-bit lane into both int16 halves of that lane */
INL __m256i dup_byte_mask(int jj) {
    const __m256i base = _mm256_setr_epi32((int)0x80008000u, (int)0x80048004u, (int)0x80088008u, (int)0x800C800Cu,
                                           (int)0x80008000u, (int)0x80048004u, (int)0x80088008u, (int)0x800C800Cu);
    return _mm256_add_epi32(base, _mm256_set1_epi32(jj * 0x00010001));
}

/* five: Q5_K (a fifth bit per quant: bit s of qh[l] for sub-block s; 4 pair sums of <= 2 * 31 * 127 per
 * int16 accumulator), else Q4_K (8 pair sums of <= 2 * 15 * 127) */
INL void tile_q45_k(const int five, const uint8_t *g, const native_act *a, int64_t t, const int NT, float *out,
                    int64_t n_rows, int64_t r, int nr, int64_t pf) {
    const int gb = five ? 1408 : 1152, qs = five ? 384 : 128, per = five ? 4 : 8;
    const int64_t nb = a->nb, nc = a->n_cols;
    const __m256i m4 = _mm256_set1_epi8(0x0F), one = _mm256_set1_epi8(1);
    const __m256i k1 = _mm256_set1_epi32(0x3f3f3f3f), k2 = _mm256_set1_epi32(0x0f0f0f0f),
                  k3 = _mm256_set1_epi32(0x03030303);
    const __m256i dup[4] = {dup_byte_mask(0), dup_byte_mask(1), dup_byte_mask(2), dup_byte_mask(3)};
    __m256 acc[4];
    for (int j = 0; j < NT; j++) acc[j] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = g + gb * b;
        const __m256i w0 = load256(blk + 32), w1 = load256(blk + 64), w2 = load256(blk + 96);
        const __m256i u0 = _mm256_and_si256(w0, k1), u2 = _mm256_and_si256(w1, k1);
        const __m256i u1 = _mm256_or_si256(_mm256_and_si256(w2, k2),
                                           _mm256_slli_epi32(_mm256_and_si256(_mm256_srli_epi32(w0, 6), k3), 4));
        const __m256i u3 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi32(w2, 4), k2),
                                           _mm256_slli_epi32(_mm256_and_si256(_mm256_srli_epi32(w1, 6), k3), 4));
        /* the eight sub-blocks' scales, each an int16 pair per lane */
        __m256i scv[8];
        _Pragma("GCC unroll 16")
        for (int s = 0; s < 8; s++) scv[s] = _mm256_shuffle_epi8(s < 4 ? u0 : u1, dup[s & 3]);
        __m256i isum[4], msum[4];
        for (int j = 0; j < NT; j++) isum[j] = _mm256_setzero_si256();
        /* a loop (not unrolled) over the four 64-value chunks: a body the compiler schedules without
         * spilling its int16 sums (fully unrolled, it stored every vpmaddubsw product to the stack) */
        _Pragma("GCC unroll 1")
        for (int c = 0; c < 4; c++) {
            _Pragma("GCC unroll 16")
            for (int h = 0; h < 2; h++) {
                const int s = 2 * c + h;
                prefetch_part(blk, pf, gb, s, 8);
                const __m256i sc = scv[s];
                _Pragma("GCC unroll 16")
                for (int half = 0; half < 8 / per; half++) {
                    __m256i s16[4];
                    for (int j = 0; j < NT; j++) s16[j] = _mm256_setzero_si256();
                    _Pragma("GCC unroll 16")
                    for (int k = per * half; k < per * half + per; k++) {
                        const __m256i w = load256(blk + qs + 32 * (8 * c + k));
                        __m256i v = h ? _mm256_and_si256(_mm256_srli_epi16(w, 4), m4) : _mm256_and_si256(w, m4);
                        if (five)
                            v = _mm256_or_si256(v, _mm256_slli_epi16(_mm256_and_si256(
                                    _mm256_srl_epi16(load256(blk + 128 + 32 * k), _mm_cvtsi32_si128(s)), one), 4));
                        for (int j = 0; j < NT; j++) {
                            const int8_t *y = a->q + (t + j) * nc + QK_K * b + 64 * c + 32 * h + 4 * k;
                            s16[j] = ACC_ADD(s16[j], v, bcast32(y));
                            KEEP_ORDER(s16[j]);
                        }
                    }
                    for (int j = 0; j < NT; j++) isum[j] = _mm256_add_epi32(isum[j], ACC_SCALED(s16[j], sc));
                }
            }
        }
        /* msum = sum over the 8 sub-blocks p of min_p x (bsum_2p + bsum_2p+1): the mins as int16 pairs
         * (min_2q, min_2q+1) per lane, times the token's 32-value sums as the same pairs (its 16 bsums
         * summed in pairs by a madd, packed to int16: they are within +-4096, then each pair broadcast) */
        const __m256i pair_lo = _mm256_setr_epi32((int)0x80018000u, (int)0x80058004u, (int)0x80098008u, (int)0x800D800Cu,
                                                  (int)0x80018000u, (int)0x80058004u, (int)0x80098008u, (int)0x800D800Cu);
        const __m256i pair_hi = _mm256_add_epi32(pair_lo, _mm256_set1_epi32(0x00020002));
        const __m256i mq[4] = {_mm256_shuffle_epi8(u2, pair_lo), _mm256_shuffle_epi8(u2, pair_hi),
                               _mm256_shuffle_epi8(u3, pair_lo), _mm256_shuffle_epi8(u3, pair_hi)};
        for (int j = 0; j < NT; j++) {
            const __m256i s32 = _mm256_madd_epi16(load256(a->bsums + (t + j) * (nc / 16) + 16 * b), _mm256_set1_epi16(1));
            const __m256i s16 = _mm256_packs_epi32(s32, s32);  /* lane 0: pairs (0,1),(2,3); lane 1: (4,5),(6,7) */
            __m256i m = _mm256_madd_epi16(mq[0], _mm256_permutevar8x32_epi32(s16, _mm256_set1_epi32(0)));
            m = _mm256_add_epi32(m, _mm256_madd_epi16(mq[1], _mm256_permutevar8x32_epi32(s16, _mm256_set1_epi32(1))));
            m = _mm256_add_epi32(m, _mm256_madd_epi16(mq[2], _mm256_permutevar8x32_epi32(s16, _mm256_set1_epi32(4))));
            msum[j] = _mm256_add_epi32(m, _mm256_madd_epi16(mq[3], _mm256_permutevar8x32_epi32(s16, _mm256_set1_epi32(5))));
        }
        const __m256 d8 = load_f16x8(blk), dmin8 = load_f16x8(blk + 16);
        for (int j = 0; j < NT; j++) {
            const __m256 dy = _mm256_set1_ps(a->d[(t + j) * nb + b]);
            acc[j] = _mm256_fmadd_ps(_mm256_mul_ps(d8, dy), _mm256_cvtepi32_ps(isum[j]), acc[j]);
            acc[j] = _mm256_fnmadd_ps(_mm256_mul_ps(dmin8, dy), _mm256_cvtepi32_ps(msum[j]), acc[j]);
        }
    }
    store_tile(out, n_rows, t, r, nr, acc, NT);
}

INL void tile_q4_k(const uint8_t *g, const native_act *a, int64_t t, const int NT, float *out, int64_t n_rows,
                   int64_t r, int nr, int64_t pf) {
    tile_q45_k(0, g, a, t, NT, out, n_rows, r, nr, pf);
}

INL void tile_q5_k(const uint8_t *g, const native_act *a, int64_t t, const int NT, float *out, int64_t n_rows,
                   int64_t r, int nr, int64_t pf) {
    tile_q45_k(1, g, a, t, NT, out, n_rows, r, nr, pf);
}

/* -- Q6_K: quants 0..63 (the -32 is 32 x sum of scale x bsum), int8 scales per 16 values ------------------ */

INL void tile_q6_k(const uint8_t *g, const native_act *a, int64_t t, const int NT, float *out, int64_t n_rows,
                   int64_t r, int nr, int64_t pf) {
    const int64_t nb = a->nb, nc = a->n_cols;
    const __m256i m4 = _mm256_set1_epi8(0x0F), m30 = _mm256_set1_epi8(0x30);
    /* int16 element 0 (1) of every 32-bit lane into both halves: (sc_2p, sc_2p+1) -> (sc, sc) */
    const __m256i dup_lo = _mm256_setr_epi32(0x01000100, 0x05040504, 0x09080908, 0x0D0C0D0C,
                                             0x01000100, 0x05040504, 0x09080908, 0x0D0C0D0C);
    const __m256i dup_hi = _mm256_setr_epi32(0x03020302, 0x07060706, 0x0B0A0B0A, 0x0F0E0F0E,
                                             0x03020302, 0x07060706, 0x0B0A0B0A, 0x0F0E0F0E);
    __m256 acc[4];
    for (int j = 0; j < NT; j++) acc[j] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = g + 1680 * b;
        __m256i isum[4], off[4];  /* sum of sc * q . y; sum of sc * bsum (the offset: 32 x it): exact in int32 */
        for (int j = 0; j < NT; j++) isum[j] = off[j] = _mm256_setzero_si256();
        /* a loop (not unrolled) over the two halves, the int16 / int32 sums kept in order (see tile_q45_k) */
        _Pragma("GCC unroll 1")
        for (int n = 0; n < 2; n++)
        _Pragma("GCC unroll 16")
        for (int qd = 0; qd < 4; qd++) {  /* sub-blocks 2p, 2p + 1: values 32p .. 32p + 31 */
            const int p = 4 * n + qd;
            prefetch_part(blk, pf, 1680, p, 8);
            const __m256i scp = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(blk + 16 + 16 * p)));
            for (int j = 0; j < NT; j++) {
                const int16_t *bs = a->bsums + (t + j) * (nc / 16) + 16 * b + 2 * p;
                off[j] = _mm256_add_epi32(off[j], _mm256_madd_epi16(scp, bcast32(bs)));
                KEEP_ORDER(off[j]);
            }
            _Pragma("GCC unroll 16")
            for (int e = 0; e < 2; e++) {
                const __m256i sc = _mm256_shuffle_epi8(scp, e ? dup_hi : dup_lo);
                _Pragma("GCC unroll 16")
                for (int kp = 0; kp < 4; kp += 2) {
                    __m256i q[2];
                    _Pragma("GCC unroll 16")
                    for (int u = 0; u < 2; u++) {
                        const int kk = kp + u;
                        const __m256i l = load256(blk + 144 + 32 * (16 * n + 8 * (qd & 1) + 4 * e + kk));
                        const __m256i h = load256(blk + 1168 + 32 * (8 * n + 4 * e + kk));
                        const __m256i lo = qd < 2 ? _mm256_and_si256(l, m4) : _mm256_and_si256(_mm256_srli_epi16(l, 4), m4);
                        /* bits 2qd, 2qd + 1 of each qh byte to bits 4, 5 (16-bit shifts: what crosses into
                         * a neighbouring byte lands outside the mask) */
                        const __m256i hs = qd == 0 ? _mm256_slli_epi16(h, 4) : qd == 1 ? _mm256_slli_epi16(h, 2)
                                         : qd == 2 ? h : _mm256_srli_epi16(h, 2);
                        q[u] = _mm256_or_si256(lo, _mm256_and_si256(hs, m30));
                    }
                    for (int j = 0; j < NT; j++) {
                        const int8_t *y = a->q + (t + j) * nc + QK_K * b + 32 * p + 16 * e + 4 * kp;
                        /* two pair sums of <= 2 * 63 * 127 each: within int16; times the scale in the madd */
                        const __m256i s16 = ACC_ADD(ACC_ADD(_mm256_setzero_si256(), q[0], bcast32(y)), q[1], bcast32(y + 4));
                        isum[j] = _mm256_add_epi32(isum[j], ACC_SCALED(s16, sc));
                        KEEP_ORDER(isum[j]);
                    }
                }
            }
        }
        const __m256 d8 = load_f16x8(blk);
        for (int j = 0; j < NT; j++) {
            const __m256i sumi = _mm256_sub_epi32(isum[j], _mm256_slli_epi32(off[j], 5));
            acc[j] = scale_acc(d8, a->d[(t + j) * nb + b], sumi, acc[j]);
        }
    }
    store_tile(out, n_rows, t, r, nr, acc, NT);
}

/* -- Q5_0: quants 0..31 (the -16 is 16 x the activation block's sum); the fifth bits of eight rows are
 * one vector (lane r: row r's 32-bit qh), spread to bytes per word of quants ---------------------------- */

/* bits 4k'..4k'+3 of each lane's qh (shifted down already) -> bytes 0..3 of that lane: 0x10 where set */
INL __m256i fifth_bits(__m256i qh_shifted) {
    const __m256i spread = _mm256_setr_epi8(0, 0, 0, 0, 4, 4, 4, 4, 8, 8, 8, 8, 12, 12, 12, 12,
                                            0, 0, 0, 0, 4, 4, 4, 4, 8, 8, 8, 8, 12, 12, 12, 12);
    const __m256i bit = _mm256_set1_epi32(0x08040201);
    const __m256i set = _mm256_cmpeq_epi8(_mm256_and_si256(_mm256_shuffle_epi8(qh_shifted, spread), bit), bit);
    return _mm256_and_si256(set, _mm256_set1_epi8(0x10));
}

INL void tile_q5_0(const uint8_t *g, const native_act *a, int64_t t, const int NT, float *out, int64_t n_rows,
                   int64_t r, int nr, int64_t pf) {
    const int64_t nb = a->nb, nc = a->n_cols;
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    __m256 acc[4];
    for (int j = 0; j < NT; j++) acc[j] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = g + 176 * b;
        if (pf) prefetch_range(blk + pf, 176);
        const __m256i qh = load256(blk + 16);
        __m256i s16l[4], s16h[4];  /* 4 pair sums of <= 2 * 31 * 127 each: within int16 */
        for (int j = 0; j < NT; j++) s16l[j] = s16h[j] = _mm256_setzero_si256();
        _Pragma("GCC unroll 16")
        for (int k = 0; k < 4; k++) {
            const __m256i w = load256(blk + 48 + 32 * k);
            __m256i lo = _mm256_and_si256(w, m4), hi = _mm256_and_si256(_mm256_srli_epi16(w, 4), m4);
            lo = _mm256_or_si256(lo, fifth_bits(_mm256_srli_epi32(qh, 4 * k)));
            hi = _mm256_or_si256(hi, fifth_bits(_mm256_srli_epi32(qh, 16 + 4 * k)));
            for (int j = 0; j < NT; j++) {
                const int8_t *y = a->q + (t + j) * nc + QK * b + 4 * k;
                s16l[j] = ACC_ADD(s16l[j], lo, bcast32(y));
                s16h[j] = ACC_ADD(s16h[j], hi, bcast32(y + 16));
                KEEP_ORDER(s16l[j]);
                KEEP_ORDER(s16h[j]);
            }
        }
        const __m256 d8 = load_f16x8(blk);
        for (int j = 0; j < NT; j++) {
            const int64_t yb = (t + j) * nb + b;
            const __m256i dot = _mm256_add_epi32(ACC_I32(s16l[j]), ACC_I32(s16h[j]));
            acc[j] = scale_acc(d8, a->d[yb], _mm256_sub_epi32(dot, _mm256_set1_epi32(16 * a->qsum[yb])), acc[j]);
        }
    }
    store_tile(out, n_rows, t, r, nr, acc, NT);
}

/* -- IQ4_NL: nibbles through the 16-value table (signed), then Q8_0's |w| . (y with w's sign) ------------ */

INL void tile_iq4_nl(const uint8_t *g, const native_act *a, int64_t t, const int NT, float *out, int64_t n_rows,
                     int64_t r, int nr, int64_t pf) {
    const int64_t nb = a->nb, nc = a->n_cols;
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    const __m256i values = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)native_kvalues_iq4nl));
    __m256 acc[4];
    for (int j = 0; j < NT; j++) acc[j] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = g + 144 * b;
        if (pf) prefetch_range(blk + pf, 144);
        __m256i s32[4];
        for (int j = 0; j < NT; j++) s32[j] = _mm256_setzero_si256();
        _Pragma("GCC unroll 16")
        for (int k = 0; k < 4; k++) {
            const __m256i w = load256(blk + 16 + 32 * k);
            _Pragma("GCC unroll 16")
            for (int h = 0; h < 2; h++) {
                const __m256i v = _mm256_shuffle_epi8(values, h ? _mm256_and_si256(_mm256_srli_epi16(w, 4), m4)
                                                                : _mm256_and_si256(w, m4));
                const __m256i av = _mm256_sign_epi8(v, v);
                for (int j = 0; j < NT; j++) {
                    const __m256i y = _mm256_sign_epi8(bcast32(a->q + (t + j) * nc + QK * b + 16 * h + 4 * k), v);
                    s32[j] = ACC_ADD32(s32[j], av, y);
                    KEEP_ORDER(s32[j]);
                }
            }
        }
        const __m256 d8 = load_f16x8(blk);
        for (int j = 0; j < NT; j++) acc[j] = scale_acc(d8, a->d[(t + j) * nb + b], s32[j], acc[j]);
    }
    store_tile(out, n_rows, t, r, nr, acc, NT);
}

/* -- IQ4_XS: IQ4_NL's values, a 6-bit scale (minus 32) per 32 ------------------------------------------- */

INL void tile_iq4_xs(const uint8_t *g, const native_act *a, int64_t t, const int NT, float *out, int64_t n_rows,
                     int64_t r, int nr, int64_t pf) {
    const int64_t nb = a->nb, nc = a->n_cols;
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    const __m256i values = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)native_kvalues_iq4nl));
    __m256 acc[4];
    for (int j = 0; j < NT; j++) acc[j] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = g + 1088 * b;
        const __m256i sh = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(blk + 16)));
        const __m256i sl = load256(blk + 32);
        __m256i isum[4];
        for (int j = 0; j < NT; j++) isum[j] = _mm256_setzero_si256();
        _Pragma("GCC unroll 16")
        for (int ib = 0; ib < 8; ib++) {
            prefetch_part(blk, pf, 1088, ib, 8);
            const __m256i ls = _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi32(sl, 4 * ib), _mm256_set1_epi32(0x0F)),
                _mm256_slli_epi32(_mm256_and_si256(_mm256_srli_epi32(sh, 2 * ib), _mm256_set1_epi32(3)), 4));
            const __m256i scale = _mm256_sub_epi32(ls, _mm256_set1_epi32(32));
            __m256i dot[4];
            for (int j = 0; j < NT; j++) dot[j] = _mm256_setzero_si256();
            _Pragma("GCC unroll 16")
            for (int k = 0; k < 4; k++) {
                const __m256i w = load256(blk + 64 + 32 * (4 * ib + k));
                _Pragma("GCC unroll 16")
                for (int h = 0; h < 2; h++) {
                    const __m256i v = _mm256_shuffle_epi8(values, h ? _mm256_and_si256(_mm256_srli_epi16(w, 4), m4)
                                                                    : _mm256_and_si256(w, m4));
                    const __m256i av = _mm256_sign_epi8(v, v);
                    for (int j = 0; j < NT; j++) {
                        const int8_t *y = a->q + (t + j) * nc + QK_K * b + 32 * ib + 16 * h + 4 * k;
                        const __m256i ys = _mm256_sign_epi8(bcast32(y), v);
                        dot[j] = ACC_ADD32(dot[j], av, ys);
                        KEEP_ORDER(dot[j]);
                    }
                }
            }
            for (int j = 0; j < NT; j++) isum[j] = _mm256_add_epi32(isum[j], _mm256_mullo_epi32(dot[j], scale));
        }
        const __m256 d8 = load_f16x8(blk);
        for (int j = 0; j < NT; j++) acc[j] = scale_acc(d8, a->d[(t + j) * nb + b], isum[j], acc[j]);
    }
    store_tile(out, n_rows, t, r, nr, acc, NT);
}

X8_ROWS(q4_0, tile_q4_0)
X8_ROWS(q8_0, tile_q8_0)
X8_ROWS(q4_k, tile_q4_k)
X8_ROWS(q6_k, tile_q6_k)
X8_ROWS(q5_0, tile_q5_0)
X8_ROWS(iq4_nl, tile_iq4_nl)
X8_ROWS(q5_k, tile_q5_k)
X8_ROWS(iq4_xs, tile_iq4_xs)

/* the kernel set's table (X8_TABLE: its name, defined by the including file) */
const native_rows_fn X8_TABLE[GT_COUNT] = {
    [GT_Q4_0] = x8_q4_0, [GT_Q8_0] = x8_q8_0, [GT_Q4_K] = x8_q4_k, [GT_Q6_K] = x8_q6_k,
    [GT_Q5_0] = x8_q5_0, [GT_IQ4_NL] = x8_iq4_nl, [GT_Q5_K] = x8_q5_k, [GT_IQ4_XS] = x8_iq4_xs,
};

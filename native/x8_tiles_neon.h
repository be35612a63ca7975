/* The x8 tiles (x8.h) in NEON, written once for the ARM kernel sets that include this file after defining:
 *   X8_TARGET           the target attribute of its functions, or leave it undefined (plain ARMv8 NEON)
 *   DOT4(acc, w, y)     int32x4 acc + in each lane the sum of the four int8 products of that lane's bytes
 *   DOT4_LANE(acc, w, y, lane)  (optional) DOT4 against the 4 bytes of y's 32-bit lane `lane` (a constant)
 *                       in every lane: sdot by element; without it, that lane is broadcast (dup) first
 *   X8_I8MM             (optional) the tiles of 2-4 tokens use SMMLA (vmmlaq_s32) instead of DOT4; one token
 *                       (a decode) keeps DOT4_LANE
 *   X8_TABLE            the name of the table of kernels this file defines at its end
 * A 32-byte word of a group block (row r's 4 bytes in lane r) is two q registers: rows 0-3 and rows 4-7.
 * NEON's dot products are signed x signed, so the weights' quants go in as they are (no sign tricks); the
 * integer block dots are exact and the float operations per (row, token) those x8.h fixes, in that order:
 * every kernel set, x86 or ARM, gives the scalar kernels' bits (x8.c).
 *
 * X8_EMULATED (tests/isa/: never in the extension) drops the target attributes: the harness compiles a set
 * against SIMDe's portable NEON intrinsics on x86. */
#include <arm_neon.h>

#if defined(X8_EMULATED) || !defined(X8_TARGET)
#define FN
#define INL static inline __attribute__((always_inline))
#else
#define FN __attribute__((target(X8_TARGET)))
#define INL static inline __attribute__((always_inline, target(X8_TARGET)))
#endif

typedef struct { uint8x16_t lo, hi; } v8u8;    /* one group word: rows 0-3 (lo), 4-7 (hi), 4 bytes each */
typedef struct { int32x4_t lo, hi; } v8i32;    /* lane r: row r */
typedef struct { float32x4_t lo, hi; } v8f32;

INL v8u8 load8(const uint8_t *p) { const v8u8 v = {vld1q_u8(p), vld1q_u8(p + 16)}; return v; }
INL v8u8 and8(v8u8 v, uint8x16_t m) { const v8u8 r = {vandq_u8(v.lo, m), vandq_u8(v.hi, m)}; return r; }
INL v8u8 shr4_8(v8u8 v) { const v8u8 r = {vshrq_n_u8(v.lo, 4), vshrq_n_u8(v.hi, 4)}; return r; }
INL v8u8 or8(v8u8 a, v8u8 b) { const v8u8 r = {vorrq_u8(a.lo, b.lo), vorrq_u8(a.hi, b.hi)}; return r; }
INL v8i32 zero8(void) { const v8i32 r = {vdupq_n_s32(0), vdupq_n_s32(0)}; return r; }

/* acc + the eight rows' 4-byte dots with the 4 activation bytes in 32-bit lane `lane` of y (16 loaded bytes:
 * one load feeds four words' dots, no broadcast per word); lane: a constant once inlined and unrolled */
INL int32x4_t dot4_lane(int32x4_t acc, int8x16_t w, int8x16_t y, const int lane) {
#if defined(DOT4_LANE)
    switch (lane) {
    case 0: return DOT4_LANE(acc, w, y, 0);
    case 1: return DOT4_LANE(acc, w, y, 1);
    case 2: return DOT4_LANE(acc, w, y, 2);
    default: return DOT4_LANE(acc, w, y, 3);
    }
#else
    const int32x4_t y32 = vreinterpretq_s32_s8(y);
    int32x4_t b;
    switch (lane) {
    case 0: b = vdupq_laneq_s32(y32, 0); break;
    case 1: b = vdupq_laneq_s32(y32, 1); break;
    case 2: b = vdupq_laneq_s32(y32, 2); break;
    default: b = vdupq_laneq_s32(y32, 3); break;
    }
    return DOT4(acc, w, vreinterpretq_s8_s32(b));
#endif
}

INL v8i32 dot8(v8i32 acc, v8u8 w, int8x16_t y, const int lane) {
    const v8i32 r = {dot4_lane(acc.lo, vreinterpretq_s8_u8(w.lo), y, lane),
                     dot4_lane(acc.hi, vreinterpretq_s8_u8(w.hi), y, lane)};
    return r;
}

/* -- one run of dot products: n consecutive group words (k = 0..n-1, n 4 or 8) of eight rows against NT
 * tokens, word k holding the quants of activations 4k..4k+3 (from each token's pointer y[j]); the tiles decode
 * two words at a time (k, k + 1) and hand them to run_pair, then read each token's eight dots.
 *
 * With DOT4 (sdot, or the widening multiplies), each word is one dot per token, its four activation bytes
 * taken from a lane of a 16-byte vector loaded once per run.
 *
 * With X8_I8MM, from 2 tokens up: SMMLA (vmmlaq_s32(acc, a, b): acc[2i + j] += sum_k a[8i + k] b[8j + k])
 * multiplies two rows x 8 quants by two tokens x 8 activations. Two words of consecutive quants, zipped as
 * 32-bit lanes, are four such row pairs (rows 0-1, 2-3, 4-5, 6-7, each with quants 4k..4k+7), and the
 * tokens are taken in pairs (8 activation bytes of each; an odd NT repeats its last token): per 8 quants
 * of 8 rows and a token pair, 4 SMMLA where sdot needs 8, for 4 zips shared by the token pairs. The x8
 * layout stays the one every ISA reads (its 4-byte words feed sdot; an 8-byte-word variant for SMMLA would
 * be a second layout, repacked per CPU, for the cost of these zips): see README, instruction sets. A dot is
 * the same integer whatever the order of its terms, so the bits are the sdot tiles'. */

#if defined(X8_I8MM)
#define X8_MM(NT) ((NT) > 1)
#else
#define X8_MM(NT) 0
#endif

/* a token pair (a, b) x 8 rows: v[p] = [r2p.a, r2p.b, r2p+1.a, r2p+1.b] (row r's dot with token a: r.a) */
typedef struct { int32x4_t v[4]; } mm8;

typedef struct {
    const int8_t *y[4];    /* token j's activation of word 0 (j >= NT: the last token's) */
    int8x16_t yv[4][2];    /* DOT4: token j's activations 0-15, 16-31 */
    v8i32 s[4];            /* DOT4: token j's dots, lane r: row r */
    mm8 m[2];              /* SMMLA: token pair q's dots */
} run_t;

INL void run_start(run_t *d, const int NT, const int n, const int8_t *y, int64_t stride) {
    for (int j = 0; j < 4; j++) d->y[j] = y + (j < NT ? j : NT - 1) * stride;
    if (X8_MM(NT)) {
        for (int q = 0; q < (NT + 1) / 2; q++)
            for (int p = 0; p < 4; p++) d->m[q].v[p] = vdupq_n_s32(0);
        return;
    }
    for (int j = 0; j < NT; j++) {
        for (int h = 0; h < n / 4; h++) d->yv[j][h] = vld1q_s8(d->y[j] + 16 * h);
        d->s[j].lo = d->s[j].hi = vdupq_n_s32(0);
    }
}

#if defined(X8_I8MM)
/* row pair p (rows 2p, 2p + 1) of two consecutive words: 8 quants of each row */
INL int8x16_t mm_rows(v8u8 wa, v8u8 wb, const int p) {
    const uint32x4_t a = vreinterpretq_u32_u8(p < 2 ? wa.lo : wa.hi);
    const uint32x4_t b = vreinterpretq_u32_u8(p < 2 ? wb.lo : wb.hi);
    return vreinterpretq_s8_u32(p % 2 ? vzip2q_u32(a, b) : vzip1q_u32(a, b));
}
#endif

/* words k, k + 1 (k even) of the run, decoded: each token's dots += their dots with activations 4k..4k+7 */
INL void run_pair(run_t *d, const int NT, const int k, v8u8 wa, v8u8 wb) {
#if defined(X8_I8MM)
    if (X8_MM(NT)) {
        int8x16_t ya[2];
        for (int q = 0; q < (NT + 1) / 2; q++)
            ya[q] = vcombine_s8(vld1_s8(d->y[2 * q] + 4 * k), vld1_s8(d->y[2 * q + 1] + 4 * k));
        for (int p = 0; p < 4; p++) {
            const int8x16_t w = mm_rows(wa, wb, p);
            for (int q = 0; q < (NT + 1) / 2; q++) d->m[q].v[p] = vmmlaq_s32(d->m[q].v[p], w, ya[q]);
        }
        return;
    }
#endif
    for (int j = 0; j < NT; j++)
        d->s[j] = dot8(dot8(d->s[j], wa, d->yv[j][k / 4], k % 4), wb, d->yv[j][k / 4], k % 4 + 1);
}

/* token j's eight dots of the run (lane r: row r) */
INL v8i32 run_dot(const run_t *d, const int NT, const int j) {
#if defined(X8_I8MM)
    if (X8_MM(NT)) {
        const mm8 m = d->m[j / 2];
        const v8i32 r = {j % 2 ? vuzp2q_s32(m.v[0], m.v[1]) : vuzp1q_s32(m.v[0], m.v[1]),
                         j % 2 ? vuzp2q_s32(m.v[2], m.v[3]) : vuzp1q_s32(m.v[2], m.v[3])};
        return r;
    }
#endif
    return d->s[j];
}

INL v8i32 madd8(v8i32 acc, v8i32 a, v8i32 b) {  /* acc + a * b, int32 lanes */
    const v8i32 r = {vmlaq_s32(acc.lo, a.lo, b.lo), vmlaq_s32(acc.hi, a.hi, b.hi)};
    return r;
}

INL v8i32 sub_n8(v8i32 a, int32_t n) {
    const v8i32 r = {vsubq_s32(a.lo, vdupq_n_s32(n)), vsubq_s32(a.hi, vdupq_n_s32(n))};
    return r;
}

/* byte `byte` of each 32-bit lane, as an int32 */
INL v8i32 lane_byte(v8u8 v, int byte) {
    const int32x4_t sh = vdupq_n_s32(-8 * byte);
    const uint32x4_t ff = vdupq_n_u32(0xFF);
    const v8i32 r = {vreinterpretq_s32_u32(vandq_u32(vshlq_u32(vreinterpretq_u32_u8(v.lo), sh), ff)),
                     vreinterpretq_s32_u32(vandq_u32(vshlq_u32(vreinterpretq_u32_u8(v.hi), sh), ff))};
    return r;
}

INL v8f32 load_f16x8(const uint8_t *p) {
    const uint16x8_t h = vld1q_u16((const uint16_t *)p);
    const v8f32 r = {vcvt_f32_f16(vreinterpret_f16_u16(vget_low_u16(h))),
                     vcvt_f32_f16(vreinterpret_f16_u16(vget_high_u16(h)))};
    return r;
}

INL void prefetch_range(const uint8_t *p, int64_t n) {
    const uintptr_t end = (uintptr_t)p + (uintptr_t)n;
    for (uintptr_t l = (uintptr_t)p & ~(uintptr_t)63; l < end; l += 64) __builtin_prefetch((const void *)l);
}

INL void store_tile(float *out, int64_t n_rows, int64_t t, int64_t r, int nr, const v8f32 *acc, const int NT) {
    for (int j = 0; j < NT; j++) {
        float *o = out + (t + j) * n_rows + r;
        float tmp[8];
        float *dst = nr == 8 ? o : tmp;
        vst1q_f32(dst, acc[j].lo);
        vst1q_f32(dst + 4, acc[j].hi);
        if (nr != 8) memcpy(o, tmp, (size_t)nr * sizeof(float));
    }
}

/* acc = fma(d8 * d_tok, float(sumi), acc) */
INL v8f32 scale_acc(v8f32 d8, float dy, v8i32 sumi, v8f32 acc) {
    const float32x4_t vy = vdupq_n_f32(dy);
    const v8f32 r = {vfmaq_f32(acc.lo, vmulq_f32(d8.lo, vy), vcvtq_f32_s32(sumi.lo)),
                     vfmaq_f32(acc.hi, vmulq_f32(d8.hi, vy), vcvtq_f32_s32(sumi.hi))};
    return r;
}

/* acc = fma(-(dmin8 * d_tok), float(msum), acc) */
INL v8f32 scale_min(v8f32 dmin8, float dy, v8i32 msum, v8f32 acc) {
    const float32x4_t vy = vdupq_n_f32(dy);
    const v8f32 r = {vfmaq_f32(acc.lo, vnegq_f32(vmulq_f32(dmin8.lo, vy)), vcvtq_f32_s32(msum.lo)),
                     vfmaq_f32(acc.hi, vnegq_f32(vmulq_f32(dmin8.hi, vy)), vcvtq_f32_s32(msum.hi))};
    return r;
}

#define ZERO_ACC(acc, NT) for (int j = 0; j < (NT); j++) acc[j].lo = acc[j].hi = vdupq_n_f32(0)

/* -- Q4_0: nibbles taken unsigned (0..15); the -8 is 8 x the activation block's sum of quants ---------- */

INL void tile_q4_0(const uint8_t *g, const native_act *a, int64_t t, const int NT, float *out, int64_t n_rows,
                   int64_t r, int nr, int64_t pf) {
    const int64_t nb = a->nb, nc = a->n_cols;
    const uint8x16_t m4 = vdupq_n_u8(0x0F);
    v8f32 acc[4];
    ZERO_ACC(acc, NT);
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = g + 144 * b;
        if (pf) prefetch_range(blk + pf, 144);
        run_t d;  /* words 0-3: low nibbles (activations 0-15), 4-7: high nibbles (16-31) */
        run_start(&d, NT, 8, a->q + t * nc + QK * b, nc);
        _Pragma("GCC unroll 16")
        for (int k = 0; k < 4; k += 2) {
            const v8u8 wa = load8(blk + 16 + 32 * k), wb = load8(blk + 48 + 32 * k);
            run_pair(&d, NT, k, and8(wa, m4), and8(wb, m4));
            run_pair(&d, NT, 4 + k, shr4_8(wa), shr4_8(wb));
        }
        const v8f32 d8 = load_f16x8(blk);
        for (int j = 0; j < NT; j++) {
            const int64_t yb = (t + j) * nb + b;
            acc[j] = scale_acc(d8, a->d[yb], sub_n8(run_dot(&d, NT, j), 8 * a->qsum[yb]), acc[j]);
        }
    }
    store_tile(out, n_rows, t, r, nr, acc, NT);
}

/* -- Q8_0: signed bytes straight into the dot ------------------------------------------------------------ */

INL void tile_q8_0(const uint8_t *g, const native_act *a, int64_t t, const int NT, float *out, int64_t n_rows,
                   int64_t r, int nr, int64_t pf) {
    const int64_t nb = a->nb, nc = a->n_cols;
    v8f32 acc[4];
    ZERO_ACC(acc, NT);
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = g + 272 * b;
        if (pf) prefetch_range(blk + pf, 272);
        run_t d;
        run_start(&d, NT, 8, a->q + t * nc + QK * b, nc);
        _Pragma("GCC unroll 16")
        for (int k = 0; k < 8; k += 2) run_pair(&d, NT, k, load8(blk + 16 + 32 * k), load8(blk + 48 + 32 * k));
        const v8f32 d8 = load_f16x8(blk);
        for (int j = 0; j < NT; j++) acc[j] = scale_acc(d8, a->d[(t + j) * nb + b], run_dot(&d, NT, j), acc[j]);
    }
    store_tile(out, n_rows, t, r, nr, acc, NT);
}

/* -- Q4_K / Q5_K: the eight rows' 6-bit scales and mins unpacked together (a lane per row, one byte per
 * sub-block), each sub-block's dot times its scale in int32 ------------------------------------------------ */

/* (a >> shift_a & 0x0f0f0f0f) | ((b >> 6 & 0x03030303) << 4) per 32-bit lane: scales or mins 4-7 */
INL v8u8 k4_bits(v8u8 a, int shift_a, v8u8 b) {
    const int32x4_t sa = vdupq_n_s32(-shift_a);
    const uint32x4_t ma = vdupq_n_u32(0x0f0f0f0f), m3 = vdupq_n_u32(0x03030303);
    uint32x4_t lo = vandq_u32(vshlq_u32(vreinterpretq_u32_u8(a.lo), sa), ma);
    uint32x4_t hi = vandq_u32(vshlq_u32(vreinterpretq_u32_u8(a.hi), sa), ma);
    lo = vorrq_u32(lo, vshlq_n_u32(vandq_u32(vshrq_n_u32(vreinterpretq_u32_u8(b.lo), 6), m3), 4));
    hi = vorrq_u32(hi, vshlq_n_u32(vandq_u32(vshrq_n_u32(vreinterpretq_u32_u8(b.hi), 6), m3), 4));
    const v8u8 r = {vreinterpretq_u8_u32(lo), vreinterpretq_u8_u32(hi)};
    return r;
}

/* word k of sub-block s (c = s / 2, h = s % 2): its quants 0..15, or 0..31 with Q5_K's fifth bits (bit s of
 * qh word k) */
INL v8u8 q45_k_word(const int five, const uint8_t *blk, const int s, const int k) {
    const uint8x16_t m4 = vdupq_n_u8(0x0F), m10 = vdupq_n_u8(0x10), bit = vdupq_n_u8((uint8_t)(1u << s));
    const v8u8 w = load8(blk + (five ? 384 : 128) + 32 * (8 * (s / 2) + k));
    const v8u8 v = s % 2 ? shr4_8(w) : and8(w, m4);
    if (!five) return v;
    const v8u8 qh = load8(blk + 128 + 32 * k);
    const v8u8 b5 = {vandq_u8(vtstq_u8(qh.lo, bit), m10), vandq_u8(vtstq_u8(qh.hi, bit), m10)};
    return or8(v, b5);
}

/* five: Q5_K (a fifth bit per quant: bit s of qh[l] for sub-block s), else Q4_K */
INL void tile_q45_k(const int five, const uint8_t *g, const native_act *a, int64_t t, const int NT, float *out,
                    int64_t n_rows, int64_t r, int nr, int64_t pf) {
    const int gb = five ? 1408 : 1152;
    const int64_t nb = a->nb, nc = a->n_cols;
    const uint8x16_t k1 = vdupq_n_u8(0x3f);
    v8f32 acc[4];
    ZERO_ACC(acc, NT);
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = g + gb * b;
        if (pf) prefetch_range(blk + pf, gb);
        const v8u8 w0 = load8(blk + 32), w1 = load8(blk + 64), w2 = load8(blk + 96);
        const v8u8 u0 = and8(w0, k1), u2 = and8(w1, k1);          /* scales 0-3, mins 0-3 */
        const v8u8 u1 = k4_bits(w2, 0, w0);               /* scales 4-7 */
        const v8u8 u3 = k4_bits(w2, 4, w1);               /* mins 4-7 */
        v8i32 isum[4], msum[4];
        for (int j = 0; j < NT; j++) isum[j] = msum[j] = zero8();
        _Pragma("GCC unroll 16")
        for (int s = 0; s < 8; s++) {
            const v8i32 sc = lane_byte(s < 4 ? u0 : u1, s & 3);
            run_t d;
            run_start(&d, NT, 8, a->q + t * nc + QK_K * b + 32 * s, nc);
            _Pragma("GCC unroll 16")
            for (int k = 0; k < 8; k += 2)
                run_pair(&d, NT, k, q45_k_word(five, blk, s, k), q45_k_word(five, blk, s, k + 1));
            for (int j = 0; j < NT; j++) isum[j] = madd8(isum[j], run_dot(&d, NT, j), sc);
        }
        _Pragma("GCC unroll 16")
        for (int p = 0; p < 8; p++) {
            const v8i32 m = lane_byte(p < 4 ? u2 : u3, p & 3);
            for (int j = 0; j < NT; j++) {
                const int16_t *bs = a->bsums + (t + j) * (nc / 16) + 16 * b + 2 * p;
                const int32_t pair = (int32_t)bs[0] + bs[1];
                msum[j].lo = vmlaq_n_s32(msum[j].lo, m.lo, pair);
                msum[j].hi = vmlaq_n_s32(msum[j].hi, m.hi, pair);
            }
        }
        const v8f32 d8 = load_f16x8(blk), dmin8 = load_f16x8(blk + 16);
        for (int j = 0; j < NT; j++) {
            const float dy = a->d[(t + j) * nb + b];
            acc[j] = scale_min(dmin8, dy, msum[j], scale_acc(d8, dy, isum[j], acc[j]));
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

/* word kk of values 32p + 16e + 4kk.. (p = 4n + qd): the low 4 bits from ql, bits 2qd, 2qd + 1 of qh as 4, 5 */
INL v8u8 q6_k_word(const uint8_t *blk, const int p, const int e, const int kk) {
    const int n = p / 4, qd = p % 4;
    const uint8x16_t m4 = vdupq_n_u8(0x0F), m30 = vdupq_n_u8(0x30);
    const int8x16_t hshift = vdupq_n_s8((int8_t)(4 - 2 * qd));
    const v8u8 l = load8(blk + 144 + 32 * (16 * n + 8 * (qd & 1) + 4 * e + kk));
    const v8u8 h = load8(blk + 1168 + 32 * (8 * n + 4 * e + kk));
    const v8u8 lo = qd < 2 ? and8(l, m4) : shr4_8(l);
    const v8u8 hb = {vandq_u8(vshlq_u8(h.lo, hshift), m30), vandq_u8(vshlq_u8(h.hi, hshift), m30)};
    return or8(lo, hb);
}

INL void tile_q6_k(const uint8_t *g, const native_act *a, int64_t t, const int NT, float *out, int64_t n_rows,
                   int64_t r, int nr, int64_t pf) {
    const int64_t nb = a->nb, nc = a->n_cols;
    v8f32 acc[4];
    ZERO_ACC(acc, NT);
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = g + 1680 * b;
        if (pf) prefetch_range(blk + pf, 1680);
        v8i32 isum[4];  /* sum of sc * q . y, minus 32 sum of sc * bsum: exact in int32 */
        for (int j = 0; j < NT; j++) isum[j] = zero8();
        _Pragma("GCC unroll 16")
        for (int p = 0; p < 8; p++) {  /* sub-blocks 2p, 2p + 1: values 32p .. 32p + 31 */
            /* lane r: row r's (sc_2p, sc_2p+1) as two int16, split into two int32 */
            const int8x16_t scp = vld1q_s8((const int8_t *)blk + 16 + 16 * p);
            const int32x4_t pl = vreinterpretq_s32_s16(vmovl_s8(vget_low_s8(scp)));
            const int32x4_t ph = vreinterpretq_s32_s16(vmovl_high_s8(scp));
            const v8i32 sc[2] = {{vshrq_n_s32(vshlq_n_s32(pl, 16), 16), vshrq_n_s32(vshlq_n_s32(ph, 16), 16)},
                                 {vshrq_n_s32(pl, 16), vshrq_n_s32(ph, 16)}};
            for (int j = 0; j < NT; j++) {
                const int16_t *bs = a->bsums + (t + j) * (nc / 16) + 16 * b + 2 * p;
                int32x4_t lo = vmlaq_n_s32(vmulq_n_s32(sc[0].lo, bs[0]), sc[1].lo, bs[1]);
                int32x4_t hi = vmlaq_n_s32(vmulq_n_s32(sc[0].hi, bs[0]), sc[1].hi, bs[1]);
                isum[j].lo = vsubq_s32(isum[j].lo, vshlq_n_s32(lo, 5));
                isum[j].hi = vsubq_s32(isum[j].hi, vshlq_n_s32(hi, 5));
            }
            _Pragma("GCC unroll 16")
            for (int e = 0; e < 2; e++) {
                run_t d;  /* values 32p + 16e .. + 15 */
                run_start(&d, NT, 4, a->q + t * nc + QK_K * b + 32 * p + 16 * e, nc);
                _Pragma("GCC unroll 16")
                for (int kk = 0; kk < 4; kk += 2)
                    run_pair(&d, NT, kk, q6_k_word(blk, p, e, kk), q6_k_word(blk, p, e, kk + 1));
                for (int j = 0; j < NT; j++) isum[j] = madd8(isum[j], run_dot(&d, NT, j), sc[e]);
            }
        }
        const v8f32 d8 = load_f16x8(blk);
        for (int j = 0; j < NT; j++) acc[j] = scale_acc(d8, a->d[(t + j) * nb + b], isum[j], acc[j]);
    }
    store_tile(out, n_rows, t, r, nr, acc, NT);
}

/* -- Q5_0: quants 0..31 (the -16 is 16 x the activation block's sum); the fifth bits of eight rows are
 * one vector pair (lane r: row r's 32-bit qh), spread to bytes per word of quants ------------------------ */

/* bits 0..3 of each lane's (shifted) qh -> bytes 0..3 of that lane: 0x10 where set */
INL uint8x16_t fifth_bits(uint32x4_t qh_shifted) {
    static const uint8_t spread_idx[16] = {0, 0, 0, 0, 4, 4, 4, 4, 8, 8, 8, 8, 12, 12, 12, 12};
    static const uint8_t bits[16] = {1, 2, 4, 8, 1, 2, 4, 8, 1, 2, 4, 8, 1, 2, 4, 8};
    const uint8x16_t spread = vqtbl1q_u8(vreinterpretq_u8_u32(qh_shifted), vld1q_u8(spread_idx));
    return vandq_u8(vtstq_u8(spread, vld1q_u8(bits)), vdupq_n_u8(0x10));
}

/* word k's quants (half 0: low nibbles, activations 4k..; half 1: high nibbles, 16 + 4k..) with their fifth
 * bits (bits 4k.. / 16 + 4k.. of qh) */
INL v8u8 q5_0_word(const uint8_t *blk, v8u8 qh, const int k, const int half) {
    const int32x4_t sh = vdupq_n_s32(-(16 * half + 4 * k));
    const v8u8 w = load8(blk + 48 + 32 * k);
    const v8u8 f = {fifth_bits(vshlq_u32(vreinterpretq_u32_u8(qh.lo), sh)),
                    fifth_bits(vshlq_u32(vreinterpretq_u32_u8(qh.hi), sh))};
    return or8(half ? shr4_8(w) : and8(w, vdupq_n_u8(0x0F)), f);
}

INL void tile_q5_0(const uint8_t *g, const native_act *a, int64_t t, const int NT, float *out, int64_t n_rows,
                   int64_t r, int nr, int64_t pf) {
    const int64_t nb = a->nb, nc = a->n_cols;
    v8f32 acc[4];
    ZERO_ACC(acc, NT);
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = g + 176 * b;
        if (pf) prefetch_range(blk + pf, 176);
        const v8u8 qh = load8(blk + 16);
        run_t d;
        run_start(&d, NT, 8, a->q + t * nc + QK * b, nc);
        _Pragma("GCC unroll 16")
        for (int k = 0; k < 4; k += 2) {
            run_pair(&d, NT, k, q5_0_word(blk, qh, k, 0), q5_0_word(blk, qh, k + 1, 0));
            run_pair(&d, NT, 4 + k, q5_0_word(blk, qh, k, 1), q5_0_word(blk, qh, k + 1, 1));
        }
        const v8f32 d8 = load_f16x8(blk);
        for (int j = 0; j < NT; j++) {
            const int64_t yb = (t + j) * nb + b;
            acc[j] = scale_acc(d8, a->d[yb], sub_n8(run_dot(&d, NT, j), 16 * a->qsum[yb]), acc[j]);
        }
    }
    store_tile(out, n_rows, t, r, nr, acc, NT);
}

/* -- IQ4_NL: nibbles through the 16-value table (signed, one vqtbl1q), then the dot ---------------------- */

INL v8u8 iq4_lookup(int8x16_t values, v8u8 idx) {
    const v8u8 r = {vreinterpretq_u8_s8(vqtbl1q_s8(values, idx.lo)), vreinterpretq_u8_s8(vqtbl1q_s8(values, idx.hi))};
    return r;
}

/* two words of 16-byte nibble quants (the low nibbles: activations 4k.., the high: 16 + 4k..) through the
 * table, into a run whose words 0-3 are the low nibbles and 4-7 the high */
INL void iq4_pair(run_t *d, const int NT, const int k, int8x16_t values, v8u8 wa, v8u8 wb) {
    const uint8x16_t m4 = vdupq_n_u8(0x0F);
    run_pair(d, NT, k, iq4_lookup(values, and8(wa, m4)), iq4_lookup(values, and8(wb, m4)));
    run_pair(d, NT, 4 + k, iq4_lookup(values, shr4_8(wa)), iq4_lookup(values, shr4_8(wb)));
}

INL void tile_iq4_nl(const uint8_t *g, const native_act *a, int64_t t, const int NT, float *out, int64_t n_rows,
                     int64_t r, int nr, int64_t pf) {
    const int64_t nb = a->nb, nc = a->n_cols;
    const int8x16_t values = vld1q_s8(native_kvalues_iq4nl);
    v8f32 acc[4];
    ZERO_ACC(acc, NT);
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = g + 144 * b;
        if (pf) prefetch_range(blk + pf, 144);
        run_t d;
        run_start(&d, NT, 8, a->q + t * nc + QK * b, nc);
        _Pragma("GCC unroll 16")
        for (int k = 0; k < 4; k += 2) iq4_pair(&d, NT, k, values, load8(blk + 16 + 32 * k), load8(blk + 48 + 32 * k));
        const v8f32 d8 = load_f16x8(blk);
        for (int j = 0; j < NT; j++) acc[j] = scale_acc(d8, a->d[(t + j) * nb + b], run_dot(&d, NT, j), acc[j]);
    }
    store_tile(out, n_rows, t, r, nr, acc, NT);
}

/* -- IQ4_XS: IQ4_NL's values, a 6-bit scale (minus 32) per 32 ------------------------------------------- */

INL void tile_iq4_xs(const uint8_t *g, const native_act *a, int64_t t, const int NT, float *out, int64_t n_rows,
                     int64_t r, int nr, int64_t pf) {
    const int64_t nb = a->nb, nc = a->n_cols;
    const uint32x4_t mf = vdupq_n_u32(0x0F), m3 = vdupq_n_u32(3);
    const int8x16_t values = vld1q_s8(native_kvalues_iq4nl);
    v8f32 acc[4];
    ZERO_ACC(acc, NT);
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = g + 1088 * b;
        if (pf) prefetch_range(blk + pf, 1088);
        const uint16x8_t sh16 = vld1q_u16((const uint16_t *)(blk + 16));
        const uint32x4_t sh_lo = vmovl_u16(vget_low_u16(sh16)), sh_hi = vmovl_high_u16(sh16);
        const v8u8 sl = load8(blk + 32);
        const uint32x4_t sl_lo = vreinterpretq_u32_u8(sl.lo), sl_hi = vreinterpretq_u32_u8(sl.hi);
        v8i32 isum[4];
        for (int j = 0; j < NT; j++) isum[j] = zero8();
        _Pragma("GCC unroll 16")
        for (int ib = 0; ib < 8; ib++) {
            const int32x4_t s4 = vdupq_n_s32(-4 * ib), s2 = vdupq_n_s32(-2 * ib);
            const uint32x4_t ls_lo = vorrq_u32(vandq_u32(vshlq_u32(sl_lo, s4), mf),
                                               vshlq_n_u32(vandq_u32(vshlq_u32(sh_lo, s2), m3), 4));
            const uint32x4_t ls_hi = vorrq_u32(vandq_u32(vshlq_u32(sl_hi, s4), mf),
                                               vshlq_n_u32(vandq_u32(vshlq_u32(sh_hi, s2), m3), 4));
            const v8i32 scale = sub_n8((v8i32){vreinterpretq_s32_u32(ls_lo), vreinterpretq_s32_u32(ls_hi)}, 32);
            run_t d;
            run_start(&d, NT, 8, a->q + t * nc + QK_K * b + 32 * ib, nc);
            _Pragma("GCC unroll 16")
            for (int k = 0; k < 4; k += 2)
                iq4_pair(&d, NT, k, values, load8(blk + 64 + 32 * (4 * ib + k)), load8(blk + 96 + 32 * (4 * ib + k)));
            for (int j = 0; j < NT; j++) isum[j] = madd8(isum[j], run_dot(&d, NT, j), scale);
        }
        const v8f32 d8 = load_f16x8(blk);
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

/* x8 layouts (see x8.h): the repack, and the portable scalar kernels that define what every ISA's x8
 * kernel computes (the tests' oracle for them). */
#include "x8.h"

#include <math.h>

static const x8_traits traits_q4_0 = {18, 2, {{0, 2, 2}, {2, 16, 4}}};
static const x8_traits traits_q8_0 = {34, 2, {{0, 2, 2}, {2, 32, 4}}};
static const x8_traits traits_q4_k = {144, 4, {{0, 2, 2}, {2, 2, 2}, {4, 12, 4}, {16, 128, 4}}};
static const x8_traits traits_q6_k = {210, 4, {{208, 2, 2}, {192, 16, 2}, {0, 128, 4}, {128, 64, 4}}};
static const x8_traits traits_q5_0 = {22, 3, {{0, 2, 2}, {2, 4, 4}, {6, 16, 4}}};
static const x8_traits traits_q5_k = {176, 4, {{0, 2, 2}, {2, 2, 2}, {4, 12, 4}, {16, 160, 4}}};
static const x8_traits traits_iq4_nl = {18, 2, {{0, 2, 2}, {2, 16, 4}}};
static const x8_traits traits_iq4_xs = {136, 4, {{0, 2, 2}, {2, 2, 2}, {4, 4, 4}, {8, 128, 4}}};

const x8_traits *x8_traits_of(int ggml_type) {
    switch (ggml_type) {
    case GT_Q4_0: return &traits_q4_0;
    case GT_Q8_0: return &traits_q8_0;
    case GT_Q4_K: return &traits_q4_k;
    case GT_Q6_K: return &traits_q6_k;
    case GT_Q5_0: return &traits_q5_0;
    case GT_Q5_K: return &traits_q5_k;
    case GT_IQ4_NL: return &traits_iq4_nl;
    case GT_IQ4_XS: return &traits_iq4_xs;
    default: return NULL;
    }
}

/* one field of one block of 8 rows: plain (rows[r] + off) <-> group (g), in words of W bytes */
#define MOVE_FIELD(W, T)                                                                                \
    static void move_field_##W(const uint8_t *const rows[8], int64_t off, int n_words, uint8_t *g, int pack) { \
        for (int i = 0; i < n_words; i++)                                                               \
            for (int r = 0; r < 8; r++) {                                                               \
                if (!rows[r]) continue; /* unpack: a padding row */                                     \
                uint8_t *gp = g + (i * 8 + r) * W;                                                      \
                uint8_t *pp = (uint8_t *)rows[r] + off + i * W;                                         \
                T v;                                                                                    \
                if (pack) { memcpy(&v, pp, W); memcpy(gp, &v, W); }                                     \
                else { memcpy(&v, gp, W); memcpy(pp, &v, W); }                                          \
            }                                                                                           \
    }
MOVE_FIELD(1, uint8_t)
MOVE_FIELD(2, uint16_t)
MOVE_FIELD(4, uint32_t)

#if defined(NATIVE_X86) && (defined(__GNUC__) || defined(__clang__))
static int have_avx2(void) {
    static int known = -1;
    if (known < 0) {
        __builtin_cpu_init();
        known = __builtin_cpu_supports("avx2") != 0;
    }
    return known;
}
#endif

static void move_block(const x8_traits *tr, const uint8_t *const rows[8], int64_t b, uint8_t *g, int pack) {
    int dst = 0;
    for (int f = 0; f < tr->n_fields; f++) {
        const x8_field fd = tr->fields[f];
        const int64_t off = b * tr->type_size + fd.off;
        const int n = fd.size / fd.word;
#if defined(NATIVE_X86) && (defined(__GNUC__) || defined(__clang__))
        if (pack && fd.word == 4 && n % 4 == 0 && have_avx2()) {
            x8_pack_field4_avx2(rows, off, n, g + dst);
            dst += 8 * fd.size;
            continue;
        }
#endif
        if (fd.word == 4) move_field_4(rows, off, n, g + dst, pack);
        else if (fd.word == 2) move_field_2(rows, off, n, g + dst, pack);
        else move_field_1(rows, off, n, g + dst, pack);
        dst += 8 * fd.size;
    }
}

void x8_pack(int ggml_type, const uint8_t *src, uint8_t *dst, int64_t n_rows, int64_t row_bytes) {
    x8_pack_rows(ggml_type, src, dst, n_rows, row_bytes, 0, n_rows);
}

void x8_pack_rows(int ggml_type, const uint8_t *src, uint8_t *dst, int64_t n_rows, int64_t row_bytes,
                  int64_t first, int64_t last) {
    const x8_traits *tr = x8_traits_of(ggml_type);
    const int64_t nb = row_bytes / tr->type_size;
    for (int64_t r0 = first; r0 < last; r0 += 8) {
        const uint8_t *rows[8];
        for (int r = 0; r < 8; r++) rows[r] = src + (r0 + r < n_rows ? r0 + r : n_rows - 1) * row_bytes;
        uint8_t *g = dst + r0 * row_bytes;
        for (int64_t b = 0; b < nb; b++) move_block(tr, rows, b, g + b * 8 * tr->type_size, 1);
    }
}

void x8_unpack(int ggml_type, const uint8_t *src, uint8_t *dst, int64_t n_rows, int64_t row_bytes) {
    const x8_traits *tr = x8_traits_of(ggml_type);
    const int64_t nb = row_bytes / tr->type_size;
    for (int64_t r0 = 0; r0 < n_rows; r0 += 8) {
        const uint8_t *rows[8];
        for (int r = 0; r < 8; r++) rows[r] = r0 + r < n_rows ? dst + (r0 + r) * row_bytes : NULL;
        const uint8_t *g = src + r0 * row_bytes;
        for (int64_t b = 0; b < nb; b++) move_block(tr, rows, b, (uint8_t *)g + b * 8 * tr->type_size, 0);
    }
}

/* -- scalar kernels --------------------------------------------------------------------------------- */

static inline int32_t word_byte(const uint8_t *field, int64_t byte, int r, int word) {
    /* byte `byte` of row r's field, in a group block whose field starts at `field` */
    return field[(byte / word * 8 + r) * word + byte % word];
}

static inline int32_t nibble_at(const uint8_t *qs, int i, int j) {  /* quant j (0..31) of 16 nibble bytes */
    const int32_t v = word_byte(qs, j % 16, i, 4);
    return j < 16 ? v & 15 : v >> 4;
}

static inline int32_t qh_bit(const uint8_t *qh, int i, int j) {  /* bit j of row i's 32-bit qh */
    return word_byte(qh, j / 8, i, 4) >> (j % 8) & 1;
}

/* One group block of 8 rows against token t's activation block b: acc[i] += row i's contribution, in the
 * float operations x8.h fixes. */
typedef void (*block_fn)(const uint8_t *blk, const native_act *a, int64_t t, int64_t b, float acc[8]);

/* rows r0..r1 (groups of 8, gb bytes per group block) x every token: the loops every scalar kernel shares */
static void scalar_rows(block_fn block, int gb, const uint8_t *w, int64_t row_bytes, int64_t r0, int64_t r1,
                        int64_t n_rows, const native_act *a, float *out) {
    for (int64_t r = r0; r < r1; r += 8) {
        const int nr = r1 - r < 8 ? (int)(r1 - r) : 8;
        const uint8_t *g = w + r * row_bytes;
        for (int64_t t = 0; t < a->n_tokens; t++) {
            float acc[8] = {0};
            for (int64_t b = 0; b < a->nb; b++) block(g + gb * b, a, t, b, acc);
            for (int i = 0; i < nr; i++) out[t * n_rows + r + i] = acc[i];
        }
    }
}

/* the Q4_0 / Q5_0 / Q8_0 / IQ4_NL family: blocks of 32 against Q8_0, quant j of row i from `quant`, minus
 * `offset` x the activation block's sum */
#define LEGACY_BLOCK(name, quant, offset)                                                                 \
    static void name##_block(const uint8_t *blk, const native_act *a, int64_t t, int64_t b, float acc[8]) { \
        const int8_t *y = a->q + t * a->n_cols + QK * b;                                                  \
        const float dy = a->d[t * a->nb + b];                                                             \
        for (int i = 0; i < 8; i++) {                                                                     \
            int32_t sumi = 0;                                                                             \
            for (int j = 0; j < 32; j++) sumi += (quant) * y[j];                                          \
            if (offset) sumi -= (offset) * a->qsum[t * a->nb + b];                                        \
            acc[i] = fmaf(native_f16_at(blk + 2 * i) * dy, (float)sumi, acc[i]);                          \
        }                                                                                                 \
    }

LEGACY_BLOCK(q4_0, nibble_at(blk + 16, i, j), 8)
LEGACY_BLOCK(q5_0, nibble_at(blk + 48, i, j) | qh_bit(blk + 16, i, j) << 4, 16)
LEGACY_BLOCK(q8_0, (int8_t)word_byte(blk + 16, j, i, 4), 0)
LEGACY_BLOCK(iq4_nl, native_kvalues_iq4nl[nibble_at(blk + 16, i, j)], 0)

/* Q4_K (qs at 128) and Q5_K (qh at 128, qs at 384: a fifth bit per quant, bit s of qh[l] for sub-block s) */
static void q45_k_block(const int five, const uint8_t *blk, const native_act *a, int64_t t, int64_t b,
                        float acc[8]) {
    const int64_t nc = a->n_cols;
    const int8_t *y = a->q + t * nc + QK_K * b;
    const int16_t *bs = a->bsums + t * (nc / 16) + 16 * b;
    const float dy = a->d[t * a->nb + b];
    const int qs = five ? 384 : 128;
    for (int i = 0; i < 8; i++) {
        uint8_t packed[12], sm[16];
        for (int j = 0; j < 12; j++) packed[j] = (uint8_t)word_byte(blk + 32, j, i, 4);
        native_scales_mins_k4(packed, sm);
        int32_t isum = 0, msum = 0;
        for (int s = 0; s < 8; s++) {
            int32_t dot = 0;
            for (int l = 0; l < 32; l++) {
                const int32_t v = word_byte(blk + qs, 32 * (s / 2) + l, i, 4);
                const int32_t h = five ? word_byte(blk + 128, l, i, 4) >> s & 1 : 0;
                dot += ((s % 2 ? v >> 4 : v & 15) | h << 4) * y[32 * s + l];
            }
            isum += sm[s] * dot;
            msum += sm[8 + s] * (bs[2 * s] + bs[2 * s + 1]);
        }
        acc[i] = fmaf(native_f16_at(blk + 2 * i) * dy, (float)isum, acc[i]);
        acc[i] = fmaf(-(native_f16_at(blk + 16 + 2 * i) * dy), (float)msum, acc[i]);
    }
}

static void q4_k_block(const uint8_t *blk, const native_act *a, int64_t t, int64_t b, float acc[8]) {
    q45_k_block(0, blk, a, t, b, acc);
}

static void q5_k_block(const uint8_t *blk, const native_act *a, int64_t t, int64_t b, float acc[8]) {
    q45_k_block(1, blk, a, t, b, acc);
}

static void q6_k_block(const uint8_t *blk, const native_act *a, int64_t t, int64_t b, float acc[8]) {
    const int64_t nc = a->n_cols;
    const int8_t *y = a->q + t * nc + QK_K * b;
    const int16_t *bs = a->bsums + t * (nc / 16) + 16 * b;
    const float dy = a->d[t * a->nb + b];
    for (int i = 0; i < 8; i++) {
        int32_t isum = 0, off = 0;
        for (int s = 0; s < 16; s++) {
            const int32_t sc = (int8_t)word_byte(blk + 16, s, i, 2);
            int32_t dot = 0;
            for (int l = 0; l < 16; l++) {
                const int v = 16 * s + l, n = v / 128, qd = v % 128 / 32, p = v % 32;
                const int32_t ql = word_byte(blk + 144, 64 * n + 32 * (qd & 1) + p, i, 4);
                const int32_t qh = word_byte(blk + 1168, 32 * n + p, i, 4);
                const int32_t q = (qd < 2 ? ql & 15 : ql >> 4) | ((qh >> (2 * qd)) & 3) << 4;
                dot += q * y[v];
            }
            isum += sc * dot;
            off += sc * bs[s];
        }
        acc[i] = fmaf(native_f16_at(blk + 2 * i) * dy, (float)(isum - 32 * off), acc[i]);
    }
}

static void iq4_xs_block(const uint8_t *blk, const native_act *a, int64_t t, int64_t b, float acc[8]) {
    const int8_t *y = a->q + t * a->n_cols + QK_K * b;
    const float dy = a->d[t * a->nb + b];
    for (int i = 0; i < 8; i++) {
        const int32_t sh = word_byte(blk + 16, 0, i, 2) | word_byte(blk + 16, 1, i, 2) << 8;
        int32_t isum = 0;
        for (int ib = 0; ib < 8; ib++) {
            const int32_t ls = (word_byte(blk + 32, ib / 2, i, 4) >> 4 * (ib % 2) & 15) | (sh >> 2 * ib & 3) << 4;
            int32_t dot = 0;
            for (int j = 0; j < 32; j++) dot += native_kvalues_iq4nl[nibble_at(blk + 64 + 128 * ib, i, j)] * y[32 * ib + j];
            isum += (ls - 32) * dot;
        }
        acc[i] = fmaf(native_f16_at(blk + 2 * i) * dy, (float)isum, acc[i]);
    }
}

#define SCALAR_ROWS(name, gb)                                                                              \
    static void x8_##name##_scalar(const uint8_t *w, int64_t row_bytes, int64_t r0, int64_t r1, int64_t n_rows, \
                                   const native_act *a, float *out) {                                     \
        scalar_rows(name##_block, gb, w, row_bytes, r0, r1, n_rows, a, out);                              \
    }

SCALAR_ROWS(q4_0, 144)
SCALAR_ROWS(q5_0, 176)
SCALAR_ROWS(q8_0, 272)
SCALAR_ROWS(iq4_nl, 144)
SCALAR_ROWS(q4_k, 1152)
SCALAR_ROWS(q5_k, 1408)
SCALAR_ROWS(q6_k, 1680)
SCALAR_ROWS(iq4_xs, 1088)

const native_rows_fn native_x8_scalar[GT_COUNT] = {
    [GT_Q4_0] = x8_q4_0_scalar, [GT_Q5_0] = x8_q5_0_scalar, [GT_Q8_0] = x8_q8_0_scalar,
    [GT_IQ4_NL] = x8_iq4_nl_scalar, [GT_Q4_K] = x8_q4_k_scalar, [GT_Q5_K] = x8_q5_k_scalar,
    [GT_Q6_K] = x8_q6_k_scalar, [GT_IQ4_XS] = x8_iq4_xs_scalar,
};

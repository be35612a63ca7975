/* Row-interleaved ("x8") weight layouts and their kernels.
 *
 * At load, a weight of a format in the table below is repacked once: its rows are taken eight at a time
 * (a partial last group is padded with copies of its last row) and, block by block, the eight rows' fields
 * are interleaved so that one 32-byte load holds the same 4 bytes (or 2, or 1) of each of the eight rows.
 * A SIMD lane is then a row: a block's int32 dot of eight rows is one vector, its eight fp16 scales one
 * 16-byte load, and no horizontal sums are left (ggml's repack.cpp and ik_llama.cpp's _R8 types do the
 * same). A group's block has exactly eight times the bytes of a plain block: the repacked weight is the
 * same size as the file's, and it replaces the mapped pages (the backend releases them).
 *
 * Field k of a format (offset `off` and `size` bytes in the plain block, moved in words of `word` bytes)
 * lands at dst_off + (i * 8 + r) * word for word i of row r. The tables:
 *
 *   Q4_0 (18 B):   d [0,2) w2 -> [0,16)      qs [2,18) w4 -> [16,144)
 *   Q8_0 (34 B):   d [0,2) w2 -> [0,16)      qs [2,34) w4 -> [16,272)
 *   Q4_K (144 B):  d [0,2) w2 -> [0,16)  dmin [2,4) w2 -> [16,32)  scales [4,16) w4 -> [32,128)
 *                  qs [16,144) w4 -> [128,1152)
 *   Q6_K (210 B):  d [208,210) w2 -> [0,16)  scales [192,208) w2 -> [16,144)  ql [0,128) w4 -> [144,1168)
 *                  qh [128,192) w4 -> [1168,1680)
 *   Q5_0 (22 B):   d [0,2) w2 -> [0,16)      qh [2,6) w4 -> [16,48)   qs [6,22) w4 -> [48,176)
 *   Q5_K (176 B):  d, dmin, scales as Q4_K -> [0,128)   qh [16,48) w4 -> [128,384)  qs [48,176) w4 -> [384,1408)
 *   IQ4_NL (18 B): as Q4_0
 *   IQ4_XS (136 B): d [0,2) w2 -> [0,16)  scales_h [2,4) w2 -> [16,32)  scales_l [4,8) w4 -> [32,64)
 *                  qs [8,136) w4 -> [64,1088)
 *
 * What a kernel computes, per (row, token), is fixed here and shared by every ISA (x8.c has the scalar
 * reference of each): per block b, in order,
 *     acc = fmaf(d_row * d_tok, (float)sumi, acc)     (Q4_0, Q5_0, Q8_0, IQ4_NL, Q6_K, IQ4_XS)
 *     acc = fmaf(d_row * d_tok, (float)isum, acc); acc = fmaf(-(dmin_row * d_tok), (float)msum, acc)  (Q4_K, Q5_K)
 * with sumi / isum / msum the exact int32 block dots, and out = acc. The integer parts are exact, the
 * float operations the same in the same order on every ISA, for any tile of rows and tokens: a token's
 * result does not depend on the ISA, the batch or the thread count.
 */
#ifndef EDGEINFER_X8_H
#define EDGEINFER_X8_H

#include "edgeinfer_native.h"

#define X8_MAX_FIELDS 4

typedef struct {
    int off, size, word;
} x8_field;

typedef struct {
    int type_size;   /* bytes of a plain block (a group's block: 8x) */
    int n_fields;
    x8_field fields[X8_MAX_FIELDS];
} x8_traits;

#if defined(NATIVE_X86)
/* x8_pack's 4-byte fields (n_words a multiple of 4) with AVX2 (x8_avx2.c); only called where the CPU has it */
void x8_pack_field4_avx2(const uint8_t *const rows[8], int64_t off, int n_words, uint8_t *g);
#endif

/* the x8 layout of a ggml type, or NULL when the type has none */
const x8_traits *x8_traits_of(int ggml_type);

/* plain rows (n_rows x row_bytes) -> x8 groups (ceil(n_rows / 8) x 8 row_bytes); and back (n_rows rows) */
void x8_pack(int ggml_type, const uint8_t *src, uint8_t *dst, int64_t n_rows, int64_t row_bytes);
/* rows r0..r1-1 only (r0 a multiple of 8): the part of x8_pack one thread does */
void x8_pack_rows(int ggml_type, const uint8_t *src, uint8_t *dst, int64_t n_rows, int64_t row_bytes,
                  int64_t r0, int64_t r1);
void x8_unpack(int ggml_type, const uint8_t *src, uint8_t *dst, int64_t n_rows, int64_t row_bytes);

/* The kernels: native_rows_fn over x8 groups (w: the repacked weight, row_bytes: a plain row's bytes, so
 * that group g starts at w + 8 g row_bytes; r0 a multiple of 8). NULL where an ISA has none. */
extern const native_rows_fn native_x8_scalar[GT_COUNT];
#if defined(NATIVE_X86)
extern const native_rows_fn native_x8_avx2[GT_COUNT];
extern const native_rows_fn native_x8_avx512vnni[GT_COUNT];
extern const native_rows_fn native_x8_avxvnni[GT_COUNT];
#endif
#if defined(__ARM_NEON) || defined(X8_EMULATED_NEON)
extern const native_rows_fn native_x8_neon[GT_COUNT];          /* ARMv8 NEON: widening multiplies */
extern const native_rows_fn native_x8_neon_dotprod[GT_COUNT];  /* + sdot (ARMv8.2 dotprod) */
extern const native_rows_fn native_x8_neon_i8mm[GT_COUNT];     /* + smmla for 2-4 tokens (FEAT_I8MM) */
/* whether this CPU has the dotprod (i8mm) instructions: Linux hwcaps, macOS sysctl */
int x8_neon_has_dotprod(void);
int x8_neon_has_i8mm(void);
typedef struct { const char *name; const native_rows_fn *table; } x8_set;
/* the NEON x8 kernel sets this CPU runs, best first: neon_i8mm (i8mm and dotprod), neon_dotprod, neon;
 * fills out[0 .. n) (3 at most), returns n */
int x8_neon_sets(x8_set *out);
#endif

/* Q4_0 / Q5_0 against Q8_0 activations need each activation block's sum of quants (the x8 kernels take the
 * quants unsigned, 0..15 / 0..31, and subtract 8 / 16 x that sum): a->qsum, (n_tokens * nb) int32 */
static inline int x8_needs_qsum(int ggml_type) { return ggml_type == GT_Q4_0 || ggml_type == GT_Q5_0; }

/* The driver every SIMD kernel set shares (x8_tiles.h, x8_tiles_neon.h): token blocks (their activations
 * stay in L2) x groups of 8 rows x tiles of up to 4 tokens. `tile` is the set's tile function of one format
 * (8 rows x NT tokens), FN its function attributes. */
#define X8_ROWS(name, tile)                                                                             \
    FN static void x8_##name(const uint8_t *w, int64_t row_bytes, int64_t r0, int64_t r1, int64_t n_rows, \
                             const native_act *a, float *out) {                                         \
        const int64_t T = a->n_tokens;                                                                  \
        const int64_t pf = T <= 16 ? native_prefetch_bytes : 0;                                         \
        int64_t tb = (128 * 1024 / (a->n_cols > 0 ? a->n_cols : 1)) & ~(int64_t)3;                      \
        if (tb < 4) tb = 4;                                                                             \
        for (int64_t t0 = 0; t0 < T; t0 += tb) {                                                        \
            const int64_t t1 = t0 + tb < T ? t0 + tb : T;                                               \
            for (int64_t r = r0; r < r1; r += 8) {                                                      \
                const int nr = r1 - r < 8 ? (int)(r1 - r) : 8;                                          \
                const uint8_t *g = w + r * row_bytes;                                                   \
                int64_t t = t0;                                                                         \
                for (; t + 4 <= t1; t += 4) tile(g, a, t, 4, out, n_rows, r, nr, pf);                   \
                if (t1 - t == 3) tile(g, a, t, 3, out, n_rows, r, nr, pf);                              \
                else if (t1 - t == 2) tile(g, a, t, 2, out, n_rows, r, nr, pf);                         \
                else if (t1 - t == 1) tile(g, a, t, 1, out, n_rows, r, nr, pf);                         \
            }                                                                                           \
        }                                                                                               \
    }

#endif

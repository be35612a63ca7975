/* edgeinfer native kernels: shared declarations.
 *
 * y = x @ W.T for quantized weights W, computed as ggml does: the activations x are quantized once per
 * matmul to the 8-bit format ggml pairs with the weight type (its vec_dot_type: Q8_0, Q8_1 or Q8_K),
 * then every output is a sum over blocks of an int32 block dot times float scales.
 *
 * Each instruction set (kernels_scalar.c, kernels_avx2.c, kernels_neon.c) exports one native_kernels
 * table: a row kernel per weight type and an activation quantizer. A row kernel computes a rectangle of
 * the output: rows r0..r1-1 against every token. Every (row, token) output is computed by the same
 * sequence of operations whatever rectangle, tile or thread it falls in, so a token's result does not
 * depend on its batch (prefill == decode, bit for bit) nor on the thread count.
 */
#ifndef EDGEINFER_NATIVE_H
#define EDGEINFER_NATIVE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* weight types: ggml's ids (GGMLQuantizationType) */
enum {
    GT_F32 = 0, GT_F16 = 1, GT_Q4_0 = 2, GT_Q4_1 = 3, GT_Q5_0 = 6, GT_Q5_1 = 7, GT_Q8_0 = 8,
    GT_Q4_K = 12, GT_Q5_K = 13, GT_Q6_K = 14, GT_IQ2_XXS = 16, GT_IQ2_XS = 17, GT_IQ3_XXS = 18, GT_IQ1_S = 19,
    GT_IQ4_NL = 20, GT_IQ3_S = 21, GT_IQ2_S = 22, GT_IQ4_XS = 23, GT_IQ1_M = 29, GT_TQ1_0 = 34, GT_TQ2_0 = 35,
    GT_MXFP4 = 39,
    GT_COUNT = 40
};

/* activation formats (ggml's vec_dot_type of each weight type) */
enum { ACT_NONE = 0, ACT_Q8_0, ACT_Q8_1, ACT_Q8_K, ACT_F32, ACT_F16 };

#define QK 32     /* values per block of the legacy formats, IQ4_NL, Q8_0, Q8_1 */
#define QK_K 256  /* values per K-quant super-block and Q8_K block */

/* The quantized activations of n_tokens rows of n_cols values, flat per token. */
typedef struct {
    int kind;          /* ACT_* */
    int64_t n_tokens;
    int64_t n_cols;
    int64_t nb;        /* blocks per token (Q8_*), else 0 */
    int8_t *q;         /* (n_tokens * n_cols) 8-bit quants */
    float *d;          /* (n_tokens * nb) block scales (fp16-rounded for Q8_0 / Q8_1) */
    float *s;          /* (n_tokens * nb) Q8_1: fp16(d * sum of the block's quants) */
    int16_t *bsums;    /* (n_tokens * n_cols / 16) Q8_K: sums of 16 quants */
    float *f;          /* (n_tokens * n_cols) F32 / F16 weights: x (fp16-rounded for F16) */
    int32_t *qsum;     /* (n_tokens * nb) Q8_0 for x8 Q4_0 weights: each block's sum of quants, else NULL */
} native_act;

/* Rows r0..r1-1 of the weight (row_bytes each, from w) against every token of a; out is
 * (n_tokens, n_rows) row-major. */
typedef void (*native_rows_fn)(const uint8_t *w, int64_t row_bytes, int64_t r0, int64_t r1,
                               int64_t n_rows, const native_act *a, float *out);
/* Token row t of x (n_cols floats at x) into a (its kind chosen already). */
typedef void (*native_quantize_fn)(const float *x, native_act *a, int64_t t);

typedef struct {
    const char *name;
    native_rows_fn rows[GT_COUNT];
    native_quantize_fn quantize;
    const native_rows_fn *x8;  /* the x8 layout's kernels (x8.h), NULL where this set has none */
} native_kernels;

/* how far ahead of the rows it works on a decode prefetches the weights (bytes; 0: no prefetch) */
extern int native_prefetch_bytes;

extern const native_kernels native_kernels_scalar;
#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
#define NATIVE_X86 1
extern const native_kernels native_kernels_avx2;
#endif
#if defined(__ARM_NEON)
extern const native_kernels native_kernels_neon;
#endif

/* the activation format of each weight type, ACT_NONE where the native code has no kernel */
static inline int native_act_kind(int ggml_type) {
    switch (ggml_type) {
    case GT_F32: return ACT_F32;
    case GT_F16: return ACT_F16;
    case GT_Q4_0: case GT_Q5_0: case GT_Q8_0: case GT_IQ4_NL: case GT_MXFP4: return ACT_Q8_0;
    case GT_Q4_1: case GT_Q5_1: return ACT_Q8_1;
    case GT_Q4_K: case GT_Q5_K: case GT_Q6_K: case GT_IQ4_XS: return ACT_Q8_K;
    case GT_IQ2_XXS: case GT_IQ2_XS: case GT_IQ2_S: case GT_IQ3_XXS: case GT_IQ3_S: case GT_IQ1_S: case GT_IQ1_M:
    case GT_TQ1_0: case GT_TQ2_0: return ACT_Q8_K;
    default: return ACT_NONE;
    }
}

/* -- portable helpers ------------------------------------------------------------------------------- */

static inline float native_f32_from_bits(uint32_t w) { float f; memcpy(&f, &w, 4); return f; }
static inline uint32_t native_f32_bits(float f) { uint32_t w; memcpy(&w, &f, 4); return w; }

/* IEEE half -> float, exact (the FP16 library's conversion, as ggml's scalar code) */
static inline float native_fp16_to_fp32(uint16_t h) {
    const uint32_t w = (uint32_t)h << 16;
    const uint32_t sign = w & 0x80000000u;
    const uint32_t two_w = w + w;
    const uint32_t exp_offset = 0xE0u << 23;
    const float normalized = native_f32_from_bits((two_w >> 4) + exp_offset) * 0x1.0p-112f;
    const float denormalized = native_f32_from_bits((two_w >> 17) | (126u << 23)) - 0.5f;
    const uint32_t result = sign | (two_w < (1u << 27) ? native_f32_bits(denormalized) : native_f32_bits(normalized));
    return native_f32_from_bits(result);
}

/* float -> IEEE half, round to nearest even (ggml's GGML_FP32_TO_FP16 without F16C) */
static inline uint16_t native_fp32_to_fp16(float f) {
    float base = (((f < 0 ? -f : f) * 0x1.0p+112f) * 0x1.0p-110f);
    const uint32_t w = native_f32_bits(f);
    const uint32_t shl1_w = w + w;
    const uint32_t sign = w & 0x80000000u;
    uint32_t bias = shl1_w & 0xFF000000u;
    if (bias < 0x71000000u) bias = 0x71000000u;
    base = native_f32_from_bits((bias >> 1) + 0x07800000u) + base;
    const uint32_t bits = native_f32_bits(base);
    const uint32_t exp_bits = (bits >> 13) & 0x00007C00u;
    const uint32_t mantissa_bits = bits & 0x00000FFFu;
    const uint32_t nonsign = exp_bits + mantissa_bits;
    return (uint16_t)((sign >> 16) | (shl1_w > 0xFF000000u ? 0x7E00u : nonsign));
}

static inline float native_f16_round(float f) { return native_fp16_to_fp32(native_fp32_to_fp16(f)); }

static inline float native_f16_at(const uint8_t *p) {
    uint16_t h; memcpy(&h, p, 2); return native_fp16_to_fp32(h);
}

/* C's roundf (halves away from zero) for |v| < 2^23, exactly, without a libm call */
static inline int native_roundf(float v) {
    double d = (double)v + (v < 0 ? -0.5 : 0.5);  /* exact in double */
    return (int)d;                                /* truncation */
}

/* ggml's nearest_int: round to nearest even, |v| < 2^22 */
static inline int native_nearest_int(float fval) {
    float val = fval + 12582912.f;
    int32_t i; memcpy(&i, &val, 4);
    return (i & 0x007fffff) - 0x00400000;
}

static const int8_t native_kvalues_iq4nl[16] = {
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
};

/* Q4_K / Q5_K: the 12 packed scale bytes -> 8 six-bit scales (bytes 0..7) and 8 mins (8..15) */
static inline void native_scales_mins_k4(const uint8_t *q, uint8_t out[16]) {
    uint32_t utmp[4];
    memcpy(utmp, q, 12);
    const uint32_t kmask1 = 0x3f3f3f3f, kmask2 = 0x0f0f0f0f, kmask3 = 0x03030303;
    utmp[3] = ((utmp[2] >> 4) & kmask2) | (((utmp[1] >> 6) & kmask3) << 4);
    const uint32_t uaux = utmp[1] & kmask1;
    utmp[1] = (utmp[2] & kmask2) | (((utmp[0] >> 6) & kmask3) << 4);
    utmp[2] = uaux;
    utmp[0] &= kmask1;
    memcpy(out, utmp, 16);
}

/* the portable activation quantizer (exact: ggml's quantize_row_q8_0/q8_1/q8_K_ref) */
void native_quantize_row_scalar(const float *x, native_act *a, int64_t t);

/* attention (native/attention.c): q (n, H, D), k (n_cells, Hkv, D), v (n_cells, Hkv, Dv), positions
 * int32 q_pos (n,), kv_pos (n_kv,), cells int32 (n_kv,): the sequence's token j is row cells[j] of k and v
 * (a paged cache's block table), out (n, H * Dv), all C-contiguous; on the pool, n_threads at most; avx2:
 * the AVX2/FMA/F16C code (else the portable one). K and V rows are stored in kv_type: GT_F32 (floats),
 * GT_F16 (IEEE halves) or GT_Q8_0 (D / 32 blocks of fp16 d + 32 int8), each row converted to float32 as
 * it is read (exactly: the result is the bits of the same call on the converted rows). sinks, when not
 * NULL: head h's softmax has one more logit sinks[h] (unscaled, attended by no value). softcap > 0: each
 * score s = scale q.k is soft-capped, softcap * tanh(s / softcap) (tanh as the Numba op's _tanh32). 0, or -1 when out
 * of memory. Not reentrant (the extension's mutex serializes calls). */
typedef struct {
    const float *q;
    const void *k, *v;
    const int32_t *q_pos, *kv_pos, *cells;
    float *out;
    int64_t n, H, Hkv, D, Dv, n_kv;
    int n_swa;
    float scale;
    int kv_type;  /* GT_F32, GT_F16 or GT_Q8_0, K and V alike */
    const float *sinks;  /* (H,): one more logit per query head in its softmax (gpt-oss), or NULL */
    float softcap;  /* > 0: every score s becomes softcap * tanh(s / softcap) before the mask (Gemma 2); 0: off */
} native_attn_args;

/* bytes of one K/V row of d values in kv_type (d a multiple of QK for GT_Q8_0); 0 for another type */
static inline int64_t native_kv_row_bytes(int kv_type, int64_t d) {
    switch (kv_type) {
    case GT_F32: return 4 * d;
    case GT_F16: return 2 * d;
    case GT_Q8_0: return d % QK ? 0 : d / QK * (2 + QK);
    default: return 0;
    }
}

int native_attention(const native_attn_args *a, int n_threads, int avx2);

/* S sequences' attention in one job on the pool (continuous batching): as native_attention for each,
 * every (sequence, token, KV group) an item; 0, or -1 when out of memory */
int native_attention_many(const native_attn_args *as, int S, int n_threads, int avx2);

#endif

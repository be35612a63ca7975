/* tests/isa/x8_harness.c: every x8 kernel set linked in against the scalar kernels (native/x8.c), bit for
 * bit, on random weights of every x8 format (random bytes, finite fp16 scales) and on extreme ones (the
 * quants' largest magnitudes, where int16 sums come closest to their bounds), for several row counts,
 * token counts (every tile width and remainder), row ranges split across threads and prefetch distances.
 *
 *   x8_harness ISA...   exit 0: every output equal; 1: a difference (printed); 2: an unknown ISA
 *
 * Built by tests/test_isa_emulated.py with the sets compiled natively, against SIMDe (-DX8_EMULATED), or
 * for aarch64 and run under qemu-user. HARNESS_X86 / HARNESS_NEON say which tables are linked in. The NEON
 * builds first print what the CPU has and the sets it runs, best first (x8_neon_sets: the extension's
 * choice); on aarch64, asking for neon_i8mm first checks the SMMLA instruction against its definition
 * (mmla_ref.h, which the x86 builds use in its place). */
#include "x8.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

int native_prefetch_bytes = 2048;

typedef struct { const char *name; const native_rows_fn *table; } kernel_set;

static const kernel_set sets[] = {
#if defined(HARNESS_X86)
    {"avx2", native_x8_avx2},
    {"avx512vnni", native_x8_avx512vnni},
    {"avxvnni", native_x8_avxvnni},
#endif
#if defined(HARNESS_NEON)
    {"neon", native_x8_neon},
    {"neon_dotprod", native_x8_neon_dotprod},
    {"neon_i8mm", native_x8_neon_i8mm},
#endif
};
#define N_SETS ((int)(sizeof sets / sizeof sets[0]))

typedef struct {
    const char *name;
    int type, q8k;   /* q8k: against Q8_K activations (K-quants, IQ4_XS), else Q8_0 */
    int f16[2];      /* plain-block offsets of the fp16 scales (-1: none) */
    int q8_off;      /* Q8_0 weights: offset of the int8 quants (no -128: ggml's quantizer never makes it) */
} format;

static const format formats[] = {
    {"Q4_0", GT_Q4_0, 0, {0, -1}, -1},     {"Q5_0", GT_Q5_0, 0, {0, -1}, -1},
    {"Q8_0", GT_Q8_0, 0, {0, -1}, 2},      {"IQ4_NL", GT_IQ4_NL, 0, {0, -1}, -1},
    {"Q4_K", GT_Q4_K, 1, {0, 2}, -1},      {"Q5_K", GT_Q5_K, 1, {0, 2}, -1},
    {"Q6_K", GT_Q6_K, 1, {208, -1}, -1},   {"IQ4_XS", GT_IQ4_XS, 1, {0, -1}, -1},
};
#define N_FORMATS ((int)(sizeof formats / sizeof formats[0]))

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static uint32_t rnd(void) {  /* xorshift64* */
    rng_state ^= rng_state >> 12; rng_state ^= rng_state << 25; rng_state ^= rng_state >> 27;
    return (uint32_t)((rng_state * 0x2545F4914F6CDD1Dull) >> 32);
}
static float rnd_unit(void) { return (float)(rnd() >> 8) / (float)(1u << 24); }  /* [0, 1) */

/* n_rows plain rows of fmt: random bytes (extreme: only 0x00, 0x0F, 0xF0, 0xFF, 0x7F, 0x81), finite fp16
 * scales of either sign */
static void make_weight(const format *fmt, int extreme, uint8_t *w, int64_t n_rows, int64_t row_bytes) {
    static const uint8_t ext[6] = {0x00, 0x0F, 0xF0, 0xFF, 0x7F, 0x81};
    const int bs = x8_traits_of(fmt->type)->type_size;
    for (int64_t i = 0; i < n_rows * row_bytes; i++) w[i] = extreme ? ext[rnd() % 6] : (uint8_t)rnd();
    for (int64_t b = 0; b < n_rows * row_bytes / bs; b++) {
        uint8_t *blk = w + b * bs;
        for (int k = 0; k < 2; k++) {
            if (fmt->f16[k] < 0) continue;
            const float v = (0.001f + 0.05f * rnd_unit()) * (rnd() & 1 ? -1.f : 1.f);
            const uint16_t h = native_fp32_to_fp16(v);
            memcpy(blk + fmt->f16[k], &h, 2);
        }
        if (fmt->q8_off >= 0)
            for (int j = 0; j < QK; j++)
                if (blk[fmt->q8_off + j] == 0x80) blk[fmt->q8_off + j] = 0x81;
    }
}

/* n_tokens rows of quantized activations: quants in -127..127 (what ggml's quantizers make; extreme: only
 * +-127), scales fp16-rounded for Q8_0, and the sums the kernels read (qsum, bsums) */
typedef struct { native_act a; int8_t *q; float *d; int16_t *bsums; int32_t *qsum; } acts;

static void make_acts(acts *x, int q8k, int extreme, int64_t n_tokens, int64_t n_cols) {
    const int64_t nb = n_cols / (q8k ? QK_K : QK);
    x->q = malloc((size_t)(n_tokens * n_cols));
    x->d = malloc((size_t)(n_tokens * nb) * sizeof(float));
    x->bsums = malloc((size_t)(n_tokens * n_cols / 16) * sizeof(int16_t));
    x->qsum = malloc((size_t)(n_tokens * nb) * sizeof(int32_t));
    for (int64_t i = 0; i < n_tokens * n_cols; i++)
        x->q[i] = (int8_t)(extreme ? (rnd() & 1 ? 127 : -127) : (int)(rnd() % 255) - 127);
    for (int64_t i = 0; i < n_tokens * nb; i++) {
        const float d = 0.0005f + 0.02f * rnd_unit();
        x->d[i] = q8k ? d : native_f16_round(d);
        int32_t s = 0;
        for (int j = 0; j < n_cols / nb; j++) s += x->q[i * (n_cols / nb) + j];
        x->qsum[i] = s;
    }
    for (int64_t i = 0; i < n_tokens * n_cols / 16; i++) {
        int32_t s = 0;
        for (int j = 0; j < 16; j++) s += x->q[16 * i + j];
        x->bsums[i] = (int16_t)s;
    }
    native_act a = {.kind = q8k ? ACT_Q8_K : ACT_Q8_0, .n_tokens = n_tokens, .n_cols = n_cols, .nb = nb,
                    .q = x->q, .d = x->d, .bsums = q8k ? x->bsums : NULL, .qsum = q8k ? NULL : x->qsum};
    x->a = a;
}

static void free_acts(acts *x) { free(x->q); free(x->d); free(x->bsums); free(x->qsum); }

typedef struct {
    native_rows_fn fn;
    const uint8_t *w;
    int64_t row_bytes, r0, r1, n_rows;
    const native_act *a;
    float *out;
} job;

static void *run_job(void *p) {
    const job *j = p;
    j->fn(j->w, j->row_bytes, j->r0, j->r1, j->n_rows, j->a, j->out);
    return NULL;
}

/* the kernel over rows [0, n_rows), cut at multiples of 8 into n_parts ranges run by as many threads */
static void run_split(native_rows_fn fn, const uint8_t *w, int64_t row_bytes, int64_t n_rows, const native_act *a,
                      float *out, int n_parts) {
    const int64_t n_groups = (n_rows + 7) / 8;
    if (n_parts > n_groups) n_parts = (int)n_groups;
    pthread_t th[8];
    job jobs[8];
    for (int p = 0; p < n_parts; p++) {
        const int64_t g0 = n_groups * p / n_parts, g1 = n_groups * (p + 1) / n_parts;
        jobs[p] = (job){fn, w, row_bytes, 8 * g0, 8 * g1 < n_rows ? 8 * g1 : n_rows, n_rows, a, out};
        if (n_parts == 1) run_job(&jobs[p]);
        else pthread_create(&th[p], NULL, run_job, &jobs[p]);
    }
    if (n_parts > 1)
        for (int p = 0; p < n_parts; p++) pthread_join(th[p], NULL);
}

static long n_checked, n_failed;

#if defined(HARNESS_NEON) && defined(__aarch64__) && !defined(X8_EMULATED_NEON)
#include <arm_neon.h>

#include "mmla_ref.h"

__attribute__((target("arch=armv8.2-a+i8mm"))) static void smmla_insn(int32_t acc[4], const int8_t a[16],
                                                                       const int8_t b[16]) {
    vst1q_s32(acc, vmmlaq_s32(vld1q_s32(acc), vld1q_s8(a), vld1q_s8(b)));
}

/* the SMMLA instruction against mmla_ref on random int8 and on the extremes (-128, 127), 0 when equal */
static int check_smmla(void) {
    static const int8_t ext[4] = {-128, 127, -127, 0};
    for (int n = 0; n < 20000; n++) {
        int8_t a[16], b[16];
        int32_t want[4], got[4];
        for (int i = 0; i < 16; i++) {
            a[i] = (int8_t)(n < 10000 ? rnd() : ext[rnd() % 4]);
            b[i] = (int8_t)(n < 10000 ? rnd() : ext[rnd() % 4]);
        }
        for (int i = 0; i < 4; i++) want[i] = got[i] = (int32_t)(rnd() >> 2) - (1 << 29);
        mmla_ref(want, a, b);
        smmla_insn(got, a, b);
        if (memcmp(want, got, sizeof want) != 0) {
            printf("smmla: MISMATCH with its definition at case %d\n", n);
            return 1;
        }
    }
    printf("smmla: equal to its definition (20000 cases)\n");
    return 0;
}
#endif

static int check(const kernel_set *set, const format *fmt, int extreme, int64_t n_rows, int64_t n_cols,
                 int64_t n_tokens) {
    const int64_t row_bytes = n_cols / (fmt->q8k ? QK_K : QK) * x8_traits_of(fmt->type)->type_size;
    const int64_t w_rows = (n_rows + 7) / 8 * 8;
    uint8_t *plain = malloc((size_t)(n_rows * row_bytes)), *packed = malloc((size_t)(w_rows * row_bytes));
    make_weight(fmt, extreme, plain, n_rows, row_bytes);
    x8_pack(fmt->type, plain, packed, n_rows, row_bytes);
    acts x;
    make_acts(&x, fmt->q8k, extreme, n_tokens, n_cols);
    const size_t n_out = (size_t)(n_tokens * n_rows);
    float *ref = malloc(n_out * sizeof(float)), *got = malloc(n_out * sizeof(float));
    native_x8_scalar[fmt->type](packed, row_bytes, 0, n_rows, n_rows, &x.a, ref);
    int bad = 0;
    static const int parts[3] = {1, 2, 3}, prefetch[3] = {2048, 0, 256};
    for (int c = 0; c < 3 && !bad; c++) {
        native_prefetch_bytes = prefetch[c];
        memset(got, 0xAB, n_out * sizeof(float));
        run_split(set->table[fmt->type], packed, row_bytes, n_rows, &x.a, got, parts[c]);
        n_checked++;
        if (memcmp(ref, got, n_out * sizeof(float)) != 0) {
            size_t i = 0;
            while (i < n_out && memcmp(ref + i, got + i, sizeof(float)) == 0) i++;
            printf("MISMATCH %s %s%s rows=%lld cols=%lld tokens=%lld threads=%d: token %lld row %lld: %.9g"
                   " (scalar %.9g)\n",
                   set->name, fmt->name, extreme ? " (extreme)" : "", (long long)n_rows, (long long)n_cols,
                   (long long)n_tokens, parts[c], (long long)(i / n_rows), (long long)(i % n_rows), got[i], ref[i]);
            bad = 1;
            n_failed++;
        }
    }
    native_prefetch_bytes = 2048;
    free(plain); free(packed); free(ref); free(got); free_acts(&x);
    return bad;
}

int main(int argc, char **argv) {
#if defined(HARNESS_NEON)
    x8_set avail[3];
    const int n_avail = x8_neon_sets(avail);
    printf("dotprod=%d i8mm=%d sets=", x8_neon_has_dotprod(), x8_neon_has_i8mm());
    for (int s = 0; s < n_avail; s++) printf("%s%s", s ? "," : "", avail[s].name);
    printf("\n");
#endif
    if (argc < 2) {
        fprintf(stderr, "usage: %s ISA... (linked in:", argv[0]);
        for (int s = 0; s < N_SETS; s++) fprintf(stderr, " %s", sets[s].name);
        fprintf(stderr, ")\n");
        return 2;
    }
    static const int64_t rows[] = {8, 37, 64}, tokens[] = {1, 2, 3, 4, 5, 7, 9, 17};
    int failed = 0;
    for (int i = 1; i < argc; i++) {
        const kernel_set *set = NULL;
        for (int s = 0; s < N_SETS; s++)
            if (strcmp(sets[s].name, argv[i]) == 0) set = &sets[s];
        if (!set) { fprintf(stderr, "unknown ISA %s\n", argv[i]); return 2; }
#if defined(HARNESS_NEON) && defined(__aarch64__) && !defined(X8_EMULATED_NEON)
        if (strcmp(set->name, "neon_i8mm") == 0 && check_smmla()) failed = 1;
#endif
        for (int f = 0; f < N_FORMATS; f++) {
            const format *fmt = &formats[f];
            const long before = n_failed;
            for (int extreme = 0; extreme < 2; extreme++)
                for (int ri = 0; ri < 3; ri++)
                    for (int ti = 0; ti < 8; ti++) {
                        /* 16384 columns: token blocks of 8 (the driver's L2 blocking) */
                        const int64_t n_cols = ti == 7 ? 16384 : fmt->q8k ? (ti % 2 ? 512 : 1024) : (ti % 2 ? 96 : 512);
                        failed |= check(set, fmt, extreme, rows[ri], n_cols, tokens[ti]);
                    }
            printf("%s %s: %s\n", set->name, fmt->name, n_failed == before ? "ok" : "MISMATCH");
        }
    }
    printf("%ld runs compared, %ld differed\n", n_checked, n_failed);
    return failed ? 1 : 0;
}

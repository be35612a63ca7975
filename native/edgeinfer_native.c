/* edgeinfer._native: quantized matrix products y = x @ W.T in C (see edgeinfer_native.h).
 *
 *   matmul(ggml_type, w, x, out, n_rows, n_cols, n_threads)
 *       w: bytes-like (n_rows * row_bytes) weight blocks, read only (an mmap view: never copied)
 *       x: float32 C-contiguous (n_tokens, n_cols); out: writeable float32 C-contiguous (n_tokens, n_rows)
 *       (BufferError for a non-contiguous x or a read-only / non-contiguous out, ValueError for another
 *       dtype, rank or shape: checked exactly, the Python backend's fast path relies on it)
 *   attention(q, k, v, q_pos, kv_pos, n_swa, scale, out, n_threads[, sinks[, softcap]])   (native/attention.c)
 *   supports(ggml_type) -> bool      isa() -> "avx512vnni" | "avxvnni" | "avx2" | "neon_i8mm" | "neon_dotprod" |
 *                                             "neon" | "scalar"
 *   set_isa(name) -> previous name   (tests: any of isas(), or "auto")
 *   set_prefetch(n_bytes) -> previous  how far ahead a decode prefetches the weights (default 2048,
 *                                      EDGEINFER_NATIVE_PREFETCH at import; 0: off)
 *
 * One call: release the GIL, quantize x once (in parallel from 8 tokens up) into a scratch buffer kept
 * between calls, then the threads of the persistent pool (the caller is one of them) each take one
 * contiguous range of rows, chunk by chunk, and steal chunks from the others' ranges at the end (a decode
 * streams every weight from DRAM once: long sequential streams, prefetched in software, see ROWS in
 * kernels_avx2.c).
 * Calls from several Python threads are serialized by a mutex (the pool and the scratch are shared).
 * EDGEINFER_ISA=<one of isas()> (read at import; EDGEINFER_NATIVE_ISA, its older name) overrides the choice.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "edgeinfer_native.h"
#include "lowbit.h"
#include "threadpool.h"
#include "x8.h"

#define PARALLEL_QUANTIZE_MIN_TOKENS 8
#define MIN_CHUNKS_PER_THREAD 8

static const native_kernels *kernels = &native_kernels_scalar;
int native_prefetch_bytes = 2048;
static pthread_mutex_t call_mu = PTHREAD_MUTEX_INITIALIZER;

/* -- ISA choice ------------------------------------------------------------------------------------- */

/* the CPU's features that the kernels' choice depends on, as (name, present) pairs */
typedef struct { const char *name; int on; } feature_t;

static int cpu_features(feature_t *f, int max) {
    int n = 0;
#if defined(NATIVE_X86) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
#define FEATURE(s) if (n < max) { f[n].name = s; f[n].on = __builtin_cpu_supports(s) != 0; n++; }
    FEATURE("avx2") FEATURE("fma") FEATURE("f16c") FEATURE("avx512f") FEATURE("avx512bw") FEATURE("avx512vl")
    FEATURE("avx512vnni") FEATURE("avx512bf16") FEATURE("avxvnni")
#undef FEATURE
#elif defined(__ARM_NEON)
    if (n < max) { f[n].name = "neon"; f[n].on = 1; n++; }
    if (n < max) { f[n].name = "dotprod"; f[n].on = x8_neon_has_dotprod(); n++; }
    if (n < max) { f[n].name = "i8mm"; f[n].on = x8_neon_has_i8mm(); n++; }
#endif
    return n;
}

#if defined(NATIVE_X86) || defined(__ARM_NEON)
/* A kernel set that differs from another only in its x8 kernels (the same plain-layout kernels, quantizer and
 * attention), made once: AVX2's with VNNI dot products, NEON's with sdot or smmla. */
static const native_kernels *with_x8(native_kernels *k, const native_kernels *base, const native_rows_fn *x8,
                                     const char *name) {
    if (!k->name) {
        *k = *base;
        k->x8 = x8;
        k->name = name;
    }
    return k;
}
#endif

#if defined(NATIVE_X86)
static native_kernels kernels_avx512vnni, kernels_avxvnni;
#endif
#if defined(__ARM_NEON)
static native_kernels kernels_neon_x8[3];  /* x8_neon_sets()' i-th set but the plain one (native_kernels_neon) */
#endif

/* the kernel tables this CPU can run, best first (the scalar one last, always): AVX-512 VNNI, AVX-VNNI (the
 * same dot product in VEX form, on CPUs without AVX-512), AVX2; NEON with smmla (i8mm) for prompts, NEON with
 * sdot, plain NEON (x8_neon_sets). The VNNI, i8mm and dotprod sets were verified bit for bit through emulation
 * and qemu, not on such a CPU (tests/test_isa_emulated.py). */
static int available_kernels(const native_kernels **out) {
    int n = 0;
#if defined(NATIVE_X86) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    const int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    if (avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni"))
        out[n++] = with_x8(&kernels_avx512vnni, &native_kernels_avx2, native_x8_avx512vnni, "avx512vnni");
    if (avx2 && __builtin_cpu_supports("avxvnni"))
        out[n++] = with_x8(&kernels_avxvnni, &native_kernels_avx2, native_x8_avxvnni, "avxvnni");
    if (avx2) out[n++] = &native_kernels_avx2;
#endif
#if defined(__ARM_NEON)
    x8_set sets[3];
    const int m = x8_neon_sets(sets);
    for (int i = 0; i < m; i++)
        out[n++] = sets[i].table == native_x8_neon
                       ? &native_kernels_neon
                       : with_x8(&kernels_neon_x8[i], &native_kernels_neon, sets[i].table, sets[i].name);
#endif
    out[n++] = &native_kernels_scalar;
    return n;
}

static const native_kernels *kernels_named(const char *name) {
    const native_kernels *avail[8];
    const int n = available_kernels(avail);
    for (int i = 0; i < n; i++)
        if (strcmp(avail[i]->name, name) == 0) return avail[i];
    return NULL;
}

/* EDGEINFER_ISA (or the older EDGEINFER_NATIVE_ISA) as read at import, when it named an ISA this CPU
 * cannot run (the backend refuses to start, saying so), else empty */
static char isa_unavailable[64];

static const native_kernels *best_kernels(void) {
    const native_kernels *avail[8];
    available_kernels(avail);
    return avail[0];
}

/* -- scratch: the quantized activations, kept between calls ---------------------------------------- */

static uint8_t *scratch;
static size_t scratch_size;
static int32_t *qsum_scratch;  /* x8 Q4_0: the activation blocks' sums of quants */
static size_t qsum_size;

static uint8_t *scratch_get(size_t n) {
    if (n > scratch_size) {
        free(scratch);
        size_t size = n + n / 4 + 4096;
        size = (size + 63) & ~(size_t)63;
        scratch = aligned_alloc(64, size);
        scratch_size = scratch ? size : 0;
    }
    return scratch;
}

static size_t align64(size_t n) { return (n + 63) & ~(size_t)63; }

/* lay out a's arrays in the scratch buffer; NULL when out of memory */
static int act_setup(native_act *a, int kind, int64_t n_tokens, int64_t n_cols) {
    memset(a, 0, sizeof *a);
    a->kind = kind;
    a->n_tokens = n_tokens;
    a->n_cols = n_cols;
    size_t q = 0, d = 0, s = 0, bs = 0, f = 0;
    const size_t nt = (size_t)n_tokens, nc = (size_t)n_cols;
    if (kind == ACT_Q8_0 || kind == ACT_Q8_1 || kind == ACT_Q8_K) {
        a->nb = n_cols / (kind == ACT_Q8_K ? QK_K : QK);
        q = align64(nt * nc);
        d = align64(nt * (size_t)a->nb * sizeof(float));
        if (kind == ACT_Q8_1) s = d;
        if (kind == ACT_Q8_K) bs = align64(nt * (nc / 16) * sizeof(int16_t));
    } else {
        f = align64(nt * nc * sizeof(float));
    }
    uint8_t *p = scratch_get(q + d + s + bs + f);
    if (!p) return -1;
    a->q = (int8_t *)p; p += q;
    a->d = (float *)p; p += d;
    a->s = s ? (float *)p : NULL; p += s;
    a->bsums = bs ? (int16_t *)p : NULL; p += bs;
    a->f = f ? (float *)p : NULL;
    return 0;
}

/* -- one matmul: a job for the pool ---------------------------------------------------------------- */

/* Each thread owns one contiguous range of chunks (a long sequential stream of weights for the hardware
 * prefetcher, and no cache line shared with another thread's rows), taken one chunk at a time from its own
 * counter; a thread done with its range takes chunks from the fronts of the others' (work stealing, only
 * at the end). Which thread computes a row never changes its value. */
typedef struct {
    _Atomic int64_t next;
    int64_t end;
    char pad[64 - 2 * sizeof(int64_t)];
} slot_t;

typedef struct {
    const native_kernels *k;
    native_rows_fn rows;
    const uint8_t *w;
    int64_t row_bytes, n_rows, chunk_rows, n_chunks;
    const float *x;
    float *out;
    native_act a;
    int n_slots;
    slot_t *slots;
    int type;
    int transpose;  /* the file's layout run by the x8 kernel, eight rows repacked at a time */
} job_t;

/* the x8 kernel of a type on the ISA in use (the scalar one where the ISA has none), or NULL */
static native_rows_fn x8_rows_of(const native_kernels *k, int type) {
    if (k->x8 && k->x8[type]) return k->x8[type];
    return native_x8_scalar[type];
}

/* whether weights of this type are repacked to x8 on this ISA (only where a SIMD kernel exists for it, or
 * on the scalar ISA, whose x8 kernels are the reference) */
static int x8_preferred(const native_kernels *k, int type) {
    if (!x8_traits_of(type)) return 0;
    if (k == &native_kernels_scalar) return 1;
    return k->x8 && k->x8[type] != NULL;
}

static void qsum_rows(native_act *a) {
    for (int64_t t = 0; t < a->n_tokens; t++)
        for (int64_t b = 0; b < a->nb; b++) {
            const int8_t *q = a->q + t * a->n_cols + QK * b;
            int32_t s = 0;
            for (int j = 0; j < QK; j++) s += q[j];
            a->qsum[t * a->nb + b] = s;
        }
}

static void quantize_job(void *p, int id, int n) {
    job_t *job = p;
    const int64_t T = job->a.n_tokens, per = (T + n - 1) / n;
    const int64_t t0 = id * per, t1 = t0 + per < T ? t0 + per : T;
    for (int64_t t = t0; t < t1; t++) job->k->quantize(job->x + t * job->a.n_cols, &job->a, t);
}

/* A weight in the file's layout of a type the ISA runs in x8: each group of 8 rows is repacked into this
 * thread's buffer as it goes, then the x8 kernel runs on it, so that the file's layout and the repacked
 * one give the same bits (the weight is read from memory once either way; the repack is extra work). */
static _Thread_local uint8_t *group_buf;
static _Thread_local size_t group_buf_size;

static void transposed_chunk(job_t *job, int64_t r0, int64_t r1) {
    const size_t need = 8 * (size_t)job->row_bytes;
    if (need > group_buf_size) {
        free(group_buf);
        group_buf = aligned_alloc(64, (need + 63) & ~(size_t)63);
        group_buf_size = group_buf ? need : 0;
    }
    if (!group_buf) {  /* out of memory for a few KiB: the plain kernel (other float rounding) */
        native_rows_fn plain = job->k->rows[job->type] ? job->k->rows[job->type] : native_kernels_scalar.rows[job->type];
        plain(job->w, job->row_bytes, r0, r1, job->n_rows, &job->a, job->out);
        return;
    }
    for (int64_t r = r0; r < r1; r += 8) {
        const int64_t nr = r1 - r < 8 ? r1 - r : 8;
        x8_pack(job->type, job->w + r * job->row_bytes, group_buf, nr, job->row_bytes);
        job->rows(group_buf, job->row_bytes, 0, nr, job->n_rows, &job->a, job->out + r);
    }
}

static void do_chunk(job_t *job, int64_t c) {
    const int64_t r0 = c * job->chunk_rows;
    const int64_t r1 = r0 + job->chunk_rows < job->n_rows ? r0 + job->chunk_rows : job->n_rows;
    if (job->transpose) transposed_chunk(job, r0, r1);
    else job->rows(job->w, job->row_bytes, r0, r1, job->n_rows, &job->a, job->out);
}

static void rows_job(void *p, int id, int n) {
    (void)n;  /* the pool may run fewer threads than there are slots: the others' ranges get stolen */
    job_t *job = p;
    const int S = job->n_slots;
    for (int k = 0; k < S; k++) {
        slot_t *slot = &job->slots[(id + k) % S];
        for (;;) {
            const int64_t c = atomic_fetch_add_explicit(&slot->next, 1, memory_order_relaxed);
            if (c >= slot->end) break;
            do_chunk(job, c);
        }
    }
}

/* rows per chunk: about 16 KiB of weights (they stay in L1/L2 across a prefill's token tiles), a
 * multiple of 8 (the decode tile's 4 rows, the 8 of Q4_1's batched one), and enough chunks that the
 * threads finish together */
static int64_t chunk_rows(int64_t n_rows, int64_t row_bytes, int n_threads) {
    int64_t rows = 16384 / (row_bytes > 0 ? row_bytes : 1);
    if (rows > 64) rows = 64;
    const int64_t min_chunks = n_threads > 1 ? (int64_t)n_threads * MIN_CHUNKS_PER_THREAD : 1;
    const int64_t balanced = (n_rows + min_chunks - 1) / min_chunks;
    if (rows > balanced) rows = balanced;
    rows = (rows + 7) & ~(int64_t)7;
    return rows < 8 ? 8 : rows;
}

static void run_matmul(job_t *job, int n_threads) {
    const int64_t T = job->a.n_tokens;
    if (T >= PARALLEL_QUANTIZE_MIN_TOKENS && n_threads > 1) {
        tp_run(n_threads, quantize_job, job);
    } else {
        for (int64_t t = 0; t < T; t++) job->k->quantize(job->x + t * job->a.n_cols, &job->a, t);
    }
    if (job->a.qsum) qsum_rows(&job->a);
    const int threads = job->n_chunks < n_threads ? (int)job->n_chunks : n_threads;
    static slot_t slots[TP_MAX_THREADS] __attribute__((aligned(64)));  /* calls are serialized */
    for (int i = 0; i < threads; i++) {
        atomic_store_explicit(&slots[i].next, job->n_chunks * i / threads, memory_order_relaxed);
        slots[i].end = job->n_chunks * (i + 1) / threads;
    }
    job->slots = slots;
    job->n_slots = threads;
    tp_run(threads, rows_job, job);
}

/* -- Python functions ------------------------------------------------------------------------------- */

static int block_size_of(int type) {
    if (lowbit_traits_of(type)) return lowbit_traits_of(type)->values;
    switch (type) {
    case GT_F32: case GT_F16: return 1;
    case GT_Q4_K: case GT_Q5_K: case GT_Q6_K: case GT_IQ4_XS: return QK_K;
    default: return QK;
    }
}

static int64_t type_size_of(int type) {
    if (lowbit_traits_of(type)) return lowbit_traits_of(type)->type_size;
    switch (type) {
    case GT_F32: return 4;
    case GT_F16: return 2;
    case GT_Q4_0: case GT_IQ4_NL: return 18;
    case GT_Q4_1: return 20;
    case GT_Q5_0: return 22;
    case GT_Q5_1: return 24;
    case GT_Q8_0: return 34;
    case GT_Q4_K: return 144;
    case GT_Q5_K: return 176;
    case GT_Q6_K: return 210;
    case GT_IQ4_XS: return 136;
    default: return 0;
    }
}

/* a buffer format of native float32 ("f", "=f", "@f", or "<f" on a little-endian machine) */
static int is_f32(const char *format) {
    if (!format) return 0;
    if (format[0] == '@' || format[0] == '=') format++;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    else if (format[0] == '<') format++;
#endif
    return format[0] == 'f' && format[1] == 0;
}

static PyObject *py_matmul(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 7 && nargs != 8) {
        PyErr_SetString(PyExc_TypeError, "matmul(ggml_type, w, x, out, n_rows, n_cols, n_threads[, x8])");
        return NULL;
    }
    const int x8 = nargs == 8 ? PyObject_IsTrue(args[7]) : 0;
    if (x8 < 0) return NULL;
    const long type = PyLong_AsLong(args[0]);
    const Py_ssize_t n_rows = PyLong_AsSsize_t(args[4]);
    const Py_ssize_t n_cols = PyLong_AsSsize_t(args[5]);
    const long n_threads = PyLong_AsLong(args[6]);
    if (PyErr_Occurred()) return NULL;
    const int kind = type >= 0 && type < GT_COUNT ? native_act_kind((int)type) : ACT_NONE;
    if (kind == ACT_NONE) {
        PyErr_Format(PyExc_NotImplementedError, "the native backend has no matmul for ggml type %ld", type);
        return NULL;
    }
    if (x8 ? !x8_traits_of((int)type) : !native_kernels_scalar.rows[type] && !x8_preferred(kernels, (int)type)) {
        PyErr_Format(PyExc_NotImplementedError, "the native backend has no matmul for ggml type %ld in the %s layout",
                     type, x8 ? "x8" : "plain");
        return NULL;
    }
    const int bsize = block_size_of((int)type);
    if (n_rows < 0 || n_cols <= 0 || n_cols % bsize || n_threads < 1) {
        PyErr_Format(PyExc_ValueError, "bad matmul shape: %zd rows, %zd columns (a multiple of %d), %ld threads",
                     n_rows, n_cols, bsize, n_threads);
        return NULL;
    }
    Py_buffer w, x, out;
    if (PyObject_GetBuffer(args[1], &w, PyBUF_SIMPLE) < 0) return NULL;
    if (PyObject_GetBuffer(args[2], &x, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) { PyBuffer_Release(&w); return NULL; }
    if (PyObject_GetBuffer(args[3], &out, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) {
        PyBuffer_Release(&w); PyBuffer_Release(&x); return NULL;
    }
    PyObject *result = NULL;
    const int64_t row_bytes = n_cols / bsize * type_size_of((int)type);
    /* x: float32 (n_tokens, n_cols), out: float32 (n_tokens, n_rows), both C-contiguous (checked exactly:
     * the backend's fast path relies on it) */
    if (!is_f32(x.format) || x.ndim != 2 || x.shape[1] != n_cols || !is_f32(out.format) || out.ndim != 2 ||
        out.shape[0] != x.shape[0] || out.shape[1] != n_rows) {
        PyErr_Format(PyExc_ValueError,
                     "matmul: x must be float32 (n_tokens, %zd) and out float32 (n_tokens, %zd), both C-contiguous",
                     n_cols, n_rows);
        goto done;
    }
    const int64_t n_tokens = x.shape[0];
    const int64_t w_rows = x8 ? (n_rows + 7) / 8 * 8 : n_rows;  /* x8: whole groups of 8 rows */
    if (w.len != w_rows * row_bytes || x.len != n_tokens * n_cols * (Py_ssize_t)sizeof(float) ||
        out.len != n_tokens * n_rows * (Py_ssize_t)sizeof(float)) {
        PyErr_Format(PyExc_ValueError,
                     "matmul buffers do not fit: weight %zd bytes (expected %lld), x %zd bytes, out %zd bytes "
                     "(expected %lld)", w.len, (long long)(w_rows * row_bytes), x.len, out.len,
                     (long long)(n_tokens * n_rows * 4));
        goto done;
    }
    if (n_tokens == 0 || n_rows == 0) {
        result = Py_None;
        Py_INCREF(result);
        goto done;
    }
    int failed = 0;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&call_mu);
    job_t job;
    job.k = kernels;
    job.type = (int)type;
    job.transpose = !x8 && x8_preferred(kernels, (int)type);
    job.rows = x8 || job.transpose ? x8_rows_of(kernels, (int)type) : kernels->rows[type];
    if (!job.rows) job.rows = native_kernels_scalar.rows[type];
    job.w = w.buf;
    job.row_bytes = row_bytes;
    job.n_rows = n_rows;
    job.x = x.buf;
    job.out = out.buf;
    job.chunk_rows = chunk_rows(n_rows, row_bytes, (int)n_threads);
    job.n_chunks = (n_rows + job.chunk_rows - 1) / job.chunk_rows;
    if (act_setup(&job.a, kind, n_tokens, n_cols) != 0) failed = 1;
    if (!failed && (x8 || job.transpose) && x8_needs_qsum((int)type)) {
        const size_t need = (size_t)n_tokens * (size_t)job.a.nb * sizeof(int32_t);
        if (need > qsum_size) {
            free(qsum_scratch);
            qsum_scratch = malloc(need + need / 4 + 64);
            qsum_size = qsum_scratch ? need + need / 4 + 64 : 0;
        }
        if (!qsum_scratch) failed = 1;
        job.a.qsum = qsum_scratch;
    }
    if (!failed) run_matmul(&job, (int)n_threads);
    pthread_mutex_unlock(&call_mu);
    Py_END_ALLOW_THREADS
    if (failed) {
        PyErr_NoMemory();
        goto done;
    }
    result = Py_None;
    Py_INCREF(result);
done:
    PyBuffer_Release(&w);
    PyBuffer_Release(&x);
    PyBuffer_Release(&out);
    return result;
}

/* a buffer format of a 4-byte signed int ("i", or "l" where long is 4 bytes), native order */
static int is_i32(const Py_buffer *b) {
    const char *format = b->format;
    if (!format || b->itemsize != 4) return 0;
    if (format[0] == '@' || format[0] == '=') format++;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    else if (format[0] == '<') format++;
#endif
    return (format[0] == 'i' || format[0] == 'l') && format[1] == 0;
}

/* the K/V format of an attention buffer: float32 rows, float16 ("e") rows, uint8 ("B") rows of Q8_0
 * blocks; -1 for anything else */
static int kv_format(const Py_buffer *b) {
    if (is_f32(b->format)) return GT_F32;
    const char *f = b->format;
    if (!f) return -1;
    if (f[0] == '@' || f[0] == '=' || f[0] == '<') f++;
    if (f[1] != 0) return -1;
    return f[0] == 'e' ? GT_F16 : f[0] == 'B' ? GT_Q8_0 : -1;
}

/* values per row of a K/V buffer whose last axis holds n items of format t */
static int64_t kv_values(int t, int64_t n) { return t == GT_Q8_0 ? (n % (2 + QK) ? -1 : n / (2 + QK) * QK) : n; }

/* one sequence's attention arguments: objs = q, k, v, q_pos, kv_pos, cells, out. Acquires their buffers
 * into b[*got..] (the caller releases b[0 .. *got)), checks dtypes, layouts, shapes and that every cell
 * is a row of k and v, fills a (but for n_swa and scale). 0, or -1 with a Python error set. */
static int attn_args(PyObject *const objs[7], Py_buffer *b, Py_ssize_t *got, native_attn_args *a, const char *who) {
    const Py_ssize_t first = *got;
    for (int i = 0; i < 7; i++) {
        const int flags = (i == 6 ? PyBUF_WRITABLE : 0) | PyBUF_C_CONTIGUOUS | PyBUF_FORMAT;
        if (PyObject_GetBuffer(objs[i], &b[first + i], flags) < 0) return -1;
        (*got)++;
    }
    const Py_buffer *q = &b[first], *k = &b[first + 1], *v = &b[first + 2], *qp = &b[first + 3],
                    *kp = &b[first + 4], *cl = &b[first + 5], *out = &b[first + 6];
    const int kv_type = kv_format(k);
    if (!is_f32(q->format) || kv_type < 0 || kv_format(v) != kv_type || !is_f32(out->format) ||
        !is_i32(qp) || !is_i32(kp) || !is_i32(cl) || q->ndim != 3 || k->ndim != 3 || v->ndim != 3 ||
        qp->ndim != 1 || kp->ndim != 1 || cl->ndim != 1 || out->ndim != 2) {
        PyErr_Format(PyExc_ValueError, "%s: float32 q and out, k and v float32, float16 or uint8 (Q8_0 rows) "
                     "alike, int32 positions and cells, C-contiguous", who);
        return -1;
    }
    a->kv_type = kv_type;
    a->n = q->shape[0]; a->H = q->shape[1]; a->D = q->shape[2];
    a->n_kv = kp->shape[0]; a->Hkv = k->shape[1]; a->Dv = kv_values(kv_type, v->shape[2]);
    if (a->Hkv < 1 || a->H % a->Hkv || kv_values(kv_type, k->shape[2]) != a->D || a->Dv < 1 ||
        native_kv_row_bytes(kv_type, a->D) <= 0 || native_kv_row_bytes(kv_type, a->Dv) <= 0 ||
        v->shape[0] != k->shape[0] || v->shape[1] != a->Hkv ||
        qp->shape[0] != a->n || cl->shape[0] != a->n_kv || out->shape[0] != a->n || out->shape[1] != a->H * a->Dv) {
        PyErr_Format(PyExc_ValueError, "%s: shapes do not fit", who);
        return -1;
    }
    const int32_t *cells = cl->buf;
    for (int64_t j = 0; j < a->n_kv; j++)
        if (cells[j] < 0 || cells[j] >= k->shape[0]) {
            PyErr_Format(PyExc_ValueError, "%s: cell %d is not a row of k and v", who, (int)cells[j]);
            return -1;
        }
    a->q = q->buf; a->k = k->buf; a->v = v->buf; a->q_pos = qp->buf; a->kv_pos = kp->buf; a->cells = cells;
    a->out = out->buf;
    return 0;
}

/* the optional sinks argument (None, or float32 (H,) C-contiguous) into *b (*held set when acquired) and
 * *sinks; 0, or -1 with a Python error set */
static int attn_sinks(PyObject *obj, int64_t H, Py_buffer *b, int *held, const float **sinks, const char *who) {
    *held = 0;
    *sinks = NULL;
    if (obj == NULL || obj == Py_None) return 0;
    if (PyObject_GetBuffer(obj, b, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) return -1;
    *held = 1;
    if (!is_f32(b->format) || b->ndim != 1 || b->shape[0] != H) {
        PyErr_Format(PyExc_ValueError, "%s: sinks must be float32 (n_head,), C-contiguous", who);
        return -1;
    }
    *sinks = b->buf;
    return 0;
}

/* the optional softcap argument (a float >= 0; 0 or absent: off) into *softcap; 0, or -1 with a Python error set */
static int attn_softcap(PyObject *obj, float *softcap, const char *who) {
    *softcap = 0.0f;
    if (obj == NULL) return 0;
    const double c = PyFloat_AsDouble(obj);
    if (c == -1.0 && PyErr_Occurred()) return -1;
    if (!(c >= 0.0 && c < INFINITY)) {
        PyErr_Format(PyExc_ValueError, "%s: softcap must be 0 (off) or a positive finite number", who);
        return -1;
    }
    *softcap = (float)c;
    return 0;
}

/* attention (S = 1) or attention_many, on the pool, the GIL released */
static PyObject *attn_run(native_attn_args *as, Py_ssize_t S, long n_threads) {
    int failed = 0;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&call_mu);
#if defined(NATIVE_X86)
    /* the AVX2 attention on every set built on AVX2's */
    const int avx2 = kernels == &native_kernels_avx2 || kernels == &kernels_avx512vnni || kernels == &kernels_avxvnni;
#else
    const int avx2 = 0;
#endif
    failed = S == 1 ? native_attention(as, (int)n_threads, avx2) : native_attention_many(as, (int)S, (int)n_threads, avx2);
    pthread_mutex_unlock(&call_mu);
    Py_END_ALLOW_THREADS
    if (failed) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

/* attention(q, k, v, q_pos, kv_pos, cells, n_swa, scale, out, n_threads[, sinks[, softcap]]): see native_attention */
static PyObject *py_attention(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs < 10 || nargs > 12) {
        PyErr_SetString(PyExc_TypeError,
                        "attention(q, k, v, q_pos, kv_pos, cells, n_swa, scale, out, n_threads[, sinks[, softcap]])");
        return NULL;
    }
    const long n_swa = PyLong_AsLong(args[6]);
    const double scale = PyFloat_AsDouble(args[7]);
    const long n_threads = PyLong_AsLong(args[9]);
    if (PyErr_Occurred()) return NULL;
    if (n_threads < 1 || n_swa < INT32_MIN || n_swa > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "attention: float32 q, k, v, out and int32 positions, C-contiguous");
        return NULL;
    }
    PyObject *const objs[7] = {args[0], args[1], args[2], args[3], args[4], args[5], args[8]};
    Py_buffer b[7];
    Py_ssize_t got = 0;
    native_attn_args a;
    Py_buffer sb;
    int sinks_held = 0;
    PyObject *result = NULL;
    if (attn_args(objs, b, &got, &a, "attention") == 0 &&
        attn_sinks(nargs >= 11 ? args[10] : NULL, a.H, &sb, &sinks_held, &a.sinks, "attention") == 0 &&
        attn_softcap(nargs == 12 ? args[11] : NULL, &a.softcap, "attention") == 0) {
        a.n_swa = (int)n_swa;
        a.scale = (float)scale;
        result = attn_run(&a, 1, n_threads);
    }
    if (sinks_held) PyBuffer_Release(&sb);
    for (Py_ssize_t i = 0; i < got; i++) PyBuffer_Release(&b[i]);
    return result;
}

/* attention_many(qs, ks, vs, q_poss, kv_poss, cellss, n_swa, scale, outs, n_threads[, sinks[, softcap]]): lists
 * of one array per sequence, each as attention()'s, and one sinks array (or None) and softcap for all; one job
 * on the pool */
static PyObject *py_attention_many(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs < 10 || nargs > 12) {
        PyErr_SetString(PyExc_TypeError,
                        "attention_many(qs, ks, vs, q_poss, kv_poss, cellss, n_swa, scale, outs, n_threads[, sinks[, softcap]])");
        return NULL;
    }
    const long n_swa = PyLong_AsLong(args[6]);
    const double scale = PyFloat_AsDouble(args[7]);
    const long n_threads = PyLong_AsLong(args[9]);
    if (PyErr_Occurred()) return NULL;
    static const int which[7] = {0, 1, 2, 3, 4, 5, 8};
    for (int i = 0; i < 7; i++)
        if (!PyList_Check(args[which[i]])) {
            PyErr_SetString(PyExc_TypeError, "attention_many: lists of arrays, one per sequence");
            return NULL;
        }
    const Py_ssize_t S = PyList_GET_SIZE(args[0]);
    for (int i = 1; i < 7; i++)
        if (PyList_GET_SIZE(args[which[i]]) != S) {
            PyErr_SetString(PyExc_ValueError, "attention_many: the lists differ in length");
            return NULL;
        }
    if (n_threads < 1 || n_swa < INT32_MIN || n_swa > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "attention_many: n_threads >= 1, n_swa an int32");
        return NULL;
    }
    float softcap;
    if (attn_softcap(nargs == 12 ? args[11] : NULL, &softcap, "attention_many") < 0) return NULL;
    if (S == 0) Py_RETURN_NONE;
    Py_buffer *b = calloc((size_t)S * 7, sizeof *b);
    native_attn_args *as = calloc((size_t)S, sizeof *as);
    Py_ssize_t got = 0;
    Py_buffer sb;
    int sinks_held = 0;
    const float *sinks = NULL;
    PyObject *result = NULL;
    if (!b || !as) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t s = 0; s < S; s++) {
        PyObject *objs[7];
        for (int i = 0; i < 7; i++) objs[i] = PyList_GET_ITEM(args[which[i]], s);
        if (attn_args(objs, b, &got, &as[s], "attention_many") < 0) goto done;
        if (s == 0 && attn_sinks(nargs >= 11 ? args[10] : NULL, as[0].H, &sb, &sinks_held, &sinks, "attention_many") < 0)
            goto done;
        if (sinks && as[s].H != as[0].H) {
            PyErr_SetString(PyExc_ValueError, "attention_many: with sinks, every sequence has the same heads");
            goto done;
        }
        as[s].n_swa = (int)n_swa;
        as[s].scale = (float)scale;
        as[s].sinks = sinks;
        as[s].softcap = softcap;
    }
    result = attn_run(as, S, n_threads);
done:
    if (sinks_held) PyBuffer_Release(&sb);
    for (Py_ssize_t i = 0; i < got; i++) PyBuffer_Release(&b[i]);
    free(b);
    free(as);
    return result;
}

typedef struct {
    int type;
    const uint8_t *src;
    uint8_t *dst;
    int64_t n_rows, row_bytes;
} pack_job_t;

static void pack_job(void *p, int id, int n) {
    const pack_job_t *j = p;
    const int64_t groups = (j->n_rows + 7) / 8;
    const int64_t r0 = groups * id / n * 8, r1 = groups * (id + 1) / n * 8;
    x8_pack_rows(j->type, j->src, j->dst, j->n_rows, j->row_bytes, r0, r1 < j->n_rows ? r1 : j->n_rows);
}

/* repack(ggml_type, src, dst, n_rows, n_cols, unpack[, n_threads]): plain rows <-> x8 groups (x8.h) */
static PyObject *py_repack(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 6 && nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "repack(ggml_type, src, dst, n_rows, n_cols, unpack[, n_threads])");
        return NULL;
    }
    const long n_threads = nargs == 7 ? PyLong_AsLong(args[6]) : 1;
    const long type = PyLong_AsLong(args[0]);
    const Py_ssize_t n_rows = PyLong_AsSsize_t(args[3]);
    const Py_ssize_t n_cols = PyLong_AsSsize_t(args[4]);
    const int unpack = PyObject_IsTrue(args[5]);
    if (PyErr_Occurred() || unpack < 0) return NULL;
    if (type < 0 || type >= GT_COUNT || !x8_traits_of((int)type)) {
        PyErr_Format(PyExc_NotImplementedError, "ggml type %ld has no x8 layout", type);
        return NULL;
    }
    const int bsize = block_size_of((int)type);
    if (n_rows < 1 || n_cols <= 0 || n_cols % bsize) {
        PyErr_Format(PyExc_ValueError, "repack: bad shape %zd x %zd", n_rows, n_cols);
        return NULL;
    }
    const int64_t row_bytes = n_cols / bsize * type_size_of((int)type);
    const int64_t plain = n_rows * row_bytes, packed = (n_rows + 7) / 8 * 8 * row_bytes;
    Py_buffer src, dst;
    if (PyObject_GetBuffer(args[1], &src, PyBUF_SIMPLE) < 0) return NULL;
    if (PyObject_GetBuffer(args[2], &dst, PyBUF_WRITABLE | PyBUF_SIMPLE) < 0) { PyBuffer_Release(&src); return NULL; }
    PyObject *result = NULL;
    if (src.len != (unpack ? packed : plain) || dst.len != (unpack ? plain : packed)) {
        PyErr_Format(PyExc_ValueError, "repack: src %zd bytes, dst %zd bytes; expected %lld and %lld", src.len,
                     dst.len, (long long)(unpack ? packed : plain), (long long)(unpack ? plain : packed));
    } else {
        Py_BEGIN_ALLOW_THREADS
        if (unpack) {
            x8_unpack((int)type, src.buf, dst.buf, n_rows, row_bytes);
        } else {
            pthread_mutex_lock(&call_mu);  /* the pool is shared with the matmuls */
            pack_job_t job = {(int)type, src.buf, dst.buf, n_rows, row_bytes};
            const int64_t groups = (n_rows + 7) / 8;
            const int threads = n_threads < 1 ? 1 : n_threads > groups ? (int)groups : (int)n_threads;
            tp_run(threads, pack_job, &job);
            pthread_mutex_unlock(&call_mu);
        }
        Py_END_ALLOW_THREADS
        result = Py_None;
        Py_INCREF(result);
    }
    PyBuffer_Release(&src);
    PyBuffer_Release(&dst);
    return result;
}

static PyObject *py_x8_preferred(PyObject *self, PyObject *arg) {
    (void)self;
    const long type = PyLong_AsLong(arg);
    if (type == -1 && PyErr_Occurred()) return NULL;
    return PyBool_FromLong(type >= 0 && type < GT_COUNT && x8_preferred(kernels, (int)type));
}

static PyObject *py_supports(PyObject *self, PyObject *arg) {
    (void)self;
    const long type = PyLong_AsLong(arg);
    if (type == -1 && PyErr_Occurred()) return NULL;
    return PyBool_FromLong(type >= 0 && type < GT_COUNT && native_act_kind((int)type) != ACT_NONE &&
                           native_kernels_scalar.rows[type] != NULL);
}

static PyObject *py_isa(PyObject *self, PyObject *unused) {
    (void)self; (void)unused;
    return PyUnicode_FromString(kernels->name);
}

static PyObject *py_set_isa(PyObject *self, PyObject *arg) {
    (void)self;
    const char *name = PyUnicode_AsUTF8(arg);
    if (!name) return NULL;
    const native_kernels *k = strcmp(name, "auto") == 0 ? best_kernels() : kernels_named(name);
    if (!k) {
        PyErr_Format(PyExc_ValueError, "ISA %R is not available on this CPU", arg);
        return NULL;
    }
    PyObject *previous = PyUnicode_FromString(kernels->name);
    pthread_mutex_lock(&call_mu);
    kernels = k;
    pthread_mutex_unlock(&call_mu);
    return previous;
}

static PyObject *py_isas(PyObject *self, PyObject *unused) {
    (void)self; (void)unused;
    const native_kernels *avail[8];
    const int n = available_kernels(avail);
    PyObject *list = PyList_New(n);
    if (!list) return NULL;
    for (int i = 0; i < n; i++) {
        PyObject *s = PyUnicode_FromString(avail[i]->name);
        if (!s) { Py_DECREF(list); return NULL; }
        PyList_SET_ITEM(list, i, s);
    }
    return list;
}

static PyObject *py_cpu_features(PyObject *self, PyObject *unused) {
    (void)self; (void)unused;
    feature_t f[16];
    const int n = cpu_features(f, 16);
    PyObject *d = PyDict_New();
    if (!d) return NULL;
    for (int i = 0; i < n; i++)
        if (PyDict_SetItemString(d, f[i].name, f[i].on ? Py_True : Py_False) < 0) { Py_DECREF(d); return NULL; }
    return d;
}

static PyObject *py_isa_unavailable(PyObject *self, PyObject *unused) {
    (void)self; (void)unused;
    if (!isa_unavailable[0]) Py_RETURN_NONE;
    return PyUnicode_FromString(isa_unavailable);
}

static PyObject *py_set_prefetch(PyObject *self, PyObject *arg) {
    (void)self;
    const long n = PyLong_AsLong(arg);
    if (n == -1 && PyErr_Occurred()) return NULL;
    if (n < 0 || n > (1L << 20)) {
        PyErr_SetString(PyExc_ValueError, "prefetch distance: 0 (off) to 1 MiB");
        return NULL;
    }
    pthread_mutex_lock(&call_mu);
    const int previous = native_prefetch_bytes;
    native_prefetch_bytes = (int)n;
    pthread_mutex_unlock(&call_mu);
    return PyLong_FromLong(previous);
}

static PyObject *py_n_workers(PyObject *self, PyObject *unused) {
    (void)self; (void)unused;
    return PyLong_FromLong(tp_n_workers());
}

static PyMethodDef methods[] = {
    {"matmul", (PyCFunction)(void (*)(void))py_matmul, METH_FASTCALL,
     "matmul(ggml_type, w, x, out, n_rows, n_cols, n_threads): out = x @ W.T"},
    {"attention_many", (PyCFunction)(void (*)(void))py_attention_many, METH_FASTCALL,
     "attention_many(qs, ks, vs, q_poss, kv_poss, cellss, n_swa, scale, outs, n_threads[, sinks[, softcap]]): attention() of several sequences"},
    {"attention", (PyCFunction)(void (*)(void))py_attention, METH_FASTCALL,
     "attention(q, k, v, q_pos, kv_pos, cells, n_swa, scale, out, n_threads[, sinks[, softcap]]): out = softmax(scale q.k) v (masked; sinks: one more logit per head; softcap > 0: scores capped, softcap tanh(s / softcap)); token j is row cells[j] of k and v"},
    {"supports", py_supports, METH_O, "supports(ggml_type) -> bool: a native kernel exists"},
    {"repack", (PyCFunction)(void (*)(void))py_repack, METH_FASTCALL,
     "repack(ggml_type, src, dst, n_rows, n_cols, unpack): plain rows <-> x8 groups of 8 interleaved rows"},
    {"x8_preferred", py_x8_preferred, METH_O,
     "x8_preferred(ggml_type) -> bool: weights of this type run repacked (x8) on the ISA in use"},
    {"isa", py_isa, METH_NOARGS, "isa() -> the kernel set in use: one of isas()"},
    {"set_isa", py_set_isa, METH_O, "set_isa(name) -> previous: one of isas(), or 'auto' (tests)"},
    {"isas", py_isas, METH_NOARGS, "isas() -> the kernel sets this CPU can run, best first"},
    {"cpu_features", py_cpu_features, METH_NOARGS, "cpu_features() -> {feature: bool} the choice depends on"},
    {"isa_unavailable", py_isa_unavailable, METH_NOARGS,
     "isa_unavailable() -> the EDGEINFER_ISA value this CPU cannot run, or None"},
    {"set_prefetch", py_set_prefetch, METH_O,
     "set_prefetch(n_bytes) -> previous: how far ahead a decode prefetches the weights (0: off; tuning)"},
    {"n_workers", py_n_workers, METH_NOARGS, "worker threads started so far"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "edgeinfer._native", "edgeinfer's C kernels (quantized matmul, attention).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__native(void) {
    const char *env = getenv("EDGEINFER_ISA");
    if (!env || !*env) env = getenv("EDGEINFER_NATIVE_ISA");
    kernels = best_kernels();
    if (env && *env && strcmp(env, "auto") != 0) {
        const native_kernels *k = kernels_named(env);
        if (k) kernels = k;
        else snprintf(isa_unavailable, sizeof isa_unavailable, "%s", env);
    }
    const char *pf = getenv("EDGEINFER_NATIVE_PREFETCH");
    if (pf) native_prefetch_bytes = atoi(pf) < 0 ? 0 : atoi(pf);
    return PyModule_Create(&module);
}

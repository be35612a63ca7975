/* A persistent thread pool for the native kernels.
 *
 * tp_run(n, fn, ctx) calls fn(ctx, i, n) on n threads (i = 0 is the caller) and returns when all are
 * done. Workers are created on first use and kept: after a job they spin on an atomic generation counter
 * for a short while (EDGEINFER_NATIVE_SPIN_US, default 100 us) so that back-to-back jobs start in about
 * a microsecond, then sleep on a futex (a condition variable off Linux): an idle process burns no CPU.
 * Not reentrant: callers serialize (the extension holds a mutex around each matmul).
 */
#ifndef EDGEINFER_THREADPOOL_H
#define EDGEINFER_THREADPOOL_H

#define TP_MAX_THREADS 256

typedef void (*tp_fn)(void *ctx, int thread_id, int n_threads);

/* run fn on n_threads threads (the caller is thread 0); 0 on success, -1 if threads could not start
 * (then fn ran on fewer threads: every job must cope with any n_threads >= 1, as chunked loops do) */
int tp_run(int n_threads, tp_fn fn, void *ctx);

/* worker threads started so far */
int tp_n_workers(void);

#endif

/* Persistent pthread pool: see threadpool.h. */
#define _GNU_SOURCE
#include "threadpool.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

#if defined(__linux__)
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#define TP_FUTEX 1
#endif

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define tp_pause() _mm_pause()
#elif defined(__aarch64__)
#define tp_pause() __asm__ __volatile__("yield")
#else
#define tp_pause() ((void)0)
#endif

static struct {
    _Atomic uint32_t gen;       /* bumped once per job; the futex word */
    _Atomic int pending;        /* workers of the current job not done yet */
    _Atomic int sleeping;       /* workers blocked (or about to block) on gen */
    tp_fn fn;
    void *ctx;
    int job_threads;
    int n_workers;              /* started: thread ids 1..n_workers */
    long spin_ns;
    pthread_t threads[TP_MAX_THREADS];
    uint32_t start_gen[TP_MAX_THREADS];
#if !defined(TP_FUTEX)
    pthread_mutex_t mu;
    pthread_cond_t cv;
#endif
} pool = {
    .spin_ns = -1,
#if !defined(TP_FUTEX)
    .mu = PTHREAD_MUTEX_INITIALIZER,
    .cv = PTHREAD_COND_INITIALIZER,
#endif
};

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void wait_gen(uint32_t seen) {
#if defined(TP_FUTEX)
    while (atomic_load(&pool.gen) == seen)
        syscall(SYS_futex, (uint32_t *)&pool.gen, FUTEX_WAIT_PRIVATE, seen, NULL, NULL, 0);
#else
    pthread_mutex_lock(&pool.mu);
    while (atomic_load(&pool.gen) == seen) pthread_cond_wait(&pool.cv, &pool.mu);
    pthread_mutex_unlock(&pool.mu);
#endif
}

static void wake_all(void) {
#if defined(TP_FUTEX)
    syscall(SYS_futex, (uint32_t *)&pool.gen, FUTEX_WAKE_PRIVATE, INT32_MAX, NULL, NULL, 0);
#else
    pthread_mutex_lock(&pool.mu);
    pthread_cond_broadcast(&pool.cv);
    pthread_mutex_unlock(&pool.mu);
#endif
}

static void *worker(void *arg) {
    const int id = (int)(intptr_t)arg;
    uint32_t seen = pool.start_gen[id];  /* the generation before any job it must take part in */
    for (;;) {
        /* spin a while for the next job, then sleep */
        if (atomic_load_explicit(&pool.gen, memory_order_acquire) == seen) {
            const int64_t until = now_ns() + pool.spin_ns;
            int k = 0;
            while (atomic_load_explicit(&pool.gen, memory_order_acquire) == seen) {
                tp_pause();
                /* every ~1 us: let another runnable thread have this core (on a machine with as many
                 * threads as cores, e.g. an OpenMP pool spinning beside this one), and sleep once the
                 * spin time is over */
                if (++k % 64 == 0) sched_yield();
                if (k % 64 == 0 && now_ns() > until) {
                    atomic_fetch_add(&pool.sleeping, 1);
                    wait_gen(seen);
                    atomic_fetch_sub(&pool.sleeping, 1);
                }
            }
        }
        seen = atomic_load_explicit(&pool.gen, memory_order_acquire);
        /* every worker acknowledges every job (so that none reads a job's fields after the next one
         * is posted); those past the job's thread count only acknowledge */
        if (id < pool.job_threads) pool.fn(pool.ctx, id, pool.job_threads);
        atomic_fetch_sub_explicit(&pool.pending, 1, memory_order_release);
    }
    return NULL;
}

static void after_fork_child(void) {
    /* the workers do not exist in a forked child: start afresh */
    pool.n_workers = 0;
    atomic_store(&pool.pending, 0);
    atomic_store(&pool.sleeping, 0);
}

static int start_workers(int n) {
    if (pool.spin_ns < 0) {
        const char *env = getenv("EDGEINFER_NATIVE_SPIN_US");
        long us = env ? atol(env) : 100;
        pool.spin_ns = (us < 0 ? 0 : us) * 1000;
        pthread_atfork(NULL, NULL, after_fork_child);
    }
    while (pool.n_workers < n) {
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setstacksize(&attr, 1 << 20);
        int id = pool.n_workers + 1;
        pool.start_gen[id] = atomic_load(&pool.gen);
        int rc = pthread_create(&pool.threads[id], &attr, worker, (void *)(intptr_t)id);
        pthread_attr_destroy(&attr);
        if (rc != 0) return -1;
        pthread_detach(pool.threads[id]);
        pool.n_workers = id;
    }
    return 0;
}

int tp_n_workers(void) { return pool.n_workers; }

int tp_run(int n_threads, tp_fn fn, void *ctx) {
    int rc = 0;
    if (n_threads > TP_MAX_THREADS) n_threads = TP_MAX_THREADS;
    if (n_threads > 1 && pool.n_workers < n_threads - 1 && start_workers(n_threads - 1) != 0) rc = -1;
    if (n_threads - 1 > pool.n_workers) n_threads = pool.n_workers + 1;
    if (n_threads <= 1) {
        fn(ctx, 0, 1);
        return rc;
    }
    pool.fn = fn;
    pool.ctx = ctx;
    pool.job_threads = n_threads;
    atomic_store(&pool.pending, pool.n_workers);
    atomic_fetch_add(&pool.gen, 1);              /* seq_cst: publishes the job */
    if (atomic_load(&pool.sleeping) > 0) wake_all();
    fn(ctx, 0, n_threads);
    for (int k = 1; atomic_load_explicit(&pool.pending, memory_order_acquire) > 0; k++) {
        tp_pause();
        if (k % 256 == 0) sched_yield();
    }
    return rc;
}

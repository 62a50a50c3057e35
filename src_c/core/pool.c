/* pool.c - the network's worker threads (pthreads), owned by the network.
 *
 * A network with threads = T > 1 keeps T - 1 helper threads; the thread that
 * calls into the library is worker 0 and works alongside them. A job is
 * `ntasks` calls fn(ctx, task, worker), task in [0, ntasks), handed out one
 * at a time from a shared counter (dynamic scheduling: on a shared machine a
 * helper that is not running leaves its tasks to the others), and the caller
 * returns when every task is done. How work is cut into tasks never depends
 * on the thread count, so results are the same for any T.
 *
 * GEMMs run inside tasks with OpenBLAS single-threaded (dn_net_prepare_threads,
 * network.c, sets its thread count to 1 while the pool drives the work; the
 * setter is here, dn_blas_set_threads), so the two never compete for the CPUs.
 *
 * A helper runs a job's tasks in the caller's floating-point mode (on x86 its
 * MXCSR: rounding, and flushing denormals to zero as inference passes do,
 * loop.c), so results never depend on which thread ran a task.
 *
 * Between jobs a helper spins for up to a millisecond (a layer's next loop
 * usually follows within microseconds, and waking a sleeping thread costs
 * far more on a virtual machine), then sleeps on a condition variable. A job
 * started from a forked child (helpers do not survive fork) or from inside a
 * task runs serially in the calling thread.
 *
 * Protocol: `seq` is even while no job is open and odd while one is. The
 * caller writes the job, publishes seq + 1, works, waits for all tasks to be
 * done, closes with seq + 2, and waits until no helper is still inside. A
 * helper that saw an odd seq registers in `inside`, re-reads seq, and takes
 * tasks only if the job it saw is still open. */
#include "layer.h"
#include "blas_link.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define DN_RELAX() _mm_pause()
#define DN_FP_MODE() _mm_getcsr()
#define DN_SET_FP_MODE(m) _mm_setcsr(m)
#else
#define DN_RELAX() ((void)0)
#define DN_FP_MODE() 0u
#define DN_SET_FP_MODE(m) ((void)(m))
#endif

/* how long an idle helper spins before sleeping, and how long the caller
 * spins waiting for the last tasks before yielding the CPU */
#define DN_POOL_SPIN_NS 1000000L
#define DN_POOL_WAIT_SPIN_NS 50000L

typedef struct {
    struct dn_pool *pool;
    int index;
} helper_arg;

struct dn_pool {
    int nthreads; /* including the caller */
    int started;  /* helpers created */
    pthread_t *threads;
    helper_arg *args;
    pthread_mutex_t mu;
    pthread_cond_t wake;
    atomic_uint seq;
    atomic_int next, done, inside, sleepers, stop, running;
    dn_task_fn fn;
    void *ctx;
    int ntasks;
    unsigned fp_mode; /* the caller's floating-point mode (x86: MXCSR), which helpers take for the job */
    pid_t pid;
};

static long long now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

static void take_tasks(struct dn_pool *p, int worker)
{
    const int n = p->ntasks;
    for (;;) {
        const int t = atomic_fetch_add(&p->next, 1);
        if (t >= n) break;
        p->fn(p->ctx, t, worker);
        atomic_fetch_add(&p->done, 1);
    }
}

/* Waits until seq differs from `seen`; returns the new value. */
static unsigned wait_change(struct dn_pool *p, unsigned seen)
{
    unsigned s;
    long long until = 0;
    for (int i = 0;; ++i) {
        s = atomic_load(&p->seq);
        if (s != seen || atomic_load(&p->stop)) return s;
        DN_RELAX();
        if ((i & 63) == 63) {
            const long long t = now_ns();
            if (!until) until = t + DN_POOL_SPIN_NS;
            else if (t > until) break;
        }
    }
    pthread_mutex_lock(&p->mu);
    atomic_fetch_add(&p->sleepers, 1);
    while ((s = atomic_load(&p->seq)) == seen && !atomic_load(&p->stop)) pthread_cond_wait(&p->wake, &p->mu);
    atomic_fetch_sub(&p->sleepers, 1);
    pthread_mutex_unlock(&p->mu);
    return s;
}

static void *helper_main(void *arg)
{
    helper_arg *a = arg;
    struct dn_pool *p = a->pool;
    unsigned seen = atomic_load(&p->seq);
    for (;;) {
        const unsigned s = wait_change(p, seen);
        if (atomic_load(&p->stop)) break;
        seen = s;
        if (!(s & 1u)) continue; /* a job closed before we looked */
        atomic_fetch_add(&p->inside, 1);
        if (atomic_load(&p->seq) == s) {
            DN_SET_FP_MODE(p->fp_mode);
            take_tasks(p, a->index);
        }
        atomic_fetch_sub(&p->inside, 1);
    }
    return NULL;
}

void dn_pool_free(struct dn_pool *p)
{
    if (!p) return;
    if (p->pid == getpid()) {
        pthread_mutex_lock(&p->mu);
        atomic_store(&p->stop, 1);
        pthread_cond_broadcast(&p->wake);
        pthread_mutex_unlock(&p->mu);
        for (int i = 0; i < p->started; ++i) pthread_join(p->threads[i], NULL);
        pthread_cond_destroy(&p->wake);
        pthread_mutex_destroy(&p->mu);
    }
    free(p->threads);
    free(p->args);
    free(p);
}

dn_status dn_pool_create(int threads, struct dn_pool **out)
{
    *out = NULL;
    if (threads < 2) return DN_OK;
    struct dn_pool *p = calloc(1, sizeof(*p));
    if (!p) return dn_fail(DN_ERR_NOMEM, "out of memory for the thread pool");
    p->nthreads = threads;
    p->pid = getpid();
    p->threads = calloc((size_t)threads, sizeof(pthread_t));
    p->args = calloc((size_t)threads, sizeof(helper_arg));
    if (!p->threads || !p->args) {
        free(p->threads);
        free(p->args);
        free(p);
        return dn_fail(DN_ERR_NOMEM, "out of memory for the thread pool");
    }
    atomic_init(&p->seq, 0u);
    atomic_init(&p->next, 0);
    atomic_init(&p->done, 0);
    atomic_init(&p->inside, 0);
    atomic_init(&p->sleepers, 0);
    atomic_init(&p->stop, 0);
    atomic_init(&p->running, 0);
    if (pthread_mutex_init(&p->mu, NULL)) {
        free(p->threads);
        free(p->args);
        free(p);
        return dn_fail(DN_ERR_STATE, "cannot create the thread pool's mutex");
    }
    if (pthread_cond_init(&p->wake, NULL)) {
        pthread_mutex_destroy(&p->mu);
        free(p->threads);
        free(p->args);
        free(p);
        return dn_fail(DN_ERR_STATE, "cannot create the thread pool's condition variable");
    }
    for (int i = 1; i < threads; ++i) {
        p->args[p->started].pool = p;
        p->args[p->started].index = i;
        if (pthread_create(&p->threads[p->started], NULL, helper_main, &p->args[p->started])) {
            dn_pool_free(p);
            return dn_fail(DN_ERR_STATE, "cannot start worker thread %d of %d", i, threads - 1);
        }
        ++p->started;
    }
    *out = p;
    return DN_OK;
}

int dn_pool_threads(const struct dn_pool *p) { return p ? p->nthreads : 1; }

/* One step of the caller's wait: spin a while, then give the CPU away
 * (a helper still working may be waiting for it on a busy machine). */
static void backoff(int i, long long *until)
{
    DN_RELAX();
    if ((i & 63) == 63) {
        const long long t = now_ns();
        if (!*until) *until = t + DN_POOL_WAIT_SPIN_NS;
        else if (t > *until) sched_yield();
    }
}

void dn_pool_run(struct dn_pool *p, int ntasks, dn_task_fn fn, void *ctx)
{
    if (ntasks <= 0) return;
    if (!p || ntasks == 1 || p->pid != getpid() || atomic_exchange(&p->running, 1)) {
        /* no helpers, nothing to share, a forked child, or a job started from inside a task */
        for (int t = 0; t < ntasks; ++t) fn(ctx, t, 0);
        return;
    }
    p->fn = fn;
    p->ctx = ctx;
    p->ntasks = ntasks;
    p->fp_mode = DN_FP_MODE();
    atomic_store(&p->next, 0);
    atomic_store(&p->done, 0);
    const unsigned s = atomic_load(&p->seq) + 1u; /* odd: open */
    atomic_store(&p->seq, s);
    if (atomic_load(&p->sleepers)) {
        pthread_mutex_lock(&p->mu);
        pthread_cond_broadcast(&p->wake);
        pthread_mutex_unlock(&p->mu);
    }
    take_tasks(p, 0);
    long long until = 0;
    for (int i = 0; atomic_load(&p->done) < ntasks; ++i) backoff(i, &until);
    atomic_store(&p->seq, s + 1u); /* even: closed */
    until = 0;
    for (int i = 0; atomic_load(&p->inside); ++i) backoff(i, &until);
    atomic_store(&p->running, 0);
}

void dn_parallel(const dn_net *net, int ntasks, dn_task_fn fn, void *ctx)
{
    dn_pool_run((net->speed & DN_SPEED_THREADS) ? net->pool : NULL, ntasks, fn, ctx);
}

int dn_workers(const dn_net *net) { return net->pool ? dn_pool_threads(net->pool) : 1; }

typedef struct {
    dn_range_fn fn;
    void *ctx;
    size_t n, grain;
} range_job;

static void range_task(void *ctx, int task, int worker)
{
    (void)worker;
    const range_job *j = ctx;
    const size_t b = (size_t)task * j->grain, e = b + j->grain < j->n ? b + j->grain : j->n;
    j->fn(j->ctx, b, e);
}

void dn_parallel_range(const dn_net *net, size_t n, size_t grain, dn_range_fn fn, void *ctx)
{
    if (!n) return;
    if (grain < 1) grain = 1;
    range_job j = {fn, ctx, n, grain};
    dn_parallel(net, dn_ntasks(n, grain), range_task, &j);
}

typedef struct {
    float *dst;
    const float *src;
} copy_job;

static void copy_range(void *ctx, size_t b, size_t e)
{
    const copy_job *j = ctx;
    memcpy(j->dst + b, j->src + b, (e - b) * sizeof(float));
}

static void add_range(void *ctx, size_t b, size_t e)
{
    const copy_job *j = ctx;
    for (size_t i = b; i < e; ++i) j->dst[i] += j->src[i];
}

#define DN_COPY_GRAIN ((size_t)32768)

void dn_parallel_copy(const dn_net *net, float *dst, const float *src, size_t n)
{
    copy_job j = {dst, src};
    if (n < 2 * DN_COPY_GRAIN || !(net->speed & DN_SPEED_THREADS)) memcpy(dst, src, n * sizeof(float));
    else dn_parallel_range(net, n, DN_COPY_GRAIN, copy_range, &j);
}

void dn_parallel_add(const dn_net *net, float *dst, const float *src, size_t n)
{
    copy_job j = {dst, src};
    if (n < 2 * DN_COPY_GRAIN || !(net->speed & DN_SPEED_THREADS)) add_range(&j, 0, n);
    else dn_parallel_range(net, n, DN_COPY_GRAIN, add_range, &j);
}

static void zero_range(void *ctx, size_t b, size_t e)
{
    float *x = ctx;
    memset(x + b, 0, (e - b) * sizeof(float));
}

void dn_parallel_zero(const dn_net *net, float *x, size_t n)
{
    if (n < 2 * DN_COPY_GRAIN || !(net->speed & DN_SPEED_THREADS)) memset(x, 0, n * sizeof(float));
    else dn_parallel_range(net, n, 4 * DN_COPY_GRAIN, zero_range, x);
}

/* ---- OpenBLAS's own threads ---- */
int dn_blas_available(void)
{
#ifdef DN_USE_BLAS
    return 1;
#else
    return 0;
#endif
}

void dn_blas_set_threads(int threads)
{
#ifdef DN_USE_BLAS
    if (DN_BLAS(openblas_get_num_threads)() != threads) DN_BLAS(openblas_set_num_threads)(threads);
#else
    (void)threads;
#endif
}

void dn_net_prepare_threads(const dn_net *net)
{
    /* with the worker threads splitting the GEMMs, OpenBLAS runs single-threaded inside them */
    dn_blas_set_threads((net->speed & DN_SPEED_THREADS) ? 1 : net->threads);
}

/*
 * internal.h - the core's private header: the network, options handed to the
 * builder, errors and logs, worker threads, model files, boxes and image
 * sizes. The layer struct, its ops table and the helpers layers share are in
 * core/layer.h; the numeric kernels in ops/ops.h; where a network runs in
 * core/backend.h. The layering: layers/ -> ops/ -> core/ -> include/ (a file
 * includes the headers of its own floor and below, never above).
 */
#ifndef DN_INTERNAL_H
#define DN_INTERNAL_H

#include "pydarknet.h"
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Hot elementwise loops are compiled for several instruction sets and the
 * best one the CPU has is picked when the library loads (GCC's target_clones),
 * so a portable build still uses AVX2/AVX-512 where present. DN_NO_AVX512
 * (PYDARKNET_CFLAGS="-O3 -DDN_NO_AVX512") leaves every AVX-512 path out of
 * the build, these and the GEMM kernel: an AVX2 machine on any machine. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) && !defined(DN_NO_CLONES)
#ifdef DN_NO_AVX512
#define DN_VECTOR_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define DN_VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#endif
#else
#define DN_VECTOR_CLONES
#endif

#define DN_MAX_KEY 32

typedef struct dn_layer dn_layer;
typedef struct dn_backend dn_backend; /* where the network runs (core/backend.h) */
typedef struct dn_layer_ops dn_layer_ops; /* what a layer type does (core/layer.h) */

/* A growable list of detections; the network keeps one and reuses it. */
typedef struct dn_candidates {
    dn_detection *items;
    int count, capacity;
} dn_candidates;
dn_status dn_candidates_push(dn_candidates *c, dn_detection d);

/* ---- options handed to the builder (already resolved by the caller) ---- */
typedef enum { DN_ATTR_INTS, DN_ATTR_FLOATS, DN_ATTR_STRING } dn_attr_kind;

typedef struct dn_attr {
    char key[DN_MAX_KEY];
    dn_attr_kind kind;
    int count;
    int *ints;
    float *floats;
    char *string;
} dn_attr;

typedef struct dn_attrs {
    dn_attr *items;
    int count, capacity;
} dn_attrs;

/* Readers used by the layers' make functions; they set the error message
 * (naming the layer and key) and return non-OK when a key is missing or of
 * the wrong kind. The dn_opt_* twins read a network's training options. */
dn_status dn_attr_int(const dn_layer *l, const char *key, int *out);
dn_status dn_attr_float(const dn_layer *l, const char *key, float *out);
dn_status dn_attr_string(const dn_layer *l, const char *key, const char **out);
dn_status dn_attr_ints(const dn_layer *l, const char *key, const int **out, int *count);
dn_status dn_attr_floats(const dn_layer *l, const char *key, const float **out, int *count);
int dn_attr_has(const dn_layer *l, const char *key);
void dn_attrs_free(dn_attrs *a);
dn_status dn_opt_int(const dn_net *net, const char *key, int *out);
int dn_opt_has(const dn_net *net, const char *key);
dn_status dn_opt_float(const dn_net *net, const char *key, float *out);
dn_status dn_opt_string(const dn_net *net, const char *key, const char **out);
dn_status dn_opt_ints(const dn_net *net, const char *key, const int **out, int *count);
dn_status dn_opt_floats(const dn_net *net, const char *key, const float **out, int *count);

/* ---- the network ---- */
struct dn_net {
    int batch, c, h, w;
    int nlayers, capacity;
    dn_layer **layers;
    dn_layer *building;          /* the layer between add_layer and end_layer */
    int finalized;
    const float *input;          /* the input of the current forward pass */
    float *input_buf;            /* the network's own input (images set in C) */
    size_t input_buf_size;
    float *workspace;
    size_t workspace_size;
    size_t worker_stride;        /* bytes between two workers' private scratch (dn_scratch) */
    dn_candidates candidates;    /* reused by dn_net_detections */
    /* training */
    int training;                /* deltas, gradients and optimizer state are allocated */
    int train;                   /* the current pass is a training pass */
    float *input_delta;          /* dLoss/d(network input) of the last backward pass */
    const float *truth;          /* truths of the current mini-batch, truth_stride floats per image */
    int truth_stride;
    double loss;                 /* summed by the loss heads during a training forward pass */
    dn_attrs train_opts;         /* the resolved [net] options training reads */
    long long iteration;         /* updates done */
    unsigned long long seen;     /* images trained on */
    unsigned long long images_since_update;
    unsigned long long rng;      /* state of the network's random generator (dropout, random policy) */
    int threads;
    int use_blas;
    unsigned speed;              /* DN_SPEED_* paths in use (dn_net_set_speed) */
    struct dn_pool *pool;        /* threads - 1 helper threads (core/pool.c); NULL for one thread */
    int profiling;               /* accumulate per-layer times (core/profile.c) */
    double *prof_forward, *prof_backward; /* seconds per layer since profiling was switched on */
    long long *prof_calls;
    dn_log_fn log_fn;
    void *log_user;
    const dn_backend *backend;   /* where the passes run: dn_cpu_backend, or CUDA's (core/backend.h) */
    dn_gradient_hook grad_hook;  /* between the last backward pass and the update (dn_net_train_batch) */
    void *grad_hook_user;
    dn_reduce_hook reduce_hook;  /* synchronized batch norm's sums over the processes */
    void *reduce_hook_user;
    /* every parameter gradient in one block, in layer and parameter order (each p->grad points into it; training
     * only): grad_offset[i] is where layer i's gradients start, grad_offset[nlayers] == grad_count */
    float *grad_arena;
    size_t grad_count, *grad_offset;
    dn_bucket_hook bucket_hook;  /* gradients handed over as they become final (core/train.c) */
    void *bucket_hook_user;
    size_t bucket_floats;        /* hand over once this many are final (0: all at once, after the backward) */
    int bucketing;               /* inside the last backward pass of dn_net_train_batch */
    size_t bucket_end;           /* the gradients at and above this offset are handed over */
    struct dn_cuda *cuda;        /* the CUDA backend's device context (core/cuda.cu); NULL on the CPU */
    int tuning_told;             /* its log has heard that layers measure their algorithms (core/tuning.c) */
    char **names;                /* class names from a model file (core/model.c) */
    int nnames;
};

/* ---- errors and logs (core/error.c) ---- */
dn_status dn_fail(dn_status status, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
dn_status dn_layer_fail(const dn_layer *l, dn_status status, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;
void dn_log(const dn_net *net, int level, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

/* ---- measured choices (core/tuning.c) ----
 * A layer whose fastest way depends on the CPU measures its alternatives once
 * and keeps the winner under a key naming everything the timing depends on.
 * dn_tuning_on: 0 when measuring is off (the fixed rules apply);
 * dn_tuning_find: 1 and the kept choice (at most n chars) when the key has one;
 * dn_tuning_keep: keeps a choice (in memory and in the file), with the
 * measured times as text for the file's reader. net: whose log hears of
 * unreadable lines and unwritable files (may be NULL). */
/* a monotonic clock in seconds (core/loop.c) */
double dn_seconds(void);
int dn_tuning_on(const dn_net *net);
int dn_tuning_find(const dn_net *net, const char *key, char *choice, size_t n);
void dn_tuning_keep(const dn_net *net, const char *key, const char *choice, const char *times);
/* changes whenever the settings change (dn_set_tuning): a layer may keep using
 * the choice it found while this stays the same */
unsigned dn_tuning_generation(void);
/* one line to the network's log, before its first measurement */
void dn_tuning_announce(dn_net *net, const char *what);

/* ---- the network's memory (core/network.c) ---- */
/* (Re)allocates activations, deltas (when training) and the workspace. */
dn_status dn_net_allocate(dn_net *net);
/* (Re)allocates the workspace alone for the layers' current needs and the thread count. */
dn_status dn_net_allocate_workspace(dn_net *net);
/* A layer's scratch in the workspace: worker < 0 its shared part (l->workspace
 * bytes), else that worker's private part (l->worker_workspace bytes), 64-byte aligned. */
float *dn_scratch(const dn_net *net, const dn_layer *l, int worker);

/* ---- worker threads (core/pool.c) ----
 * fn(ctx, task, worker) for every task; worker in [0, dn_workers(net)) names
 * the thread (for its scratch). Tasks run in any order and concurrently, so
 * each must write its own part of the output; cut the work into tasks by the
 * shape alone (never by the thread count) so results do not depend on it,
 * unless the cut cannot change a value (how a GEMM's rows and columns are
 * shared out: ops/conv_tiled.c gives many workers more tasks). */
typedef void (*dn_task_fn)(void *ctx, int task, int worker);
struct dn_pool;
dn_status dn_pool_create(int threads, struct dn_pool **out);
void dn_pool_free(struct dn_pool *p);
void dn_pool_run(struct dn_pool *p, int ntasks, dn_task_fn fn, void *ctx);
int dn_pool_threads(const struct dn_pool *p);
/* Sets OpenBLAS's thread count for a pass: 1 when the pool splits the GEMMs. */
void dn_net_prepare_threads(const dn_net *net);
/* Runs the tasks on the network's pool when DN_SPEED_THREADS is on, else serially. */
void dn_parallel(const dn_net *net, int ntasks, dn_task_fn fn, void *ctx);
/* fn(ctx, begin, end) over [0, n) in pieces of `grain` (on the pool, as dn_parallel). */
typedef void (*dn_range_fn)(void *ctx, size_t begin, size_t end);
void dn_parallel_range(const dn_net *net, size_t n, size_t grain, dn_range_fn fn, void *ctx);
/* dst[i] = src[i] and dst[i] += src[i] for n floats, split over the workers when large. */
void dn_parallel_copy(const dn_net *net, float *dst, const float *src, size_t n);
void dn_parallel_add(const dn_net *net, float *dst, const float *src, size_t n);
void dn_parallel_zero(const dn_net *net, float *x, size_t n);
/* Number of worker indices dn_parallel may hand out. */
int dn_workers(const dn_net *net);
/* Splits n items into tasks of `grain` items: task t covers [t*grain, min(n, (t+1)*grain)). */
static inline int dn_ntasks(size_t n, size_t grain) { return (int)((n + grain - 1) / grain); }

/* ---- memory, random numbers, BLAS threads ---- */
/* calloc of n items (at least one), NULL on overflow or failure (core/error.c). */
void *dn_calloc(size_t n, size_t size);
/* Uniform random number in [0, 1) from the network's generator (core/train.c). */
float dn_rand_uniform(dn_net *net);
/* OpenBLAS's own thread count (core/pool.c; nothing without a BLAS). */
void dn_blas_set_threads(int threads);

/* ---- registry (core/registry.c) ---- */
const dn_layer_ops *dn_find_layer_ops(const char *type);

/* ---- box overlap measures (core/box.c) ---- */
typedef struct dn_box {
    float x, y, w, h; /* centre and size */
} dn_box;
typedef enum { DN_IOU_PLAIN, DN_IOU_GIOU, DN_IOU_DIOU, DN_IOU_CIOU } dn_iou_kind;
/* IoU, GIoU, DIoU (rho^2/c^2) or CIoU of a with b; grad (may be NULL) receives
 * d(measure)/d(a.x, a.y, a.w, a.h), exact. */
float dn_box_measure(dn_box a, dn_box b, dn_iou_kind kind, float grad[4]);
/* The class of a truth row (x, y, w, h, class), or -1 when the row is
 * padding or unusable (not finite, empty box, class outside 0..classes-1). */
int dn_truth_class(const float *row, int classes);

/* ---- image resizing as darknet does it (core/image.c) ---- */
void dn_letterbox_dims(int img_w, int img_h, int net_w, int net_h, int *new_w, int *new_h);

#ifdef __cplusplus
}
#endif
#endif /* DN_INTERNAL_H */

/*
 * internal.h - the shared layer struct, the network, and helpers private to
 * the core. Layers see each other only through this header.
 *
 * A layer is a small struct passed by pointer. Its behaviour comes from an
 * ops table (one per cfg section type, listed in registry.c); its private
 * state hangs off `priv`. Trainable tensors are registered once in `params`
 * in darknet's file order (biases, scales, rolling mean, rolling variance,
 * weights), so weights I/O and the optimizer are written once for all layers.
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
 * so a portable build still uses AVX2/AVX-512 where present. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) && !defined(DN_NO_CLONES)
#define DN_VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define DN_VECTOR_CLONES
#endif

#define DN_MAX_PARAMS 8
#define DN_MAX_KEY 32
#define DN_GPU_BUFS 4

typedef struct dn_layer dn_layer;
typedef struct dn_backend dn_backend; /* where the network runs (core/backend.h) */

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
dn_status dn_opt_float(const dn_net *net, const char *key, float *out);
dn_status dn_opt_string(const dn_net *net, const char *key, const char **out);
dn_status dn_opt_ints(const dn_net *net, const char *key, const int **out, int *count);
dn_status dn_opt_floats(const dn_net *net, const char *key, const float **out, int *count);

/* ---- activations (ops/activations.c) ---- */
typedef enum {
    DN_ACT_LINEAR, DN_ACT_LOGISTIC, DN_ACT_LOGGY, DN_ACT_RELU, DN_ACT_RELU6, DN_ACT_ELU, DN_ACT_SELU,
    DN_ACT_GELU, DN_ACT_RELIE, DN_ACT_RAMP, DN_ACT_LEAKY, DN_ACT_REVLEAKY, DN_ACT_TANH, DN_ACT_PLSE,
    DN_ACT_STAIR, DN_ACT_HARDTAN, DN_ACT_LHTAN, DN_ACT_SWISH, DN_ACT_MISH, DN_ACT_HARD_MISH,
    DN_ACT_NORM_CHAN, DN_ACT_NORM_CHAN_SOFTMAX, DN_ACT_NORM_CHAN_SOFTMAX_MAXVAL
} dn_activation;

dn_status dn_activation_from_name(const char *name, dn_activation *out);
/* Applies `a` in place to x laid out as [batch][channels][spatial]. The
 * normalize_channels kinds work across channels, the others elementwise. */
void dn_activate(float *x, int batch, int channels, int spatial, dn_activation a);
/* delta *= f'(.) in place, given the activated output y = f(x) (and, for the
 * kinds whose derivative needs it, the input x; may be NULL otherwise). */
void dn_activation_backward(const float *y, const float *x, float *delta, int batch, int channels, int spatial,
                            dn_activation a);
/* x[i] = 1 / (1 + e^-x[i]) with a vectorized exponential (about 2 ulp from expf). */
void dn_logistic_vec(float *x, size_t n);
/* x[i] = f(a * x[i] + b) for n values (the fused epilogue of a convolution tile;
 * logistic through dn_logistic_vec's exponential). */
void dn_affine_activate(float *x, size_t n, float a, float b, dn_activation act);
/* 1 when the derivative needs the pre-activation input x. */
int dn_activation_needs_input(dn_activation a);
/* The activation that ends a layer whose output is act(pre-activation)
 * (shortcut, sam, scale_channels). Forward: in a training pass, keeps the
 * pre-activation output in *x (grown as needed) when f' needs it, then
 * applies act to the layer's output. Backward: *out = dLoss/d(pre-activation),
 * the layer's delta itself for a linear act, else a copy in *g times f'(.). */
dn_status dn_activate_output(dn_layer *l, const dn_net *net, dn_activation act, float **x, size_t *x_cap);
dn_status dn_activation_delta(dn_layer *l, dn_activation act, const float *x, size_t x_cap, float **g,
                              size_t *g_cap, const float **out);

/* ---- parameters ---- */
enum { DN_PARAM_TRAIN = 1, DN_PARAM_DECAY = 2 };

typedef struct dn_param {
    const char *name;
    float *data;
    float *grad;     /* dLoss/d(data) summed over the images since the last update (training only) */
    float *m, *v;    /* optimizer state: SGD momentum buffer, or Adam's first and second moments */
    size_t count;
    int flags;       /* DN_PARAM_TRAIN: updated by the optimizer (not rolling statistics);
                        DN_PARAM_DECAY: weight decay applies (weights, not biases or scales) */
    /* with a CUDA device (core/cuda.h): the device copies, which then hold
     * the current values; host_dirty: the host copy was handed out (it may
     * have been written) and goes to the device before the next device pass */
    float *data_gpu, *grad_gpu, *m_gpu, *v_gpu;
    int host_dirty;
} dn_param;

/* ---- darknet's per-layer training switches ----
 * The cfg keys every layer section takes, resolved for the whole network when
 * training is enabled (core/train.c), as darknet's parser and its GPU training
 * loop use them:
 *   stopbackward=1: the backward pass stops before this layer (neither it nor
 *     any earlier layer runs backward) and every earlier layer is frozen;
 *     stopbackward=N > 1: the same stop while fewer than N iterations are done,
 *     the earlier layers not frozen (their update, without gradients, still
 *     applies decay and momentum);
 *   onlyforward=1: the layer's backward is skipped (nothing passes through it);
 *   dont_update=N: no update of the layer's parameters in iterations 1..N;
 *   burnin_update=K: none while K * burn_in > the iteration;
 *   train_only_bn=1: this layer and every earlier one compute no parameter
 *     gradients and are never updated; batch norm keeps its training-mode
 *     statistics, so only the rolling mean and variance move;
 *   clip=C (convolutional): weights clamped to [-C, C] after each update.
 * A skipped update keeps the layer's gradients, which go into its next update
 * (darknet's update buffer holds them until then). */
typedef struct dn_switches {
    int stopbackward, onlyforward, dont_update, burnin_update;
    int frozen;      /* before the last stopbackward=1 layer: no backward, no gradients, no update */
    int infer;       /* a frozen convolutional layer: its forward runs as in inference in training passes */
    int only_bn;     /* train_only_bn here or in a later layer: no gradients, no update */
    float clip;      /* convolutional weights' bound after an update (0: none) */
} dn_switches;

/* ---- layers ---- */
typedef struct dn_layer_ops {
    const char *type;                               /* canonical cfg section name */
    dn_status (*make)(dn_layer *l, dn_net *net);     /* read options, register and allocate params */
    dn_status (*setup)(dn_layer *l, dn_net *net);    /* output shape and workspace from input shape */
    dn_status (*forward)(dn_layer *l, dn_net *net);  /* net->train: training-mode pass (batch statistics, dropout, losses) */
    /* Given l->delta = dLoss/d(l->output), adds dLoss/d(param) into each
     * param's grad and adds dLoss/d(input) into the delta of every layer the
     * input came from (dn_layer_input_delta; NULL: nothing to propagate).
     * Loss heads ([yolo], [region], [cost]) compute their loss in a training
     * forward pass and keep in l->delta the gradient with respect to their
     * input, which their backward passes on. NULL: backward not implemented. */
    dn_status (*backward)(dn_layer *l, dn_net *net);
    void (*destroy)(dn_layer *l);                    /* NULL: priv is freed by the network, as are params */
    /* detection heads only: boxes of batch entry b with objectness above
     * thresh, coordinates relative to the network input (0..1) */
    dn_status (*detections)(const dn_layer *l, const dn_net *net, int b, float thresh, struct dn_candidates *out);
    /* The same passes on the CUDA device (layer.cu beside layer.c, set with
     * DN_GPU_OPS from core/cuda.h); NULL: the network runs the CPU pass on
     * host copies of what the layer reads and writes (core/cuda.cu). */
    dn_status (*forward_gpu)(dn_layer *l, dn_net *net);
    dn_status (*backward_gpu)(dn_layer *l, dn_net *net);
} dn_layer_ops;

struct dn_layer {
    const dn_layer_ops *ops;
    int index;
    dn_attrs attrs;
    int batch;
    int c, h, w;                 /* input shape (of the previous layer, or the network input) */
    int out_c, out_h, out_w;     /* output shape, set by setup */
    size_t inputs, outputs;      /* c*h*w and out_c*out_h*out_w */
    float *output;               /* batch*outputs floats, owned by the network */
    float *delta;                /* batch*outputs: dLoss/d(output) (training only) */
    int is_loss;                 /* computes a loss in training passes */
    size_t workspace;            /* bytes of the shared workspace this layer needs */
    size_t worker_workspace;     /* and bytes of private scratch per worker thread (dn_scratch) */
    int is_output;               /* a detection head or the last layer */
    dn_param params[DN_MAX_PARAMS];
    int nparams;
    void *priv;
    /* with a CUDA device: output and delta on the device, the layer's device
     * scratch kept from a training forward pass to its backward pass (slots
     * the layer's .cu assigns), all freed by the network; host_stale: the
     * host output is older than the device's */
    float *output_gpu, *delta_gpu;
    float *gpu_buf[DN_GPU_BUFS];
    size_t gpu_cap[DN_GPU_BUFS];
    int host_stale;
    dn_switches sw;
};

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
    struct dn_cuda *cuda;        /* the CUDA backend's device context (core/cuda.cu); NULL on the CPU */
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

/* ---- model files (core/model.c) ---- */
void dn_net_free_names(dn_net *net);

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
 * shape alone (never by the thread count) so results do not depend on it. */
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

/* ---- training passes (core/train.c) ---- */
/* The backward pass at layer l (the switches above): 1 runs it, 0 skips it,
 * -1 stops the pass before it. */
int dn_backward_step(const dn_net *net, const dn_layer *l);

/* ---- registry (core/registry.c) ---- */
const dn_layer_ops *dn_find_layer_ops(const char *type);

/* ---- helpers shared by layers (core/network.c) ---- */
const float *dn_layer_input(const dn_net *net, const dn_layer *l);
/* Where dLoss/d(input) of layer l goes: the previous layer's delta, or the
 * network's input delta; NULL when the pass needs none. */
float *dn_layer_input_delta(const dn_net *net, const dn_layer *l);
/* Uniform random number in [0, 1) from the network's generator. */
float dn_rand_uniform(dn_net *net);
/* Registers a parameter tensor of `count` floats, zero-filled, trained by
 * the optimizer (no weight decay); the _flags form sets DN_PARAM_* itself. */
dn_status dn_layer_add_param(dn_layer *l, const char *name, size_t count, float **data);
dn_status dn_layer_add_param_flags(dn_layer *l, const char *name, size_t count, int flags, float **data);
/* The parameter registered under `name`, or NULL. */
dn_param *dn_layer_find_param(dn_layer *l, const char *name);
/* Reads the `from`/`layers` index list and checks each is an earlier layer. */
dn_status dn_layer_sources(const dn_layer *l, const dn_net *net, const char *key, const int **idx, int *count);
void *dn_calloc(size_t n, size_t size);
/* Grows *buf (capacity *cap floats) to hold n floats; for scratch kept
 * between a training forward pass and its backward pass. */
dn_status dn_ensure_floats(float **buf, size_t *cap, size_t n);
/* Allocates the layer's zeroed private state (freed by the network unless
 * the ops table has a destroy hook); NULL with the error set on failure. */
void *dn_layer_priv(dn_layer *l, size_t size);
/* Reads `from` naming exactly one earlier layer and the `activation`. */
dn_status dn_layer_from_and_activation(dn_layer *l, const dn_net *net, int *from, dn_activation *act);
/* Emits the detections of one box for every class whose probability
 * objectness * class_prob[k*stride] exceeds thresh. */
dn_status dn_push_box_classes(dn_candidates *out, dn_detection box, const float *class_prob, size_t stride,
                              int classes, float thresh);
/* Shared by the shape-preserving layers: output shape = input shape; and a
 * forward pass that copies the input. */
dn_status dn_setup_same_shape(dn_layer *l, dn_net *net);
dn_status dn_forward_copy(dn_layer *l, dn_net *net);

/* ---- numeric kernels (ops/) ---- */
/* C[M,N] = alpha * op(A) * op(B) + beta * C, row-major. */
void dn_gemm(const dn_net *net, int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A, int lda,
             const float *B, int ldb, float beta, float *C, int ldc);
/* The same as one call in the calling thread (for use inside pool tasks). */
void dn_gemm_serial(const dn_net *net, int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A,
                    int lda, const float *B, int ldb, float beta, float *C, int ldc);
/* Tile sizes dn_gemm uses to split C over the workers (from the shape alone). */
void dn_gemm_plan(int M, int N, int K, int *mt, int *nt);
void dn_gemm_portable(int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A, int lda,
                      const float *B, int ldb, float beta, float *C, int ldc);
void dn_blas_set_threads(int threads);
void dn_im2col(const float *im, int channels, int height, int width, int ksize_h, int ksize_w, int pad_h, int pad_w,
               int stride_h, int stride_w, int dilation_h, int dilation_w, int out_h, int out_w, float *col);
void dn_im2col_range(const float *im, int channels, int height, int width, int kh, int kw, int pad_h, int pad_w,
                     int stride_h, int stride_w, int dil_h, int dil_w, int out_h, int out_w, int n0, int n1, float *col);
void dn_im2col_row(const float *im, int height, int width, int ky, int kx, int pad_h, int pad_w, int stride_h,
                   int stride_w, int dil_h, int dil_w, int out_w, int n0, int n1, float *dst);
/* The same row written straight into the packed GEMM's B panels (see dn_pack_b_row), padded with zeros. */
void dn_im2col_row_panels(const float *im, int height, int width, int ky, int kx, int pad_h, int pad_w, int stride_h,
                          int stride_w, int dil_h, int dil_w, int out_w, int n0, int n1, int kc, int kk, float *bp);
void dn_add_bias(float *out, const float *bias, int batch, int channels, int spatial);
void dn_scale_bias(float *out, const float *scale, int batch, int channels, int spatial);
void dn_normalize(float *x, const float *mean, const float *variance, int batch, int channels, int spatial);
/* Training-mode batch normalization, darknet's: per channel over its n = batch*spatial
 * values, mean and unbiased variance (1/(n-1)); x normalized in place with .00001
 * epsilon, copied to x_norm; rolling = keep*rolling + share*batch statistic, darknet's
 * CPU constants: DN_BN_ROLLING (.9, .1) in convolutional and [batchnorm] layers,
 * DN_BN_ROLLING_CONNECTED (.95, .05) in forward_connected_layer (its GPU path uses
 * .99/.01). Needs n >= 2. */
#define DN_BN_ROLLING .9f, .1f
#define DN_BN_ROLLING_CONNECTED .95f, .05f
void dn_batchnorm_forward_train(float *x, int batch, int channels, int spatial, float *mean, float *variance,
                                float *x_norm, float *rolling_mean, float *rolling_variance, float keep, float share);
/* Backward of y = scale*x_norm (+ bias): scale_grad[c] += sum delta*x_norm (unless NULL),
 * then delta becomes dLoss/dx in place (exact derivative through mean and unbiased variance). */
void dn_batchnorm_backward(float *delta, const float *x_norm, const float *variance, const float *scales,
                           float *scale_grad, int batch, int channels, int spatial);
/* Channel c alone of the functions around (the same arithmetic, for loops
 * split over channels on the worker threads); bias/scale may be NULL. */
void dn_batchnorm_forward_train_channel(float *x, int batch, int channels, int spatial, int c, float *mean,
                                        float *variance, float *x_norm, float *rolling_mean, float *rolling_variance,
                                        float keep, float share);
void dn_normalize_channel(float *x, const float *mean, const float *variance, int batch, int channels, int spatial,
                          int c);
void dn_scale_add_bias_channel(float *x, const float *scale, const float *bias, int batch, int channels, int spatial,
                               int c);
void dn_backward_bias_channel(float *grad, const float *delta, int batch, int channels, int spatial, int c);
void dn_batchnorm_backward_channel(float *delta, const float *x_norm, const float *variance, const float *scales,
                                   float *scale_grad, int batch, int channels, int spatial, int c);
/* grad[c] += sum over batch and spatial of delta (the bias gradient). */
void dn_backward_bias(float *grad, const float *delta, int batch, int channels, int spatial);
void dn_col2im(const float *col, int channels, int height, int width, int ksize_h, int ksize_w, int pad_h, int pad_w,
               int stride_h, int stride_w, int dilation_h, int dilation_w, int out_h, int out_w, float *im);
float dn_logistic(float x);
void dn_softmax(const float *in, int n, float temp, int stride, float *out);

/* ---- the packed GEMM kernel (ops/gemm_packed.c) ---- */
#define DN_MR 8    /* rows of a micro-tile (A panel width) */
#define DN_NR 32   /* columns of a micro-tile (B panel width) */
#define DN_KC 128  /* K is cut into blocks of this many values */
typedef struct dn_epilogue {
    const float *scale, *bias; /* per row of C (NULL: 1 and 0) */
    dn_activation act;
} dn_epilogue;
/* 1 when the CPU runs the AVX-512 kernel (checked at run time). */
int dn_packed_gemm_available(void);
/* Panels: ap [kc][DN_MR] from mr rows of A (A[i][k] at a[i*lda+k], or a[k*lda+i]
 * when trans); bp [panel][kc][DN_NR] from n columns of B (B[k][j] at
 * b[k*ldb+j], or b[j*ldb+k] when trans); dn_pack_b_row packs one k (the kk-th
 * of the block) from n contiguous values. Padding is zero. bp 64-byte aligned. */
void dn_pack_a(const float *a, int trans, int lda, int mr, int kc, float *ap);
void dn_pack_b(const float *b, int trans, int ldb, int kc, int n, float *bp);
void dn_pack_b_row(const float *row, int n, int kc, int kk, float *bp);
/* c[mr x nr] (= or +=) ap * bp over kc; with e, then c = act(scale*c + bias) per row (rows row0...). */
void dn_kernel(int kc, const float *ap, const float *bp, float *c, size_t ldc, int mr, int nr, int accumulate,
               const dn_epilogue *e, int row0);
/* The same reading A in place: row i at a + i*lda (kc <= DN_KC). */
void dn_kernel_rows(int kc, const float *a, size_t lda, const float *bp, float *c, size_t ldc, int mr, int nr,
                    int accumulate, const dn_epilogue *e, int row0);
/* Prefetches for writing (prefetchw) the lines of `rows` rows of a micro-tile
 * (DN_NR floats each, row i at c + i*ldc) that a kernel call will store next;
 * nothing on CPUs without the kernel. */
void dn_prefetch_tile_for_write(const float *c, size_t ldc, int rows);
/* B panel [n][DN_NR] from DN_NR rows of n values, row i at rows + i*ld: bp[j*DN_NR + i] = rows[i*ld + j]
 * (bp 64-byte aligned). */
void dn_transpose_panel(const float *rows, size_t ld, int n, float *bp);
/* out[j*ld_out + i] = in[i*ld_in + j] for a 16 x 16 block. */
void dn_transpose16(const float *in, size_t ld_in, float *out, size_t ld_out);
/* C = op(A) op(B) (+ C) on the kernel, tiles over the workers; scratch per
 * worker: dn_packed_gemm_scratch(nt) bytes of layer l's worker workspace. */
void dn_packed_gemm_plan(int M, int N, int *mt, int *nt);
size_t dn_packed_gemm_scratch(int nt);
void dn_packed_gemm(const dn_net *net, const dn_layer *l, int ta, int tb, int M, int N, int K, const float *A, int lda,
                    const float *B, int ldb, int accumulate, float *C, int ldc);

/* ---- convolution forward as tiles over the worker threads (ops/conv_tiled.c) ---- */
typedef struct dn_conv_desc {
    int batch, c, h, w, out_h, out_w;      /* input and output per image */
    int filters, groups, size, stride_x, stride_y, pad, dilation; /* pad: pixels before the image (padding*dilation) */
    const float *weights;                  /* [filters][c/groups][size][size] */
} dn_conv_desc;
/* Scratch the tiled forward needs: shared bytes and bytes per worker. */
void dn_conv_tiled_workspace(const dn_conv_desc *d, size_t *shared, size_t *per_worker);
/* output = W * im2col(input) per image and group; then, when scale and bias are
 * given (per filter), output = act(scale * output + bias) tile by tile. */
void dn_conv_tiled_forward(const dn_net *net, const dn_layer *l, const dn_conv_desc *d, const float *input,
                           float *output, const float *scale, const float *bias, dn_activation act);

/* ---- Winograd F(4x4, 3x3) for 3x3 stride-1 convolutions in inference (ops/winograd.c) ---- */
/* 1 when the shape suits it (3x3, stride 1, no dilation or groups, enough tiles) and the kernel runs here. */
int dn_winograd_applies(const dn_conv_desc *d);
void dn_winograd_workspace(const dn_conv_desc *d, size_t *shared, size_t *per_worker);
/* output = act(scale * conv(input) + bias) (scale, bias per filter; NULL: 1 and 0) */
void dn_winograd_forward(const dn_net *net, const dn_layer *l, const dn_conv_desc *d, const float *input,
                         float *output, const float *scale, const float *bias, dn_activation act);

/* ---- one channel's batch norm, bias and activation (ops/bn_fused.c) ---- */
typedef struct dn_bn_channel {
    int batch, channels, spatial;
    int train;            /* batch statistics (and x_norm, mean, variance, rolling update) */
    int batch_normalize;  /* else bias only */
    int keep_x;           /* keep the pre-activation values in `pre` (forward) / they are there (backward) */
    int elementwise;      /* the activation is applied per channel (else the caller does it) */
    dn_activation activation;
    float *x;             /* [batch][channels][spatial]: forward in place; backward: the output y */
    float *pre, *x_norm, *mean, *variance, *rolling_mean, *rolling_variance;
    const float *scales, *biases;
} dn_bn_channel;
/* x = act(scale * (x - mean) / sqrt(var + .00001) + bias) for channel c (statistics
 * of the batch in training, rolling otherwise; bias alone without batch norm). */
void dn_bn_forward_channel(const dn_bn_channel *p, int c);
/* delta (dLoss/dy in, dLoss/dz out) of channel c: activation, bias and scale
 * gradients (either may be NULL), batch norm through the batch statistics. */
void dn_bn_backward_channel(const dn_bn_channel *p, int c, float *delta, float *bias_grad, float *scale_grad);
/* an elementwise activation on n values */
void dn_activate_slice(float *x, size_t n, dn_activation a);

/* ---- a convolution's gradients on the packed kernel (ops/conv_backward.c) ---- */
void dn_conv_backward_workspace(const dn_conv_desc *d, size_t *shared, size_t *per_worker);
/* wgrad[filters][c/groups*size*size] += sum over the batch of delta * im2col(input)^T */
void dn_conv_weight_grad(const dn_net *net, const dn_layer *l, const dn_conv_desc *d, const float *input,
                         const float *delta, float *wgrad);
/* in_delta += col2im(W^T * delta) */
void dn_conv_input_grad(const dn_net *net, const dn_layer *l, const dn_conv_desc *d, const float *delta,
                        float *in_delta);
/* The adjoint of dn_im2col_range: adds col ([channels*kh*kw][n1-n0]) back onto im. */
void dn_col2im_range(const float *col, int channels, int height, int width, int kh, int kw, int pad_h, int pad_w,
                     int stride_h, int stride_w, int dil_h, int dil_w, int out_w, int n0, int n1, float *im);

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

/* ---- pooling shared by maxpool and local_avgpool (ops/pool.c) ---- */
typedef enum { DN_POOL_MAX, DN_POOL_AVG } dn_pool_kind;
/* Reads a pooling window's size, stride_x, stride_y and padding options. */
dn_status dn_pool_window(const dn_layer *l, int *size, int *stride_x, int *stride_y, int *padding);
void dn_pool2d(const float *in, int batch, int channels, int h, int w, int size, int stride_y, int stride_x,
               int padding, int out_h, int out_w, dn_pool_kind kind, float *out);

/* size 2, stride 2, windows inside the image (-padding/2 == 0, 2*out_h <= h, 2*out_w <= w) */
void dn_maxpool2x2(const float *in, int planes, int h, int w, int out_h, int out_w, float *out);
/* dn_pool2d's max, row pass then column pass (tmp: h * out_w floats) */
void dn_maxpool_separable(const float *in, int planes, int h, int w, int size, int stride_y, int stride_x,
                          int padding, int out_h, int out_w, float *out, float *tmp);

/* ---- image resizing as darknet does it (core/image.c) ---- */
void dn_letterbox_dims(int img_w, int img_h, int net_w, int net_h, int *new_w, int *new_h);

#ifdef __cplusplus
}
#endif
#endif /* DN_INTERNAL_H */

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

#define DN_MAX_PARAMS 8
#define DN_MAX_KEY 32

typedef struct dn_layer dn_layer;

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
/* 1 when the derivative needs the pre-activation input x. */
int dn_activation_needs_input(dn_activation a);

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
} dn_param;

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
    int is_output;               /* a detection head or the last layer */
    dn_param params[DN_MAX_PARAMS];
    int nparams;
    void *priv;
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
    dn_log_fn log_fn;
    void *log_user;
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

/* (Re)allocates activations, deltas (when training) and the workspace. */
dn_status dn_net_allocate(dn_net *net);

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
void dn_gemm_portable(int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A, int lda,
                      const float *B, int ldb, float beta, float *C, int ldc);
void dn_blas_set_threads(int threads);
void dn_im2col(const float *im, int channels, int height, int width, int ksize_h, int ksize_w, int pad_h, int pad_w,
               int stride_h, int stride_w, int dilation_h, int dilation_w, int out_h, int out_w, float *col);
void dn_add_bias(float *out, const float *bias, int batch, int channels, int spatial);
void dn_scale_bias(float *out, const float *scale, int batch, int channels, int spatial);
void dn_normalize(float *x, const float *mean, const float *variance, int batch, int channels, int spatial);
/* Training-mode batch normalization, darknet's: per channel over its n = batch*spatial
 * values, mean and unbiased variance (1/(n-1)); x normalized in place with .00001
 * epsilon, copied to x_norm; rolling = .9*rolling + .1*batch statistic (darknet's
 * CPU constants; its GPU path uses .99/.01). Needs n >= 2. */
void dn_batchnorm_forward_train(float *x, int batch, int channels, int spatial, float *mean, float *variance,
                                float *x_norm, float *rolling_mean, float *rolling_variance);
/* Backward of y = scale*x_norm (+ bias): scale_grad[c] += sum delta*x_norm (unless NULL),
 * then delta becomes dLoss/dx in place (exact derivative through mean and unbiased variance). */
void dn_batchnorm_backward(float *delta, const float *x_norm, const float *variance, const float *scales,
                           float *scale_grad, int batch, int channels, int spatial);
/* grad[c] += sum over batch and spatial of delta (the bias gradient). */
void dn_backward_bias(float *grad, const float *delta, int batch, int channels, int spatial);
void dn_col2im(const float *col, int channels, int height, int width, int ksize_h, int ksize_w, int pad_h, int pad_w,
               int stride_h, int stride_w, int dilation_h, int dilation_w, int out_h, int out_w, float *im);
float dn_logistic(float x);
void dn_softmax(const float *in, int n, float temp, int stride, float *out);

/* ---- box overlap measures (core/box.c) ---- */
typedef struct dn_box {
    float x, y, w, h; /* centre and size */
} dn_box;
typedef enum { DN_IOU_PLAIN, DN_IOU_GIOU, DN_IOU_DIOU, DN_IOU_CIOU } dn_iou_kind;
/* IoU, GIoU, DIoU (rho^2/c^2) or CIoU of a with b; grad (may be NULL) receives
 * d(measure)/d(a.x, a.y, a.w, a.h), exact. */
float dn_box_measure(dn_box a, dn_box b, dn_iou_kind kind, float grad[4]);

/* ---- pooling shared by maxpool and local_avgpool (ops/pool.c) ---- */
typedef enum { DN_POOL_MAX, DN_POOL_AVG } dn_pool_kind;
/* Reads a pooling window's size, stride_x, stride_y and padding options. */
dn_status dn_pool_window(const dn_layer *l, int *size, int *stride_x, int *stride_y, int *padding);
void dn_pool2d(const float *in, int batch, int channels, int h, int w, int size, int stride_y, int stride_x,
               int padding, int out_h, int out_w, dn_pool_kind kind, float *out);

/* ---- image resizing as darknet does it (core/image.c) ---- */
void dn_letterbox_dims(int img_w, int img_h, int net_w, int net_h, int *new_w, int *new_h);

#endif /* DN_INTERNAL_H */

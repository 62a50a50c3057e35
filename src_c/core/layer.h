/*
 * layer.h - the shared layer struct and what layers share.
 *
 * A layer is a small struct passed by pointer. Its behaviour comes from an
 * ops table (one per cfg section type, listed in core/layer_list.h); its
 * private state hangs off `priv`. Trainable tensors are registered once in
 * `params` in darknet's file order (biases, scales, rolling mean, rolling
 * variance, weights), so weights I/O and the optimizer are written once for
 * all layers. Layers see each other only through this header.
 */
#ifndef DN_LAYER_H
#define DN_LAYER_H

#include "internal.h"

#ifdef __cplusplus
extern "C" {
#endif

#define DN_MAX_PARAMS 8
#define DN_MAX_OWNED 8
#define DN_GPU_BUFS 4

/* ---- activations: the kinds, by the cfg's names (core/layer.c; the kernels are ops/ops.h's) ---- */
typedef enum {
    DN_ACT_LINEAR, DN_ACT_LOGISTIC, DN_ACT_LOGGY, DN_ACT_RELU, DN_ACT_RELU6, DN_ACT_ELU, DN_ACT_SELU,
    DN_ACT_GELU, DN_ACT_RELIE, DN_ACT_RAMP, DN_ACT_LEAKY, DN_ACT_REVLEAKY, DN_ACT_TANH, DN_ACT_PLSE,
    DN_ACT_STAIR, DN_ACT_HARDTAN, DN_ACT_LHTAN, DN_ACT_SWISH, DN_ACT_MISH, DN_ACT_HARD_MISH,
    DN_ACT_NORM_CHAN, DN_ACT_NORM_CHAN_SOFTMAX, DN_ACT_NORM_CHAN_SOFTMAX_MAXVAL
} dn_activation;

dn_status dn_activation_from_name(const char *name, dn_activation *out);
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
struct dn_layer_ops {
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
    void (*destroy)(dn_layer *l);                    /* NULL: priv, its owned buffers and params are freed by the network */
    /* detection heads only: boxes of batch entry b with objectness above
     * thresh, coordinates relative to the network input (0..1) */
    dn_status (*detections)(const dn_layer *l, const dn_net *net, int b, float thresh, struct dn_candidates *out);
    /* The same passes on the CUDA device (layer.cu beside layer.c, set with
     * DN_GPU_OPS from core/cuda.h); NULL: the network runs the CPU pass on
     * host copies of what the layer reads and writes (core/cuda.cu). */
    dn_status (*forward_gpu)(dn_layer *l, dn_net *net);
    dn_status (*backward_gpu)(dn_layer *l, dn_net *net);
};

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
    int has_loss;                /* the last training pass computed it (it had truths): l->delta is dLoss/d(input) */
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
    const char *algorithm;       /* where a layer has several ways: the one its last inference pass took (static) */
    dn_switches sw;
    void *owned[DN_MAX_OWNED];   /* addresses of the priv state's buffer pointers, freed with the layer */
    int nowned;
};

/* ---- helpers shared by layers (core/layer.c) ---- */
const float *dn_layer_input(const dn_net *net, const dn_layer *l);
/* Where dLoss/d(input) of layer l goes: the previous layer's delta, or the
 * network's input delta; NULL when the pass needs none. */
float *dn_layer_input_delta(const dn_net *net, const dn_layer *l);
/* Registers a parameter tensor of `count` floats, zero-filled, trained by
 * the optimizer (no weight decay); the _flags form sets DN_PARAM_* itself. */
dn_status dn_layer_add_param(dn_layer *l, const char *name, size_t count, float **data);
dn_status dn_layer_add_param_flags(dn_layer *l, const char *name, size_t count, int flags, float **data);
/* The parameter registered under `name`, or NULL. */
dn_param *dn_layer_find_param(dn_layer *l, const char *name);
/* Reads the `from`/`layers` index list and checks each is an earlier layer. */
dn_status dn_layer_sources(const dn_layer *l, const dn_net *net, const char *key, const int **idx, int *count);
/* Grows *buf (capacity *cap floats) to hold n floats; for scratch kept
 * between a training forward pass and its backward pass. */
dn_status dn_ensure_floats(float **buf, size_t *cap, size_t n);
/* The training pass of a loss head ([yolo], [region]): when the pass has
 * truths, loss(l, net) adds the loss and leaves dLoss/d(input) in l->delta
 * (l->has_loss); without truths there is no loss. And its backward when it
 * had one: l->delta added into d. */
/* 1 when this training pass of l takes its batch statistics over every
 * process (the layer's sync_bn, or [net] sync_bn where the layer leaves it
 * at -1; only with the network's reduce hook, dn_net_set_reduce_hook). */
int dn_layer_sync_bn(const dn_net *net, const dn_layer *l);
dn_status dn_head_train_loss(dn_layer *l, dn_net *net, dn_status (*loss)(dn_layer *l, dn_net *net));
void dn_head_pass_delta(const dn_layer *l, float *d);
/* Registers buffers of the layer's private state, given as the addresses of
 * their pointers (&s->x, ...; NULL-terminated): whatever they point to when
 * the layer is freed is freed with it, so a layer needs no destroy hook for
 * its scratch. Fails (naming the layer) past DN_MAX_OWNED buffers. */
dn_status dn_layer_owns(dn_layer *l, ...);
void dn_layer_free_owned(dn_layer *l);
/* Allocates the layer's zeroed private state (freed by the network unless
 * the ops table has a destroy hook); NULL with the error set on failure. */
void *dn_layer_priv(dn_layer *l, size_t size);
/* Reads `from` naming exactly one earlier layer and the `activation`. */
dn_status dn_layer_from_and_activation(dn_layer *l, const dn_net *net, int *from, dn_activation *act);
/* Emits the detections of one box for every class whose probability
 * objectness * class_prob[k*stride] exceeds thresh (core/detections.c). */
dn_status dn_push_box_classes(dn_candidates *out, dn_detection box, const float *class_prob, size_t stride,
                              int classes, float thresh);
/* Shared by the shape-preserving layers: output shape = input shape; and a
 * forward pass that copies the input. */
dn_status dn_setup_same_shape(dn_layer *l, dn_net *net);
dn_status dn_forward_copy(dn_layer *l, dn_net *net);

/* How a training pass moves batch norm's rolling statistics, darknet's CPU
 * constants (keep, share: rolling = keep*rolling + share*batch statistic):
 * convolutional and [batchnorm] layers, and forward_connected_layer (darknet's
 * GPU path uses .99/.01). */
#define DN_BN_ROLLING .9f, .1f
#define DN_BN_ROLLING_CONNECTED .95f, .05f

#ifdef __cplusplus
}
#endif
#endif /* DN_LAYER_H */

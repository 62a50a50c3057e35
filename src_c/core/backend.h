/* backend.h - where a network runs: the private backend interface.
 *
 * The layer loop (core/loop.c) runs every pass of every network the same
 * way: it sets the inference/training flags per layer, times each layer when
 * profiling is on, names the layer in a failure and checks each layer's
 * completion; what a pass does with memory is the backend's. A network
 * holds one backend (net->backend): the CPU's (core/cpu.c), whose buffers
 * are the host buffers themselves, or the CUDA one (core/cuda.cu), which
 * keeps device copies of every output, delta and parameter and brings host
 * copies up to date only where the public API hands them out.
 *
 * Calls (each returns a status; the CPU's are mostly no-ops):
 *   allocate        after the host buffers were (re)allocated for a size
 *   begin_forward   before a pass: inputs and anything the caller wrote go to the
 *                   backend; in a training pass (net->train) the deltas are zeroed
 *   run_layers      runs a forward pass's layers: calls layers(net), the loop over them, or (CUDA, inference
 *                   passes with graphs on) replays a graph of what that loop launched
 *   layer_forward   one layer's forward pass (layer_backward: its backward)
 *   begin_backward  before a backward pass
 *   layer_done      after a layer's pass: its completion checked ("forward"/"backward")
 *   pull_output     the host copy of a layer's output brought up to date
 *   pull_delta      of a layer's delta (layer == nlayers: the input delta); the caller may
 *                   write it, and it goes back before the next pass
 *   pull_param      of a parameter with its gradient and optimizer state (the same)
 *   pull_gradients  of the gradient block (net->grad_arena) alone, for the gradient hooks (the same)
 *   zero_grads      a layer's parameter gradients zeroed (wherever the current copy is)
 *   begin_update    before an update's per-parameter steps: what the caller wrote goes to the backend;
 *                   *finite = 0 when the update must be skipped (CUDA in float16: a gradient is not
 *                   finite; the loss scale moves); the CPU's always 1
 *   update          one parameter's optimizer step (core/train.c's formulas)
 *   synchronize     wait until everything launched has finished (profiling, hand-outs)
 * A distributed gradient all-reduce goes between the last backward pass and
 * the update: the gradient hook of dn_net_train_batch (core/train.c). */
#ifndef DN_BACKEND_H
#define DN_BACKEND_H

#include "hd.h"
#include "layer.h"

#include <math.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The optimizer step of train.c for one parameter (see there for the formulas). */
typedef struct dn_update_args {
    int adam;
    float rate, decay, batch, momentum, B1, B2, eps, b1t, b2t;
    float clip;   /* then w clamped to [-clip, clip] (0: not) */
} dn_update_args;

/* The step of one value: SGD with momentum (m: darknet's update buffer, the
 * negative gradient direction) or Adam; decay only where the parameter takes
 * it (a->decay 0 otherwise); then the clip. The CPU backend's loop and the
 * device kernel both run it. */
static inline DN_HD void dn_update_value(float *w, float g, float *m, float *v, const dn_update_args *a)
{
    if (a->adam) {
        const float d = -g - a->decay * *w;
        *m = a->B1 * *m + (1.f - a->B1) * d;
        *v = a->B2 * *v + (1.f - a->B2) * d * d;
        *w += a->rate * (*m / a->b1t) / (sqrtf(*v / a->b2t) + a->eps);
    } else {
        *m += -g - a->decay * *w;
        *w += a->rate / a->batch * *m;
        *m *= a->momentum;
    }
    if (a->clip > 0.f) *w = fminf(a->clip, fmaxf(-a->clip, *w));
}

struct dn_backend {
    const char *name;
    dn_status (*allocate)(dn_net *net);
    dn_status (*begin_forward)(dn_net *net);
    dn_status (*run_layers)(dn_net *net, dn_status (*layers)(dn_net *net));
    dn_status (*layer_forward)(dn_net *net, dn_layer *l);
    dn_status (*begin_backward)(dn_net *net);
    dn_status (*layer_backward)(dn_net *net, dn_layer *l);
    dn_status (*layer_done)(dn_net *net, dn_layer *l, const char *what);
    dn_status (*pull_output)(dn_net *net, dn_layer *l);
    dn_status (*pull_delta)(dn_net *net, int layer);
    dn_status (*pull_param)(dn_net *net, dn_param *p);
    dn_status (*pull_gradients)(dn_net *net);
    dn_status (*zero_grads)(dn_net *net, dn_layer *l);
    dn_status (*begin_update)(dn_net *net, int *finite);
    dn_status (*update)(dn_net *net, dn_param *p, const dn_update_args *a);
    dn_status (*synchronize)(dn_net *net);
};

extern const dn_backend dn_cpu_backend;

/* ---- the layer loop (core/loop.c) ---- */
/* A forward pass over every layer with the input at net->input; a training
 * pass when net->train (layers frozen by stopbackward run as in inference). */
dn_status dn_run_forward(dn_net *net);
/* A backward pass, last layer first, as far as the per-layer switches let it. */
dn_status dn_run_backward(dn_net *net);
/* The gradient block's range [low, net->bucket_end) to the bucket hook (on a
 * device the host copies brought up to date first); bucket_end becomes low.
 * Inside dn_net_train_batch's last backward pass (net->bucketing) the loop
 * calls it as layers finish; train.c hands over the rest after the pass. */
dn_status dn_hand_over_gradients(dn_net *net, size_t low);
/* The host copies of every parameter (and with outputs, every layer output)
 * brought up to date; parameters go back before the next pass. */
dn_status dn_net_to_host(dn_net *net, int outputs);

#ifdef __cplusplus
}
#endif
#endif /* DN_BACKEND_H */

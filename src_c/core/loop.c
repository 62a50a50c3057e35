/* loop.c - the one layer loop: every forward and backward pass of every
 * network, whatever its backend (core/backend.h), runs here.
 *
 * Per layer: the training flag (net->train; a layer frozen by stopbackward
 * runs as in inference, so its convolutions use the rolling batch-norm
 * statistics), the pass itself through the backend, its time when profiling
 * is on (core/profile.c keeps the counters; on a device the backend is
 * synchronized around the layer so its time is its own), a failure named
 * after the layer, and the backend's completion check. Backward stops where
 * the per-layer switches say (backward_step). */
#include "layer.h"
#include "backend.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

/* Inference passes with DN_SPEED_FLUSH run with denormal floats (magnitudes
 * below 2^-126, about 1.2e-38) read and written as zero: on x86 the MXCSR's
 * flush-to-zero (bit 15) and denormals-are-zero (bit 6), set for the pass in
 * the calling thread and taken by the worker threads with each job (pool.c),
 * as OpenCV's DNN does for its forward passes. Without them every
 * multiply-add that meets or makes a denormal takes the processor's slow path
 * (a hundred cycles or more): yolov4 on random weights, whose deep mish
 * layers hold many values near 1e-36, ran its 26x26 Winograd layers 1.5-2.5x
 * slower. Results change only where darknet's hold denormals. Training keeps
 * IEEE arithmetic (gradients are small by nature), and so do passes without
 * DN_SPEED_THREADS, whose GEMMs run on OpenBLAS's threads, which keep theirs. */
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define DN_FLUSH_BITS 0x8040u
static unsigned fp_mode_begin(const dn_net *net)
{
    const unsigned m = _mm_getcsr();
    const unsigned both = DN_SPEED_FLUSH | DN_SPEED_THREADS;
    if (!net->train && (net->speed & both) == both) _mm_setcsr(m | DN_FLUSH_BITS);
    return m;
}
static void fp_mode_end(unsigned m) { _mm_setcsr(m); }
#else
static unsigned fp_mode_begin(const dn_net *net)
{
    (void)net;
    return 0;
}
static void fp_mode_end(unsigned m) { (void)m; }
#endif

double dn_seconds(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* A failed pass of layer l reported as the layer's (copies and allocations
 * fail with messages of their own that do not say which layer was running). */
static dn_status named(const dn_layer *l, dn_status s)
{
    char prefix[48];
    snprintf(prefix, sizeof(prefix), "layer %d [", l->index);
    if (!s || !strncmp(dn_last_error(), prefix, strlen(prefix))) return s;
    return dn_layer_fail(l, s, "%s", dn_last_error());
}

/* one layer's pass, its time added to the layer's counter when profiling */
static dn_status pass(dn_net *net, dn_layer *l, int backward)
{
    const dn_backend *b = net->backend;
    dn_status (*run)(dn_net *, dn_layer *) = backward ? b->layer_backward : b->layer_forward;
    if (!net->profiling) return run(net, l);
    dn_status s = b->synchronize(net);
    const double t = dn_seconds();
    if (!s) s = run(net, l);
    if (!s) s = b->synchronize(net);
    (backward ? net->prof_backward : net->prof_forward)[l->index] += dn_seconds() - t;
    if (!backward) net->prof_calls[l->index] += 1;
    return s;
}

/* The backward pass at layer l (its switches, core/layer.h): 1 runs it, 0
 * skips it, -1 stops the pass before it. */
static int backward_step(const dn_net *net, const dn_layer *l)
{
    const dn_switches *w = &l->sw;
    if (w->stopbackward == 1 || w->stopbackward > net->iteration) return -1;
    return w->onlyforward || w->frozen ? 0 : 1;
}

/* the forward pass's layers, in order */
static dn_status forward_layers(dn_net *net)
{
    const dn_backend *b = net->backend;
    const int train = net->train;
    dn_status s = DN_OK;
    for (int i = 0; i < net->nlayers && !s; ++i) {
        dn_layer *l = net->layers[i];
        net->train = train && !l->sw.infer;
        s = named(l, pass(net, l, 0));
        if (!s) s = b->layer_done(net, l, "forward");
    }
    net->train = train;
    return s;
}

dn_status dn_run_forward(dn_net *net)
{
    const dn_backend *b = net->backend;
    dn_net_prepare_threads(net);
    dn_status s = b->begin_forward(net);
    const unsigned fp_mode = fp_mode_begin(net);
    if (!s) s = b->run_layers(net, forward_layers);
    fp_mode_end(fp_mode);
    return s;
}

/* ---- gradients handed over as they become final (the bucket hook of dn_net_train_batch, core/train.c) ---- */
dn_status dn_hand_over_gradients(dn_net *net, size_t low)
{
    dn_status s = DN_OK;
    if ((s = net->backend->pull_gradients(net))) return s;
    if (low < net->bucket_end) s = net->bucket_hook(net, net->bucket_hook_user, low, net->bucket_end - low);
    net->bucket_end = low;
    return s;
}

/* after layer `layer`'s place in the last mini-batch's backward pass: its gradients and every later layer's are
 * final; handed over once at least bucket_floats of them wait */
static dn_status gradients_final(dn_net *net, int layer)
{
    if (!net->bucketing) return DN_OK;
    const size_t low = net->grad_offset[layer];
    if (net->bucket_end - low < net->bucket_floats) return DN_OK;
    return dn_hand_over_gradients(net, low);
}

dn_status dn_run_backward(dn_net *net)
{
    const dn_backend *b = net->backend;
    dn_net_prepare_threads(net);
    dn_status s = b->begin_backward(net);
    for (int i = net->nlayers - 1; i >= 0 && !s; --i) {
        dn_layer *l = net->layers[i];
        const int step = backward_step(net, l);
        if (step < 0) break;
        if (step) {
            s = named(l, pass(net, l, 1));
            if (!s) s = b->layer_done(net, l, "backward");
        }
        if (!s) s = gradients_final(net, i);
    }
    return s;
}

dn_status dn_net_to_host(dn_net *net, int outputs)
{
    const dn_backend *b = net->backend;
    dn_status s = DN_OK;
    for (int i = 0; i < net->nlayers && !s; ++i) {
        dn_layer *l = net->layers[i];
        if (outputs) s = b->pull_output(net, l);
        for (int j = 0; j < l->nparams && !s; ++j) s = b->pull_param(net, &l->params[j]);
    }
    return s;
}

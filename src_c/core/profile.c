/* profile.c - per-layer timing of forward and backward passes.
 *
 * With profiling on (dn_net_set_profiling), every layer's forward and
 * backward call is timed with the monotonic clock (wall time: with worker
 * threads a layer's time is how long the caller waited for it) and added to
 * that layer's counters; off, the passes call the layers directly. */
#include "internal.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

static double seconds(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

dn_status dn_layer_run_forward(dn_net *net, dn_layer *l)
{
    if (!net->profiling) return l->ops->forward(l, net);
    const double t = seconds();
    const dn_status s = l->ops->forward(l, net);
    net->prof_forward[l->index] += seconds() - t;
    net->prof_calls[l->index] += 1;
    return s;
}

dn_status dn_layer_run_backward(dn_net *net, dn_layer *l)
{
    if (!net->profiling) return l->ops->backward(l, net);
    const double t = seconds();
    const dn_status s = l->ops->backward(l, net);
    net->prof_backward[l->index] += seconds() - t;
    return s;
}

dn_status dn_net_set_profiling(dn_net *net, int on)
{
    if (!net) return dn_fail(DN_ERR_ARG, "network handle is NULL");
    if (!net->finalized) return dn_fail(DN_ERR_STATE, "the network is not finalized");
    if (on) {
        const size_t n = (size_t)net->nlayers;
        if (!net->prof_forward) {
            net->prof_forward = dn_calloc(n, sizeof(double));
            net->prof_backward = dn_calloc(n, sizeof(double));
            net->prof_calls = dn_calloc(n, sizeof(long long));
            if (!net->prof_forward || !net->prof_backward || !net->prof_calls) {
                free(net->prof_forward);
                free(net->prof_backward);
                free(net->prof_calls);
                net->prof_forward = net->prof_backward = NULL;
                net->prof_calls = NULL;
                return dn_fail(DN_ERR_NOMEM, "out of memory for the layer timers");
            }
        }
        memset(net->prof_forward, 0, n * sizeof(double));
        memset(net->prof_backward, 0, n * sizeof(double));
        memset(net->prof_calls, 0, n * sizeof(long long));
    }
    net->profiling = on ? 1 : 0;
    return DN_OK;
}

dn_status dn_net_layer_times(const dn_net *net, int layer, double *forward_s, double *backward_s, long long *calls)
{
    if (!net) return dn_fail(DN_ERR_ARG, "network handle is NULL");
    if (layer < 0 || layer >= net->nlayers) return dn_fail(DN_ERR_ARG, "layer index %d out of range", layer);
    const int have = net->prof_forward != NULL;
    if (forward_s) *forward_s = have ? net->prof_forward[layer] : 0.0;
    if (backward_s) *backward_s = have ? net->prof_backward[layer] : 0.0;
    if (calls) *calls = have ? net->prof_calls[layer] : 0;
    return DN_OK;
}

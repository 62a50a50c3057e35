/* profile.c - per-layer timing of forward and backward passes: the
 * counters and the public calls. With profiling on (dn_net_set_profiling),
 * the layer loop (core/loop.c) times every layer's forward and backward pass
 * with the monotonic clock (wall time: with worker threads a layer's time is
 * how long the caller waited for it; on a device the backend is synchronized
 * around the layer) and adds it to that layer's counters. dn_layer_algorithm
 * tells which way a layer's last inference pass took (convolutional.c). */
#include "layer.h"

#include <stdlib.h>
#include <string.h>

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

const char *dn_layer_algorithm(const dn_net *net, int layer)
{
    if (!net || layer < 0 || layer >= net->nlayers) return NULL;
    return net->layers[layer]->algorithm;
}

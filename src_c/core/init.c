/* init.c - darknet's initial values for a network trained from scratch.
 *
 * For every layer with `weights` and `biases` tensors (convolutional,
 * connected): weights uniform in [-s, s] with s = sqrt(2 / fan_in), fan_in =
 * weights per output (size*size*channels/groups for a convolution, inputs for
 * a connected layer), as darknet's make_*_layer draw them; biases 0. Batch-norm
 * scales start at 1 and rolling statistics at mean 0, variance 1 (set when
 * the layers are made); shortcut feature weights at 1. Drawn from a generator
 * seeded here, so the same seed gives the same network. */
#include "layer.h"
#include "backend.h"

#include <math.h>
#include <string.h>

dn_status dn_net_init_params(dn_net *net, unsigned long long seed)
{
    if (!net) return dn_fail(DN_ERR_ARG, "network handle is NULL");
    dn_status s = dn_net_to_host(net, 0);
    if (s) return s;
    const unsigned long long saved = net->rng;
    net->rng = seed;
    for (int i = 0; i < net->nlayers; ++i) {
        dn_layer *l = net->layers[i];
        dn_param *w = dn_layer_find_param(l, "weights"), *b = dn_layer_find_param(l, "biases");
        if (!w || !b || !b->count) continue;
        const float scale = sqrtf(2.f / (float)(w->count / b->count));
        for (size_t k = 0; k < w->count; ++k) w->data[k] = scale * (2.f * dn_rand_uniform(net) - 1.f);
        memset(b->data, 0, b->count * sizeof(float));
    }
    net->rng = saved;
    return DN_OK;
}

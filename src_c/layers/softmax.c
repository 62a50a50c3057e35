/* softmax.c - [softmax]
 *
 * The input's C*H*W values per image are split into `groups` contiguous runs
 * and each run is replaced by softmax(x / temperature). Output shape = input
 * shape. */
#include "internal.h"


typedef struct {
    int groups;
    float temperature;
} softmax_state;

static dn_status softmax_make(dn_layer *l, dn_net *net)
{
    (void)net;
    softmax_state *s = dn_layer_priv(l, sizeof(softmax_state));
    if (!s) return DN_ERR_NOMEM;
    dn_status st;
    if ((st = dn_attr_int(l, "groups", &s->groups)) || (st = dn_attr_float(l, "temperature", &s->temperature))) return st;
    if (s->groups < 1 || s->temperature == 0.f)
        return dn_layer_fail(l, DN_ERR_ARG, "groups must be positive and temperature non-zero");
    if (dn_attr_has(l, "spatial")) {
        float spatial;
        if ((st = dn_attr_float(l, "spatial", &spatial))) return st;
        if (spatial != 0.f) return dn_layer_fail(l, DN_ERR_UNSUPPORTED, "spatial softmax is not supported");
    }
    return DN_OK;
}

static dn_status softmax_setup(dn_layer *l, dn_net *net)
{
    (void)net;
    softmax_state *s = l->priv;
    if (l->inputs % (size_t)s->groups)
        return dn_layer_fail(l, DN_ERR_SHAPE, "%zu inputs are not divisible into %d groups", l->inputs, s->groups);
    l->out_c = l->c;
    l->out_h = l->h;
    l->out_w = l->w;
    return DN_OK;
}

static dn_status softmax_forward(dn_layer *l, dn_net *net)
{
    softmax_state *s = l->priv;
    const float *in = dn_layer_input(net, l);
    const int n = (int)(l->inputs / s->groups);
    for (int b = 0; b < l->batch; ++b)
        for (int g = 0; g < s->groups; ++g) {
            size_t off = (size_t)b * l->inputs + (size_t)g * n;
            dn_softmax(in + off, n, s->temperature, 1, l->output + off);
        }
    return DN_OK;
}


const dn_layer_ops dn_softmax_ops = {
    .type = "softmax",
    .make = softmax_make,
    .setup = softmax_setup,
    .forward = softmax_forward,
};

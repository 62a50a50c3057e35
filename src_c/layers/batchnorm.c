/* batchnorm.c - [batchnorm]: a standalone batch normalization.
 * Inference: out = scale * (in - rolling_mean) / sqrt(rolling_variance + .00001),
 * per channel, same shape as the input. Parameters in darknet's file order:
 * scales, rolling_mean, rolling_variance. */
#include "internal.h"


typedef struct {
    float *scales, *mean, *variance;
} batchnorm_state;

static dn_status batchnorm_make(dn_layer *l, dn_net *net)
{
    (void)net;
    batchnorm_state *s = dn_layer_priv(l, sizeof(batchnorm_state));
    if (!s) return DN_ERR_NOMEM;
    dn_status st;
    const size_t n = (size_t)l->c;
    if ((st = dn_layer_add_param(l, "scales", n, &s->scales)) || (st = dn_layer_add_param(l, "rolling_mean", n, &s->mean)) ||
        (st = dn_layer_add_param(l, "rolling_variance", n, &s->variance)))
        return st;
    for (size_t i = 0; i < n; ++i) s->scales[i] = s->variance[i] = 1.f;
    return DN_OK;
}

static dn_status batchnorm_setup(dn_layer *l, dn_net *net)
{
    if ((size_t)l->c != l->params[0].count)
        return dn_layer_fail(l, DN_ERR_SHAPE, "input has %d channels, the layer was built for %zu", l->c,
                             l->params[0].count);
    return dn_setup_same_shape(l, net);
}

static dn_status batchnorm_forward(dn_layer *l, dn_net *net)
{
    batchnorm_state *s = l->priv;
    dn_forward_copy(l, net);
    const int hw = l->out_h * l->out_w;
    dn_normalize(l->output, s->mean, s->variance, l->batch, l->out_c, hw);
    dn_scale_bias(l->output, s->scales, l->batch, l->out_c, hw);
    return DN_OK;
}


const dn_layer_ops dn_batchnorm_ops = {
    .type = "batchnorm",
    .make = batchnorm_make,
    .setup = batchnorm_setup,
    .forward = batchnorm_forward,
};

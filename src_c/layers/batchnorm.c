/* batchnorm.c - [batchnorm]: a standalone batch normalization, same shape
 * as its input [B][C][H][W]. Per channel c:
 *     y = scale * (x - mean) / sqrt(var + .00001) + bias
 * with mean and var the rolling statistics in inference, and in a training
 * pass the batch's (over the B*H*W values of the channel, the variance
 * unbiased; see dn_batchnorm_forward_train), which also move the rolling
 * ones (.9*rolling + .1*batch, darknet's CPU constants).
 *
 * Backward, given delta = dLoss/dy: bias grad += sum delta, scale grad +=
 * sum delta * x_norm; the input delta gets the exact derivative through the
 * batch statistics (dn_batchnorm_backward; l->delta becomes dLoss/dx in
 * place). Parameters in darknet's file order (its batchnorm_layer): biases
 * and scales (trained, no decay), rolling_mean, rolling_variance (not
 * trained). */
#include "../ops/ops.h"
#include "cuda.h"

#include <stdlib.h>

typedef struct {
    float *biases, *scales, *mean, *variance;
    /* kept by a training pass for backward */
    float *x_norm, *batch_mean, *batch_variance;
    size_t x_norm_cap, batch_mean_cap, batch_variance_cap;
    int trained; /* the last forward pass was a training pass at the current shape */
} batchnorm_state;

static dn_status batchnorm_make(dn_layer *l, dn_net *net)
{
    (void)net;
    batchnorm_state *s = dn_layer_priv(l, sizeof(batchnorm_state));
    if (!s) return DN_ERR_NOMEM;
    if (dn_layer_owns(l, &s->x_norm, &s->batch_mean, &s->batch_variance, NULL)) return DN_ERR_ARG;
    dn_status st;
    const size_t n = (size_t)l->c;
    if ((st = dn_layer_add_param_flags(l, "biases", n, DN_PARAM_TRAIN, &s->biases)) ||
        (st = dn_layer_add_param_flags(l, "scales", n, DN_PARAM_TRAIN, &s->scales)) ||
        (st = dn_layer_add_param_flags(l, "rolling_mean", n, 0, &s->mean)) ||
        (st = dn_layer_add_param_flags(l, "rolling_variance", n, 0, &s->variance)))
        return st;
    for (size_t i = 0; i < n; ++i) s->scales[i] = s->variance[i] = 1.f;
    return DN_OK;
}

static dn_status batchnorm_setup(dn_layer *l, dn_net *net)
{
    batchnorm_state *s = l->priv;
    if ((size_t)l->c != l->params[0].count)
        return dn_layer_fail(l, DN_ERR_SHAPE, "input has %d channels, the layer was built for %zu", l->c,
                             l->params[0].count);
    s->trained = 0;
    return dn_setup_same_shape(l, net);
}

static dn_status batchnorm_forward(dn_layer *l, dn_net *net)
{
    batchnorm_state *s = l->priv;
    const int hw = l->out_h * l->out_w;
    dn_status st;
    s->trained = 0;
    dn_forward_copy(l, net);
    if (net->train) {
        if ((size_t)l->batch * hw < 2)
            return dn_layer_fail(l, DN_ERR_SHAPE,
                                 "batch normalization in training needs at least 2 values per channel "
                                 "(batch %d x %d x %d)", l->batch, l->out_h, l->out_w);
        if ((st = dn_ensure_floats(&s->batch_mean, &s->batch_mean_cap, (size_t)l->out_c)) ||
            (st = dn_ensure_floats(&s->batch_variance, &s->batch_variance_cap, (size_t)l->out_c)) ||
            (st = dn_ensure_floats(&s->x_norm, &s->x_norm_cap, (size_t)l->batch * l->outputs)))
            return st;
        dn_batchnorm_forward_train(l->output, l->batch, l->out_c, hw, s->batch_mean, s->batch_variance, s->x_norm,
                                   s->mean, s->variance, DN_BN_ROLLING);
    } else {
        dn_normalize(l->output, s->mean, s->variance, l->batch, l->out_c, hw);
    }
    dn_scale_bias(l->output, s->scales, l->batch, l->out_c, hw);
    dn_add_bias(l->output, s->biases, l->batch, l->out_c, hw);
    s->trained = net->train;
    return DN_OK;
}

static dn_status batchnorm_backward(dn_layer *l, dn_net *net)
{
    batchnorm_state *s = l->priv;
    const int hw = l->out_h * l->out_w;
    if (!s->trained) return dn_layer_fail(l, DN_ERR_STATE, "backward needs a training forward pass first");
    dn_backward_bias(dn_layer_find_param(l, "biases")->grad, l->delta, l->batch, l->out_c, hw);
    dn_batchnorm_backward(l->delta, s->x_norm, s->batch_variance, s->scales, dn_layer_find_param(l, "scales")->grad,
                          l->batch, l->out_c, hw);
    float *in_delta = dn_layer_input_delta(net, l);
    if (!in_delta) return DN_OK;
    const size_t n = (size_t)l->batch * l->outputs;
    for (size_t i = 0; i < n; ++i) in_delta[i] += l->delta[i];
    return DN_OK;
}

const dn_layer_ops dn_batchnorm_ops = {
    .type = "batchnorm",
    .make = batchnorm_make,
    .setup = batchnorm_setup,
    .forward = batchnorm_forward,
    .backward = batchnorm_backward,
    DN_GPU_OPS(dn_batchnorm_forward_gpu, dn_batchnorm_backward_gpu),
};

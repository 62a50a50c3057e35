/* cost.c - [cost]: a training loss on the previous layer's output.
 *
 * Output = input, same shape, so at inference the network's answer is the
 * layer before it. In a training pass with truths (C*H*W values per image)
 * the loss, with d = x - t per value and s = scale, is
 *     sse:     s * sum d^2 / 2                  gradient s * d
 *     masked:  as sse, skipping values whose truth is -1234 (darknet's SECRET_NUM)
 *     smooth:  s * sum (|d| < 1 ? d^2 / 2 : |d| - 1/2)   gradient s * d, or s * sign(d)
 *     l1:      s * sum |d|                     gradient s * sign(d) (s at d = 0, as darknet)
 *     l2:      s * sum d^2 / (2 B)              gradient s * d / B, B the images of the pass
 *              (Caffe's EuclideanLoss)
 *     smooth_l1 (sigma, default 1): s * sum (|d| < 1/sigma^2 ? (sigma d)^2 / 2 : |d| - 1/(2 sigma^2)),
 *              gradient s * sigma^2 d, or s * sign(d) (tensorpack's and Fast R-CNN's smooth L1;
 *              sigma = 1 is darknet's `smooth`; Keras's Huber(delta) is huber below)
 *     huber (delta, default 1): s * sum (|d| <= delta ? d^2 / 2 : delta (|d| - delta/2)),
 *              gradient s * d, or s * delta * sign(d) (Keras's and PyTorch's HuberLoss with reduction
 *              "sum"; smooth_l1 with sigma equals huber with delta = 1/sigma^2 divided by delta)
 * summed over the images and added to net->loss; l->delta holds the gradient
 * with respect to the input. Each gradient is darknet's step scale * delta
 * exactly; darknet reports sum d^2 (sse, masked), sum (2|d| - 1 or d^2)
 * (smooth) and sum |d| (l1), without the 1/2 and the scale, and masks by
 * overwriting its input with -1234, where we skip the value instead.
 * Backward: input delta += l->delta. Since the output is the input, a
 * gradient a later layer adds into l->delta passes through as well. */
#include "../ops/ops.h"
#include "cuda.h"
#include "cost_math.h"

#include <math.h>
#include <string.h>

typedef struct {
    int type;
    float scale, sigma, delta;
} cost_state;

static dn_status cost_make(dn_layer *l, dn_net *net)
{
    (void)net;
    cost_state *s = dn_layer_priv(l, sizeof(cost_state));
    if (!s) return DN_ERR_NOMEM;
    const char *type;
    dn_status st = dn_attr_string(l, "type", &type);
    if (st) return st;
    if (!strcmp(type, "sse"))
        s->type = COST_SSE;
    else if (!strcmp(type, "masked"))
        s->type = COST_MASKED;
    else if (!strcmp(type, "smooth"))
        s->type = COST_SMOOTH;
    else if (!strcmp(type, "L1") || !strcmp(type, "l1"))
        s->type = COST_L1;
    else if (!strcmp(type, "l2"))
        s->type = COST_L2;
    else if (!strcmp(type, "smooth_l1"))
        s->type = COST_SMOOTH_L1;
    else if (!strcmp(type, "huber"))
        s->type = COST_HUBER;
    else
        return dn_layer_fail(l, DN_ERR_ARG, "unknown cost type '%s'", type);
    s->scale = s->sigma = s->delta = 1.f;
    if (dn_attr_has(l, "scale") && (st = dn_attr_float(l, "scale", &s->scale))) return st;
    if (dn_attr_has(l, "sigma") && (st = dn_attr_float(l, "sigma", &s->sigma))) return st;
    if (dn_attr_has(l, "delta") && (st = dn_attr_float(l, "delta", &s->delta))) return st;
    if (!(s->sigma > 0.f) || !(s->delta > 0.f))
        return dn_layer_fail(l, DN_ERR_ARG, "sigma and delta must be positive (sigma=%g delta=%g)", s->sigma, s->delta);
    l->is_loss = 1;
    return DN_OK;
}

static dn_status cost_forward(dn_layer *l, dn_net *net)
{
    cost_state *s = l->priv;
    dn_forward_copy(l, net);
    if (!net->train || !net->truth) return DN_OK;
    if ((size_t)net->truth_stride != l->inputs)
        return dn_layer_fail(l, DN_ERR_SHAPE, "%d truth values per image; the cost layer's input has %zu",
                             net->truth_stride, l->inputs);
    const float *x = dn_layer_input(net, l), *t = net->truth;
    const float k = s->scale;
    const size_t n = (size_t)l->batch * l->inputs;
    double loss = 0;
    for (size_t i = 0; i < n; ++i) {
        float g;
        loss += dn_cost_term(s->type, x[i], t[i], s->sigma, s->delta, l->batch, &g);
        l->delta[i] = k * g;
    }
    net->loss += k * loss;
    return DN_OK;
}

dn_status dn_cost_options(const dn_layer *l, const dn_net *net, int *type, float *scale, float *sigma, float *delta)
{
    const cost_state *s = l->priv;
    *type = s->type;
    *scale = s->scale;
    *sigma = s->sigma;
    *delta = s->delta;
    if ((size_t)net->truth_stride != l->inputs)
        return dn_layer_fail(l, DN_ERR_SHAPE, "%d truth values per image; the cost layer's input has %zu",
                             net->truth_stride, l->inputs);
    return DN_OK;
}

static dn_status cost_backward(dn_layer *l, dn_net *net)
{
    float *d = dn_layer_input_delta(net, l);
    if (!d) return DN_OK;
    const size_t n = (size_t)l->batch * l->outputs;
    for (size_t i = 0; i < n; ++i) d[i] += l->delta[i];
    return DN_OK;
}

const dn_layer_ops dn_cost_ops = {
    .type = "cost",
    .make = cost_make,
    .setup = dn_setup_same_shape,
    .forward = cost_forward,
    .backward = cost_backward,
    DN_GPU_OPS(dn_cost_forward_gpu, dn_cost_backward_gpu),
};

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

#include <math.h>
#include <string.h>

#define SECRET_NUM (-1234.f)

enum { COST_SSE, COST_MASKED, COST_SMOOTH, COST_L1, COST_L2, COST_SMOOTH_L1, COST_HUBER };

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
        const float d = x[i] - t[i], a = fabsf(d);
        float g = 0.f;
        switch (s->type) {
        case COST_MASKED:
            if (t[i] == SECRET_NUM) break;
            /* fall through */
        case COST_SSE:
            g = d;
            loss += 0.5 * (double)d * d;
            break;
        case COST_SMOOTH:
            g = a < 1.f ? d : (d > 0.f ? 1.f : -1.f);
            loss += a < 1.f ? 0.5 * (double)d * d : (double)a - 0.5;
            break;
        case COST_L2:
            g = d / (float)l->batch;
            loss += 0.5 * (double)d * d / l->batch;
            break;
        case COST_SMOOTH_L1: {
            const float ss = s->sigma * s->sigma;
            if (a < 1.f / ss) {
                g = ss * d;
                loss += 0.5 * (double)ss * d * d;
            } else {
                g = d > 0.f ? 1.f : -1.f;
                loss += (double)a - 0.5 / ss;
            }
            break;
        }
        case COST_HUBER:
            if (a <= s->delta) {
                g = d;
                loss += 0.5 * (double)d * d;
            } else {
                g = d > 0.f ? s->delta : -s->delta;
                loss += (double)s->delta * (a - 0.5 * s->delta);
            }
            break;
        default:
            g = d < 0.f ? -1.f : 1.f;
            loss += a;
            break;
        }
        l->delta[i] = k * g;
    }
    net->loss += k * loss;
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
};

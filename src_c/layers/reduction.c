/* reduction.c - [reduction] (Caffe's Reduction): operation=sum|asum|sumsq|mean
 * over every axis from `axis` (1 = C, 2 = H, 3 = W of N,C,H,W) to the last,
 * the batch axis never; the result times `coeff`. Output shape: the reduced
 * axes of size 1 (axis=1: [B,1,1,1]; 2: [B,C,1,1]; 3: [B,C,H,1]). The
 * reduced axes are the trailing ones, so output value o of an image reduces
 * the n consecutive input values o*n .. o*n + n - 1 (summed in double).
 *     sum: sum x; asum: sum |x|; sumsq: sum x^2; mean: sum x / n
 * Backward: input delta += coeff * delta_o * (1, sign(x) with 0 at 0, 2x,
 * 1/n). */
#include "../ops/ops.h"
#include "cuda.h"
#include "../ops/layer_math.h"

#include <string.h>

static dn_status reduction_make(dn_layer *l, dn_net *net)
{
    (void)net;
    const char *op;
    int axis;
    float coeff;
    dn_status st;
    if ((st = dn_attr_string(l, "operation", &op)) || (st = dn_attr_int(l, "axis", &axis)) ||
        (st = dn_attr_float(l, "coeff", &coeff)))
        return st;
    if (dn_reduction_op(op) < 0)
        return dn_layer_fail(l, DN_ERR_ARG, "operation=%s: give sum, asum, sumsq or mean", op);
    if (axis < 1 || axis > 3)
        return dn_layer_fail(l, DN_ERR_ARG, "axis=%d: give 1 (C), 2 (H) or 3 (W); the batch is never reduced", axis);
    return DN_OK;
}

static dn_status reduction_setup(dn_layer *l, dn_net *net)
{
    (void)net;
    int axis;
    dn_status st = dn_attr_int(l, "axis", &axis);
    if (st) return st;
    l->out_c = axis == 1 ? 1 : l->c;
    l->out_h = axis <= 2 ? 1 : l->h;
    l->out_w = 1;
    return DN_OK;
}

dn_status dn_reduction_options(const dn_layer *l, int *op, float *coeff, size_t *n)
{
    const char *name;
    dn_status st;
    if ((st = dn_attr_string(l, "operation", &name)) || (st = dn_attr_float(l, "coeff", coeff))) return st;
    *op = dn_reduction_op(name);
    *n = l->inputs / ((size_t)l->out_c * l->out_h * l->out_w);
    return DN_OK;
}

static dn_status reduction_forward(dn_layer *l, dn_net *net)
{
    int op;
    float coeff;
    size_t n;
    dn_status st = dn_reduction_options(l, &op, &coeff, &n);
    if (st) return st;
    const float *in = dn_layer_input(net, l);
    const size_t outs = (size_t)l->batch * l->outputs;
    for (size_t o = 0; o < outs; ++o) l->output[o] = dn_reduce_run(in + o * n, n, op, coeff);
    return DN_OK;
}

static dn_status reduction_backward(dn_layer *l, dn_net *net)
{
    float *d = dn_layer_input_delta(net, l);
    if (!d) return DN_OK;
    int op;
    float coeff;
    size_t n;
    dn_status st = dn_reduction_options(l, &op, &coeff, &n);
    if (st) return st;
    const float *in = dn_layer_input(net, l);
    const size_t total = (size_t)l->batch * l->inputs;
    for (size_t i = 0; i < total; ++i) d[i] += dn_reduce_grad(in[i], l->delta[i / n], n, op, coeff);
    return DN_OK;
}

const dn_layer_ops dn_reduction_ops = {
    .type = "reduction",
    .make = reduction_make,
    .setup = reduction_setup,
    .forward = reduction_forward,
    .backward = reduction_backward,
    DN_GPU_OPS(dn_reduction_forward_gpu, dn_reduction_backward_gpu),
};

/* connected.c - [connected] (fully connected)
 *
 * Input: the previous output flattened to K = C*H*W values per image, x
 * [B][K]; output [B][N][1][1], N = `output`. z = W x with W stored [N][K]
 * (row n holds the weights of output n); then a = z + b, or with
 * batch_normalize a = scale * (z - mean) / sqrt(var + .00001) + b with mean
 * and var per output the rolling statistics in inference and the batch's in
 * a training pass (over the B values, unbiased variance; see
 * dn_batchnorm_forward_train), which also move the rolling ones
 * (.95*rolling + .05*batch, darknet's forward_connected_layer; convolutions
 * use .9/.1). Output y = activation(a).
 *
 * Backward, given delta = dLoss/dy (turned in place into dLoss/da, then
 * dLoss/dz): dLoss/da = delta * f'(a); bias grad += sum over images of
 * dLoss/da; with batch_normalize, scale grad += sum dLoss/da * z_norm and
 * dLoss/dz is the exact derivative through the batch statistics
 * (dn_batchnorm_backward). Then
 *     weight grad [N][K] += dLoss/dz^T [N x B] * x [B x K]
 *     input delta [B][K] += dLoss/dz [B x N] * W [N x K].
 * Parameters in darknet's file order for this layer: biases, weights, then
 * scales, rolling_mean, rolling_variance; weights are trained with decay,
 * biases and scales without, the rolling statistics not at all. */
#include "../ops/ops.h"
#include "cuda.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
    int outputs, batch_normalize;
    size_t inputs;
    dn_activation activation;
    float *biases, *weights, *scales, *mean, *variance;
    /* kept by a training pass for backward: the pre-activation (when the
     * activation's derivative needs it), the normalized z, batch statistics */
    float *x, *x_norm, *batch_mean, *batch_variance;
    size_t x_cap, x_norm_cap, batch_mean_cap, batch_variance_cap;
    int trained; /* the last forward pass was a training pass at the current shape */
} connected_state;

static dn_status connected_make(dn_layer *l, dn_net *net)
{
    (void)net;
    connected_state *s = dn_layer_priv(l, sizeof(connected_state));
    if (!s) return DN_ERR_NOMEM;
    if (dn_layer_owns(l, &s->x, &s->x_norm, &s->batch_mean, &s->batch_variance, NULL)) return DN_ERR_ARG;
    const char *act;
    dn_status st;
    if ((st = dn_attr_int(l, "output", &s->outputs)) || (st = dn_attr_int(l, "batch_normalize", &s->batch_normalize)) ||
        (st = dn_attr_string(l, "activation", &act)))
        return st;
    if ((st = dn_activation_from_name(act, &s->activation))) return dn_layer_fail(l, st, "unknown activation '%s'", act);
    if (s->outputs < 1) return dn_layer_fail(l, DN_ERR_ARG, "output must be positive, got %d", s->outputs);
    s->inputs = l->inputs;
    const size_t n = (size_t)s->outputs;
    if ((st = dn_layer_add_param_flags(l, "biases", n, DN_PARAM_TRAIN, &s->biases)) ||
        (st = dn_layer_add_param_flags(l, "weights", n * s->inputs, DN_PARAM_TRAIN | DN_PARAM_DECAY, &s->weights)))
        return st;
    if (s->batch_normalize) {
        if ((st = dn_layer_add_param_flags(l, "scales", n, DN_PARAM_TRAIN, &s->scales)) ||
            (st = dn_layer_add_param_flags(l, "rolling_mean", n, 0, &s->mean)) ||
            (st = dn_layer_add_param_flags(l, "rolling_variance", n, 0, &s->variance)))
            return st;
        for (size_t i = 0; i < n; ++i) s->scales[i] = s->variance[i] = 1.f;
    }
    return DN_OK;
}

static dn_status connected_setup(dn_layer *l, dn_net *net)
{
    (void)net;
    connected_state *s = l->priv;
    if (l->inputs != s->inputs)
        return dn_layer_fail(l, DN_ERR_SHAPE, "input has %zu values per image, the layer was built for %zu", l->inputs,
                             s->inputs);
    l->out_c = s->outputs;
    l->out_h = l->out_w = 1;
    s->trained = 0;
    return DN_OK;
}

static dn_status connected_forward(dn_layer *l, dn_net *net)
{
    connected_state *s = l->priv;
    const int K = (int)s->inputs, N = s->outputs;
    const size_t total = (size_t)l->batch * N;
    dn_status st;
    s->trained = 0;
    /* z[B][N] = x[B][K] * W^T */
    dn_gemm(net, 0, 1, l->batch, N, K, 1.f, dn_layer_input(net, l), K, s->weights, K, 0.f, l->output, N);
    if (s->batch_normalize) {
        if (net->train) {
            if (l->batch < 2)
                return dn_layer_fail(l, DN_ERR_SHAPE,
                                     "batch normalization in training needs a mini-batch of at least 2 images");
            if ((st = dn_ensure_floats(&s->batch_mean, &s->batch_mean_cap, (size_t)N)) ||
                (st = dn_ensure_floats(&s->batch_variance, &s->batch_variance_cap, (size_t)N)) ||
                (st = dn_ensure_floats(&s->x_norm, &s->x_norm_cap, total)))
                return st;
            dn_batchnorm_forward_train(l->output, l->batch, N, 1, s->batch_mean, s->batch_variance, s->x_norm, s->mean,
                                       s->variance, DN_BN_ROLLING_CONNECTED);
        } else {
            dn_normalize(l->output, s->mean, s->variance, l->batch, N, 1);
        }
        dn_scale_bias(l->output, s->scales, l->batch, N, 1);
    }
    dn_add_bias(l->output, s->biases, l->batch, N, 1);
    if (net->train && dn_activation_needs_input(s->activation)) {
        if ((st = dn_ensure_floats(&s->x, &s->x_cap, total))) return st;
        memcpy(s->x, l->output, total * sizeof(float));
    }
    dn_activate(l->output, l->batch, N, 1, s->activation);
    s->trained = net->train;
    return DN_OK;
}

static float *grad_of(const dn_layer *l, const float *data)
{
    for (int i = 0; i < l->nparams; ++i)
        if (l->params[i].data == data) return l->params[i].grad;
    return NULL;
}

static dn_status connected_backward(dn_layer *l, dn_net *net)
{
    connected_state *s = l->priv;
    const int K = (int)s->inputs, N = s->outputs;
    if (!s->trained) return dn_layer_fail(l, DN_ERR_STATE, "backward needs a training forward pass first");
    dn_activation_backward(l->output, dn_activation_needs_input(s->activation) ? s->x : NULL, l->delta, l->batch, N, 1,
                           s->activation);
    float *bias_grad = grad_of(l, s->biases), *weight_grad = grad_of(l, s->weights);
    if (bias_grad) dn_backward_bias(bias_grad, l->delta, l->batch, N, 1);
    if (s->batch_normalize)
        dn_batchnorm_backward(l->delta, s->x_norm, s->batch_variance, s->scales, grad_of(l, s->scales), l->batch, N,
                              1);
    if (weight_grad)
        dn_gemm(net, 1, 0, N, K, l->batch, 1.f, l->delta, N, dn_layer_input(net, l), K, 1.f, weight_grad, K);
    float *in_delta = dn_layer_input_delta(net, l);
    if (in_delta) dn_gemm(net, 0, 0, l->batch, K, N, 1.f, l->delta, N, s->weights, K, 1.f, in_delta, K);
    return DN_OK;
}

const dn_layer_ops dn_connected_ops = {
    .type = "connected",
    .make = connected_make,
    .setup = connected_setup,
    .forward = connected_forward,
    .backward = connected_backward,
    DN_GPU_OPS(dn_connected_forward_gpu, dn_connected_backward_gpu),
};

/* connected.c - [connected] (fully connected)
 *
 * Input: the previous output flattened to K = C*H*W values per image; output
 * [B][N][1][1], N = `output`:  out = W x + b with W stored [N][K] (row n holds
 * the weights of output n), or with batch_normalize
 * out = scale * (W x - rolling_mean) / sqrt(rolling_variance + .00001) + b,
 * then the activation. Parameters in darknet's file order for this layer:
 * biases, weights, then scales, rolling_mean, rolling_variance. */
#include "internal.h"


typedef struct {
    int outputs, batch_normalize;
    size_t inputs;
    dn_activation activation;
    float *biases, *weights, *scales, *mean, *variance;
} connected_state;

static dn_status connected_make(dn_layer *l, dn_net *net)
{
    (void)net;
    connected_state *s = dn_layer_priv(l, sizeof(connected_state));
    if (!s) return DN_ERR_NOMEM;
    const char *act;
    dn_status st;
    if ((st = dn_attr_int(l, "output", &s->outputs)) || (st = dn_attr_int(l, "batch_normalize", &s->batch_normalize)) ||
        (st = dn_attr_string(l, "activation", &act)))
        return st;
    if ((st = dn_activation_from_name(act, &s->activation))) return dn_layer_fail(l, st, "unknown activation '%s'", act);
    if (s->outputs < 1) return dn_layer_fail(l, DN_ERR_ARG, "output must be positive, got %d", s->outputs);
    s->inputs = l->inputs;
    const size_t n = (size_t)s->outputs;
    if ((st = dn_layer_add_param(l, "biases", n, &s->biases)) ||
        (st = dn_layer_add_param(l, "weights", n * s->inputs, &s->weights)))
        return st;
    if (s->batch_normalize) {
        if ((st = dn_layer_add_param(l, "scales", n, &s->scales)) || (st = dn_layer_add_param(l, "rolling_mean", n, &s->mean)) ||
            (st = dn_layer_add_param(l, "rolling_variance", n, &s->variance)))
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
    return DN_OK;
}

static dn_status connected_forward(dn_layer *l, dn_net *net)
{
    connected_state *s = l->priv;
    const int K = (int)s->inputs, N = s->outputs;
    /* out[B][N] = in[B][K] * W^T */
    dn_gemm(net, 0, 1, l->batch, N, K, 1.f, dn_layer_input(net, l), K, s->weights, K, 0.f, l->output, N);
    if (s->batch_normalize) {
        dn_normalize(l->output, s->mean, s->variance, l->batch, N, 1);
        dn_scale_bias(l->output, s->scales, l->batch, N, 1);
    }
    dn_add_bias(l->output, s->biases, l->batch, N, 1);
    dn_activate(l->output, l->batch, N, 1, s->activation);
    return DN_OK;
}


const dn_layer_ops dn_connected_ops = {
    .type = "connected",
    .make = connected_make,
    .setup = connected_setup,
    .forward = connected_forward,
};

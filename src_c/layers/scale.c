/* scale.c - [scale] (Caffe's Scale, the learnable half of Caffe's BatchNorm +
 * Scale pair): per channel y = gamma * x + beta (beta only with bias_term=1,
 * the default). Parameters in weights-file order: beta as "biases" (C values,
 * with bias_term), then gamma as "scales" (C values); both trained, without
 * decay. Backward: dgamma[c] += sum delta * x, dbeta[c] += sum delta, input
 * delta += gamma[c] * delta.
 *
 * A Caffe BatchNorm (use_global_stats, eps) + Scale pair maps onto [batchnorm]
 * with scales 1 and biases 0 followed by [scale] (tests/test_layers.py checks
 * the mapping numerically), or onto one [batchnorm] with Scale's gamma and
 * beta as its scales and biases, when Caffe's eps is darknet's .00001. */
#include "../ops/ops.h"
#include "cuda.h"

typedef struct {
    int bias_term;
    float *beta, *gamma;
} scale_state;

static dn_status scale_make(dn_layer *l, dn_net *net)
{
    (void)net;
    scale_state *s = dn_layer_priv(l, sizeof(scale_state));
    if (!s) return DN_ERR_NOMEM;
    dn_status st;
    if ((st = dn_attr_int(l, "bias_term", &s->bias_term))) return st;
    const size_t n = (size_t)l->c;
    if (s->bias_term && (st = dn_layer_add_param_flags(l, "biases", n, DN_PARAM_TRAIN, &s->beta))) return st;
    if ((st = dn_layer_add_param_flags(l, "scales", n, DN_PARAM_TRAIN, &s->gamma))) return st;
    for (size_t i = 0; i < n; ++i) s->gamma[i] = 1.f;
    return DN_OK;
}

static dn_status scale_setup(dn_layer *l, dn_net *net)
{
    const scale_state *s = l->priv;
    const dn_param *g = dn_layer_find_param(l, "scales");
    if ((size_t)l->c != g->count)
        return dn_layer_fail(l, DN_ERR_SHAPE, "input has %d channels, the layer was built for %zu", l->c, g->count);
    (void)s;
    return dn_setup_same_shape(l, net);
}

static dn_status scale_forward(dn_layer *l, dn_net *net)
{
    const scale_state *s = l->priv;
    const float *in = dn_layer_input(net, l);
    const size_t hw = (size_t)l->h * l->w;
    for (int b = 0; b < l->batch; ++b)
        for (int c = 0; c < l->c; ++c) {
            const size_t off = ((size_t)b * l->c + c) * hw;
            const float g = s->gamma[c], be = s->bias_term ? s->beta[c] : 0.f;
            for (size_t i = 0; i < hw; ++i) l->output[off + i] = g * in[off + i] + be;
        }
    return DN_OK;
}

static dn_status scale_backward(dn_layer *l, dn_net *net)
{
    const scale_state *s = l->priv;
    const float *in = dn_layer_input(net, l);
    float *d = dn_layer_input_delta(net, l);
    const dn_param *gp = dn_layer_find_param(l, "scales"), *bp = s->bias_term ? dn_layer_find_param(l, "biases") : NULL;
    const size_t hw = (size_t)l->h * l->w;
    for (int c = 0; c < l->c; ++c) {
        double sg = 0, sb = 0;
        for (int b = 0; b < l->batch; ++b) {
            const size_t off = ((size_t)b * l->c + c) * hw;
            for (size_t i = 0; i < hw; ++i) {
                sg += (double)l->delta[off + i] * in[off + i];
                sb += l->delta[off + i];
                if (d) d[off + i] += s->gamma[c] * l->delta[off + i];
            }
        }
        if (gp->grad) gp->grad[c] += (float)sg;
        if (bp && bp->grad) bp->grad[c] += (float)sb;
    }
    return DN_OK;
}

const dn_layer_ops dn_scale_ops = {
    .type = "scale",
    .make = scale_make,
    .setup = scale_setup,
    .forward = scale_forward,
    .backward = scale_backward,
    DN_GPU_OPS(dn_scale_forward_gpu, dn_scale_backward_gpu),
};

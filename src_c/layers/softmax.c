/* softmax.c - [softmax]
 *
 * The input's C*H*W values per image are split into `groups` contiguous runs
 * and each run is replaced by p = softmax(x / T), T = temperature. Output
 * shape = input shape.
 *
 * Loss: in a training pass with truths (C*H*W values per image, one-hot or
 * soft, per group) and noloss=0 the layer is a loss head with the
 * cross-entropy L = -sum_j t_j log p_j, summed over groups and images, whose
 * gradient per group is dL/dx_j = (p_j * sum_i t_i - t_j) / T ((p - t)/T for
 * a one-hot group). Darknet's softmax_x_ent logs -log p_j for every t_j != 0
 * and steps by t - p without the 1/T; the two agree for one-hot truths at
 * T = 1.
 * Focal loss (focal_gamma = g > 0, focal_alpha = a, default 1; Lin et al.):
 * L = -a sum_j t_j (1 - p_j)^g log p_j (a one-hot group: -a (1 - p)^g log p of
 * the true class); with a_j = p_j dL/dp_j = a t_j (g p_j (1 - p_j)^(g-1) log p_j
 * - (1 - p_j)^g), the exact gradient dL/dx_k = (a_k - p_k sum_j a_j) / T
 * (g = 0, a = 1 is the cross-entropy above).
 * Backward: dL/dx = the cross-entropy gradient (when the pass had one) plus
 * the softmax Jacobian applied to l->delta (dLoss/d(output) set by the layers
 * after it, e.g. a [cost]): dx_j += p_j (g_j - sum_i g_i p_i) / T. Darknet
 * passes a following layer's delta through unchanged, without the Jacobian;
 * here the gradient is the exact one of the total loss. */
#include "../ops/ops.h"
#include "cuda.h"
#include "../ops/layer_math.h"

#include <math.h>
#include <stdlib.h>

typedef struct {
    int groups, noloss;
    float temperature, focal_gamma, focal_alpha;
    float *xent; /* gradient of the cross-entropy, kept from a training pass for backward */
    size_t xent_cap;
    int has_loss;
} softmax_state;

static dn_status softmax_make(dn_layer *l, dn_net *net)
{
    (void)net;
    softmax_state *s = dn_layer_priv(l, sizeof(softmax_state));
    if (!s) return DN_ERR_NOMEM;
    if (dn_layer_owns(l, &s->xent, NULL)) return DN_ERR_ARG;
    dn_status st;
    if ((st = dn_attr_int(l, "groups", &s->groups)) || (st = dn_attr_float(l, "temperature", &s->temperature))) return st;
    if (s->groups < 1 || s->temperature == 0.f)
        return dn_layer_fail(l, DN_ERR_ARG, "groups must be positive and temperature non-zero");
    if (dn_attr_has(l, "spatial")) {
        float spatial;
        if ((st = dn_attr_float(l, "spatial", &spatial))) return st;
        if (spatial != 0.f) return dn_layer_fail(l, DN_ERR_UNSUPPORTED, "spatial softmax is not supported");
    }
    if (dn_attr_has(l, "noloss") && (st = dn_attr_int(l, "noloss", &s->noloss))) return st;
    s->focal_alpha = 1.f;
    if (dn_attr_has(l, "focal_gamma") && (st = dn_attr_float(l, "focal_gamma", &s->focal_gamma))) return st;
    if (dn_attr_has(l, "focal_alpha") && (st = dn_attr_float(l, "focal_alpha", &s->focal_alpha))) return st;
    if (!(s->focal_gamma >= 0.f) || !(s->focal_alpha > 0.f))
        return dn_layer_fail(l, DN_ERR_ARG, "focal_gamma must be >= 0 and focal_alpha > 0 (got %g, %g)", s->focal_gamma,
                             s->focal_alpha);
    l->is_loss = !s->noloss;
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

/* cross-entropy of every group, gradient into s->xent */
static dn_status softmax_loss(dn_layer *l, dn_net *net)
{
    softmax_state *s = l->priv;
    if ((size_t)net->truth_stride != l->inputs)
        return dn_layer_fail(l, DN_ERR_SHAPE, "%d truth values per image; the softmax has %zu", net->truth_stride,
                             l->inputs);
    const size_t total = (size_t)l->batch * l->inputs;
    dn_status st = dn_ensure_floats(&s->xent, &s->xent_cap, total);
    if (st) return dn_layer_fail(l, st, "out of memory for the loss scratch");
    const float *in = dn_layer_input(net, l);
    const size_t n = l->inputs / (size_t)s->groups;
    double loss = 0;
    for (size_t g0 = 0; g0 < total; g0 += n)
        loss += dn_softmax_group_loss(in + g0, net->truth + g0, l->output + g0, n, s->temperature, s->focal_gamma,
                                      s->focal_alpha, s->xent + g0);
    net->loss += loss;
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
    return dn_softmax_train_loss(l, net);
}

dn_status dn_softmax_train_loss(dn_layer *l, dn_net *net)
{
    softmax_state *s = l->priv;
    if (!net->train) return DN_OK;
    s->has_loss = net->truth && !s->noloss;
    return s->has_loss ? softmax_loss(l, net) : DN_OK;
}

dn_status dn_softmax_loss_options(dn_layer *l, const dn_net *net, int *has_loss, float *gamma, float *alpha)
{
    softmax_state *s = l->priv;
    s->has_loss = net->train && net->truth && !s->noloss;
    *has_loss = s->has_loss;
    *gamma = s->focal_gamma;
    *alpha = s->focal_alpha;
    if (s->has_loss && (size_t)net->truth_stride != l->inputs)
        return dn_layer_fail(l, DN_ERR_SHAPE, "%d truth values per image; the softmax has %zu", net->truth_stride,
                             l->inputs);
    return DN_OK;
}

int dn_softmax_has_loss(const dn_layer *l) { return ((const softmax_state *)l->priv)->has_loss; }

const float *dn_softmax_xent(const dn_layer *l)
{
    const softmax_state *s = l->priv;
    return s->has_loss ? s->xent : NULL;
}

static dn_status softmax_backward(dn_layer *l, dn_net *net)
{
    softmax_state *s = l->priv;
    float *d = dn_layer_input_delta(net, l);
    if (!d) return DN_OK;
    const size_t total = (size_t)l->batch * l->inputs, n = l->inputs / (size_t)s->groups;
    for (size_t g0 = 0; g0 < total; g0 += n) {
        dn_softmax_group_backward(l->output + g0, l->delta + g0, (int)n, s->temperature, 1, d + g0);
        if (s->has_loss)
            for (size_t j = 0; j < n; ++j) d[g0 + j] += s->xent[g0 + j];
    }
    return DN_OK;
}

const dn_layer_ops dn_softmax_ops = {
    .type = "softmax",
    .make = softmax_make,
    .setup = softmax_setup,
    .forward = softmax_forward,
    .backward = softmax_backward,
    DN_GPU_OPS(dn_softmax_forward_gpu, dn_softmax_backward_gpu),
};

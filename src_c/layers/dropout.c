/* dropout.c - [dropout]: same shape [B][C][H][W].
 *
 * Inference: the identity, out = in. Training: each element is dropped with
 * probability p, out = in * m with m = 0 when a uniform draw from the
 * network's generator is below p (one draw per element, in memory order) and
 * m = 1/(1-p) otherwise. Backward: dL/d(in) += dL/d(out) * m with the same m.
 * DropBlock (dropblock=1) is not supported. */
#include "../ops/ops.h"
#include "cuda.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
    float probability, scale;
    float *mask;          /* training: m per element */
    size_t mask_cap;
} dropout_state;

static dn_status dropout_make(dn_layer *l, dn_net *net)
{
    (void)net;
    dropout_state *s = dn_layer_priv(l, sizeof(dropout_state));
    if (!s) return DN_ERR_NOMEM;
    if (dn_layer_owns(l, &s->mask, NULL)) return DN_ERR_ARG;
    int dropblock = 0;
    dn_status st = dn_attr_float(l, "probability", &s->probability);
    if (st) return st;
    if (dn_attr_has(l, "dropblock") && (st = dn_attr_int(l, "dropblock", &dropblock))) return st;
    if (dropblock)
        return dn_layer_fail(l, DN_ERR_UNSUPPORTED, "dropblock=1 (DropBlock) is not supported; use plain dropout "
                             "(dropblock=0)");
    if (s->probability < 0.f || s->probability >= 1.f)
        return dn_layer_fail(l, DN_ERR_ARG, "probability must be in [0, 1), got %g", s->probability);
    s->scale = 1.f / (1.f - s->probability);
    return DN_OK;
}

static dn_status dropout_forward(dn_layer *l, dn_net *net)
{
    const float *in = dn_layer_input(net, l);
    const size_t n = (size_t)l->batch * l->outputs;
    if (!net->train) {
        memcpy(l->output, in, n * sizeof(float));
        return DN_OK;
    }
    const float *mask = NULL;
    dn_status st = dn_dropout_mask(l, net, &mask);
    if (st) return st;
    for (size_t i = 0; i < n; ++i) l->output[i] = in[i] * mask[i];
    return DN_OK;
}

dn_status dn_dropout_mask(dn_layer *l, dn_net *net, const float **mask)
{
    dropout_state *s = l->priv;
    const size_t n = (size_t)l->batch * l->outputs;
    dn_status st = dn_ensure_floats(&s->mask, &s->mask_cap, n);
    if (st) return dn_layer_fail(l, st, "out of memory for the dropout mask");
    for (size_t i = 0; i < n; ++i) s->mask[i] = dn_rand_uniform(net) < s->probability ? 0.f : s->scale;
    *mask = s->mask;
    return DN_OK;
}

static dn_status dropout_backward(dn_layer *l, dn_net *net)
{
    dropout_state *s = l->priv;
    float *d = dn_layer_input_delta(net, l);
    if (!d) return DN_OK;
    const size_t n = (size_t)l->batch * l->outputs;
    if (!s->mask || s->mask_cap < n) return dn_layer_fail(l, DN_ERR_STATE, "no training forward pass drew a mask");
    for (size_t i = 0; i < n; ++i) d[i] += l->delta[i] * s->mask[i];
    return DN_OK;
}

const dn_layer_ops dn_dropout_ops = {
    .type = "dropout",
    .make = dropout_make,
    .setup = dn_setup_same_shape,
    .forward = dropout_forward,
    .backward = dropout_backward,
    DN_GPU_OPS(dn_dropout_forward_gpu, dn_dropout_backward_gpu),
};

/* activation.c - [activation]: out = f(in), same shape [B][C][H][W], f by name.
 * Backward: dL/d(in) += dL/d(out) * f'(in) (for the normalize_channels kinds,
 * the Jacobian across channels at each pixel). */
#include "../ops/ops.h"
#include "cuda.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
    dn_activation activation;
    float *x, *g;         /* training: the input, when f' needs it; backward: delta times f' */
    size_t x_cap, g_cap;
} activation_state;

static dn_status activation_make(dn_layer *l, dn_net *net)
{
    (void)net;
    const char *name;
    activation_state *s = dn_layer_priv(l, sizeof(activation_state));
    if (!s) return DN_ERR_NOMEM;
    if (dn_layer_owns(l, &s->x, &s->g, NULL)) return DN_ERR_ARG;
    dn_status st = dn_attr_string(l, "activation", &name);
    if (st) return st;
    if ((st = dn_activation_from_name(name, &s->activation))) return dn_layer_fail(l, st, "unknown activation '%s'", name);
    return DN_OK;
}

static dn_status activation_forward(dn_layer *l, dn_net *net)
{
    activation_state *s = l->priv;
    const size_t n = (size_t)l->batch * l->outputs;
    const float *in = dn_layer_input(net, l);
    if (net->train && dn_activation_needs_input(s->activation)) {
        dn_status st = dn_ensure_floats(&s->x, &s->x_cap, n);
        if (st) return dn_layer_fail(l, st, "out of memory for the input values");
        memcpy(s->x, in, n * sizeof(float));
    }
    memcpy(l->output, in, n * sizeof(float));
    dn_activate(l->output, l->batch, l->out_c, l->out_h * l->out_w, s->activation);
    return DN_OK;
}

static dn_status activation_backward(dn_layer *l, dn_net *net)
{
    activation_state *s = l->priv;
    float *d = dn_layer_input_delta(net, l);
    if (!d) return DN_OK;
    const size_t n = (size_t)l->batch * l->outputs;
    const int needs_x = dn_activation_needs_input(s->activation);
    if (needs_x && (!s->x || s->x_cap < n))
        return dn_layer_fail(l, DN_ERR_STATE, "no training forward pass kept the input values");
    dn_status st = dn_ensure_floats(&s->g, &s->g_cap, n);
    if (st) return dn_layer_fail(l, st, "out of memory for the activation gradient");
    memcpy(s->g, l->delta, n * sizeof(float));
    dn_activation_backward(l->output, needs_x ? s->x : NULL, s->g, l->batch, l->out_c, l->out_h * l->out_w,
                           s->activation);
    for (size_t i = 0; i < n; ++i) d[i] += s->g[i];
    return DN_OK;
}

const dn_layer_ops dn_activation_ops = {
    .type = "activation",
    .make = activation_make,
    .setup = dn_setup_same_shape,
    .forward = activation_forward,
    .backward = activation_backward,
    DN_GPU_OPS(dn_activation_forward_gpu, dn_activation_backward_gpu),
};

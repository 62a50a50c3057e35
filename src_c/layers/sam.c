/* sam.c - [sam] (spatial attention): out = act(in * F) elementwise, where F
 * is the output of the `from` layer and has the input's shape [B][C][H][W].
 *
 * Backward, with g = dL/d(out) * act'(in * F):
 *   dL/d(in) += g * F and dL/dF += g * in. */
#include "../ops/ops.h"
#include "cuda.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
    int from;
    dn_activation activation;
    float *x, *g;         /* training: pre-activation output; backward: delta times act' */
    size_t x_cap, g_cap;
} sam_state;

static dn_status sam_make(dn_layer *l, dn_net *net)
{
    sam_state *s = dn_layer_priv(l, sizeof(sam_state));
    if (!s) return DN_ERR_NOMEM;
    if (dn_layer_owns(l, &s->x, &s->g, NULL)) return DN_ERR_ARG;
    return dn_layer_from_and_activation(l, net, &s->from, &s->activation);
}

static dn_status sam_setup(dn_layer *l, dn_net *net)
{
    sam_state *s = l->priv;
    const dn_layer *f = net->layers[s->from];
    if (f->out_c != l->c || f->out_h != l->h || f->out_w != l->w)
        return dn_layer_fail(l, DN_ERR_SHAPE, "layer %d is %d x %d x %d but the input is %d x %d x %d (c x h x w)",
                             f->index, f->out_c, f->out_h, f->out_w, l->c, l->h, l->w);
    return dn_setup_same_shape(l, net);
}

static dn_status sam_forward(dn_layer *l, dn_net *net)
{
    sam_state *s = l->priv;
    const float *in = dn_layer_input(net, l);
    const float *f = net->layers[s->from]->output;
    const size_t n = (size_t)l->batch * l->outputs;
    for (size_t i = 0; i < n; ++i) l->output[i] = in[i] * f[i];
    return dn_activate_output(l, net, s->activation, &s->x, &s->x_cap);
}

static dn_status sam_backward(dn_layer *l, dn_net *net)
{
    sam_state *s = l->priv;
    const size_t n = (size_t)l->batch * l->outputs;
    const float *g;
    dn_status st = dn_activation_delta(l, s->activation, s->x, s->x_cap, &s->g, &s->g_cap, &g);
    if (st) return st;
    const float *in = dn_layer_input(net, l);
    float *din = dn_layer_input_delta(net, l);
    dn_layer *from = net->layers[s->from];
    for (size_t i = 0; i < n; ++i) {
        if (din) din[i] += g[i] * from->output[i];
        from->delta[i] += g[i] * in[i];
    }
    return DN_OK;
}

const dn_layer_ops dn_sam_ops = {
    .type = "sam",
    .make = sam_make,
    .setup = sam_setup,
    .forward = sam_forward,
    .backward = sam_backward,
    DN_GPU_OPS(dn_sam_forward_gpu, dn_sam_backward_gpu),
};

/* scale_channels.c - [scale_channels] (squeeze-and-excitation)
 *
 * `from` names a layer F of shape [B][C][H][W]; the input (previous layer) is
 * either [B][C][1][1] (one scale per channel: out[c][y][x] = in[c] * F[c][y][x])
 * or, with scale_wh=1, [B][1][H][W] (one scale per pixel: out[c][y][x] =
 * in[y][x] * F[c][y][x]). Then the activation. Output shape = F's shape.
 *
 * Backward, with g = dL/d(out) * act'(pre-activation):
 *   dL/dF[c][y][x] += g[c][y][x] * scale, the scale that multiplied it;
 *   per channel: dL/d(in[c]) += sum over y, x of g[c][y][x] * F[c][y][x];
 *   scale_wh:    dL/d(in[y][x]) += sum over c of g[c][y][x] * F[c][y][x]. */
#include "../ops/ops.h"
#include "cuda.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
    int from, scale_wh;
    dn_activation activation;
    float *x, *g;         /* training: pre-activation output; backward: delta times act' */
    size_t x_cap, g_cap;
} scale_channels_state;

static dn_status scale_channels_make(dn_layer *l, dn_net *net)
{
    scale_channels_state *s = dn_layer_priv(l, sizeof(scale_channels_state));
    if (!s) return DN_ERR_NOMEM;
    if (dn_layer_owns(l, &s->x, &s->g, NULL)) return DN_ERR_ARG;
    dn_status st = dn_attr_int(l, "scale_wh", &s->scale_wh);
    if (st) return st;
    return dn_layer_from_and_activation(l, net, &s->from, &s->activation);
}

static dn_status scale_channels_setup(dn_layer *l, dn_net *net)
{
    scale_channels_state *s = l->priv;
    const dn_layer *f = net->layers[s->from];
    l->out_c = f->out_c;
    l->out_h = f->out_h;
    l->out_w = f->out_w;
    if (s->scale_wh ? (l->c != 1 || l->h != f->out_h || l->w != f->out_w)
                    : (l->h != 1 || l->w != 1 || l->c != f->out_c))
        return dn_layer_fail(l, DN_ERR_SHAPE, "input %d x %d x %d does not scale layer %d of %d x %d x %d (c x h x w)%s",
                             l->c, l->h, l->w, f->index, f->out_c, f->out_h, f->out_w,
                             s->scale_wh ? " per pixel (scale_wh=1 needs 1 x H x W)" : " per channel (needs C x 1 x 1)");
    return DN_OK;
}

static dn_status scale_channels_forward(dn_layer *l, dn_net *net)
{
    scale_channels_state *s = l->priv;
    const float *in = dn_layer_input(net, l);
    const float *f = net->layers[s->from]->output;
    const size_t hw = (size_t)l->out_h * l->out_w;
    for (int b = 0; b < l->batch; ++b)
        for (int c = 0; c < l->out_c; ++c) {
            const size_t off = ((size_t)b * l->out_c + c) * hw;
            if (s->scale_wh) {
                const float *sc = in + (size_t)b * hw;
                for (size_t i = 0; i < hw; ++i) l->output[off + i] = sc[i] * f[off + i];
            } else {
                const float sc = in[(size_t)b * l->c + c];
                for (size_t i = 0; i < hw; ++i) l->output[off + i] = sc * f[off + i];
            }
        }
    return dn_activate_output(l, net, s->activation, &s->x, &s->x_cap);
}

static dn_status scale_channels_backward(dn_layer *l, dn_net *net)
{
    scale_channels_state *s = l->priv;
    const size_t hw = (size_t)l->out_h * l->out_w;
    const float *g;
    dn_status st = dn_activation_delta(l, s->activation, s->x, s->x_cap, &s->g, &s->g_cap, &g);
    if (st) return st;
    const float *in = dn_layer_input(net, l);
    float *din = dn_layer_input_delta(net, l);
    dn_layer *from = net->layers[s->from];
    for (int b = 0; b < l->batch; ++b)
        for (int c = 0; c < l->out_c; ++c) {
            const size_t off = ((size_t)b * l->out_c + c) * hw;
            const float *gc = g + off, *fc = from->output + off;
            float *dfc = from->delta + off;
            if (s->scale_wh) {
                const float *sc = in + (size_t)b * hw;
                float *dsc = din ? din + (size_t)b * hw : NULL;
                for (size_t i = 0; i < hw; ++i) {
                    if (dsc) dsc[i] += gc[i] * fc[i];
                    dfc[i] += gc[i] * sc[i];
                }
            } else {
                const float sc = in[(size_t)b * l->c + c];
                double acc = 0;
                for (size_t i = 0; i < hw; ++i) {
                    acc += (double)gc[i] * fc[i];
                    dfc[i] += gc[i] * sc;
                }
                if (din) din[(size_t)b * l->c + c] += (float)acc;
            }
        }
    return DN_OK;
}

const dn_layer_ops dn_scale_channels_ops = {
    .type = "scale_channels",
    .make = scale_channels_make,
    .setup = scale_channels_setup,
    .forward = scale_channels_forward,
    .backward = scale_channels_backward,
    DN_GPU_OPS(dn_scale_channels_forward_gpu, dn_scale_channels_backward_gpu),
};

/* maxpool.c - [maxpool]
 *
 * Input [B][C][H][W]. Spatial mode: output [B][C][OH][OW] with
 * OH = (H + padding - size) / stride_y + 1 (OW likewise), each output the max
 * over a size x size window starting padding/2 before the image.
 * maxpool_depth=1: pooling across channels instead, output [B][out_channels][H][W]
 * with out[g] = max over input channels k = g, g + out_channels, ... */
#include "internal.h"

#include <float.h>

typedef struct {
    int size, stride_x, stride_y, padding, depth, out_channels;
} maxpool_state;

static dn_status maxpool_make(dn_layer *l, dn_net *net)
{
    (void)net;
    maxpool_state *s = dn_layer_priv(l, sizeof(maxpool_state));
    if (!s) return DN_ERR_NOMEM;
    dn_status st;
    if ((st = dn_pool_window(l, &s->size, &s->stride_x, &s->stride_y, &s->padding)) ||
        (st = dn_attr_int(l, "maxpool_depth", &s->depth)) || (st = dn_attr_int(l, "out_channels", &s->out_channels)))
        return st;
    if (s->out_channels < 1) return dn_layer_fail(l, DN_ERR_ARG, "out_channels must be positive");
    return DN_OK;
}

static dn_status maxpool_setup(dn_layer *l, dn_net *net)
{
    (void)net;
    maxpool_state *s = l->priv;
    if (s->depth) {
        l->out_c = s->out_channels;
        l->out_h = l->h;
        l->out_w = l->w;
    } else {
        l->out_c = l->c;
        l->out_h = (l->h + s->padding - s->size) / s->stride_y + 1;
        l->out_w = (l->w + s->padding - s->size) / s->stride_x + 1;
    }
    return DN_OK;
}

static dn_status maxpool_forward(dn_layer *l, dn_net *net)
{
    maxpool_state *s = l->priv;
    const float *in = dn_layer_input(net, l);
    if (!s->depth) {
        dn_pool2d(in, l->batch, l->c, l->h, l->w, s->size, s->stride_y, s->stride_x, s->padding, l->out_h, l->out_w,
                  DN_POOL_MAX, l->output);
        return DN_OK;
    }
    const size_t hw = (size_t)l->h * l->w;
    for (int b = 0; b < l->batch; ++b)
        for (int g = 0; g < l->out_c; ++g) {
            float *o = l->output + ((size_t)b * l->out_c + g) * hw;
            for (size_t i = 0; i < hw; ++i) {
                float best = -FLT_MAX;
                for (int k = g; k < l->c; k += l->out_c) {
                    float v = in[((size_t)b * l->c + k) * hw + i];
                    if (v > best) best = v;
                }
                o[i] = best;
            }
        }
    return DN_OK;
}


const dn_layer_ops dn_maxpool_ops = {
    .type = "maxpool",
    .make = maxpool_make,
    .setup = maxpool_setup,
    .forward = maxpool_forward,
};

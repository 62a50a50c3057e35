/* local_avgpool.c - [local_avgpool]
 *
 * Input [B][C][H][W], output [B][C][OH][OW] with OH = (H + padding - size) /
 * stride_y + 1 (OW likewise); each output is the mean of the window's pixels
 * that fall inside the image (the window starts padding/2 before it). */
#include "internal.h"


typedef struct {
    int size, stride_x, stride_y, padding;
} avgpool_state;

static dn_status local_avgpool_make(dn_layer *l, dn_net *net)
{
    (void)net;
    avgpool_state *s = dn_layer_priv(l, sizeof(avgpool_state));
    if (!s) return DN_ERR_NOMEM;
    return dn_pool_window(l, &s->size, &s->stride_x, &s->stride_y, &s->padding);
}

static dn_status local_avgpool_setup(dn_layer *l, dn_net *net)
{
    (void)net;
    avgpool_state *s = l->priv;
    l->out_c = l->c;
    l->out_h = (l->h + s->padding - s->size) / s->stride_y + 1;
    l->out_w = (l->w + s->padding - s->size) / s->stride_x + 1;
    return DN_OK;
}

static dn_status local_avgpool_forward(dn_layer *l, dn_net *net)
{
    avgpool_state *s = l->priv;
    dn_pool2d(dn_layer_input(net, l), l->batch, l->c, l->h, l->w, s->size, s->stride_y, s->stride_x, s->padding,
              l->out_h, l->out_w, DN_POOL_AVG, l->output);
    return DN_OK;
}


const dn_layer_ops dn_local_avgpool_ops = {
    .type = "local_avgpool",
    .make = local_avgpool_make,
    .setup = local_avgpool_setup,
    .forward = local_avgpool_forward,
};

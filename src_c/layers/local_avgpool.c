/* local_avgpool.c - [local_avgpool]
 *
 * Input [B][C][H][W], output [B][C][OH][OW] with OH = (H + padding - size) /
 * stride_y + 1 (OW likewise); each output is the mean of the window's pixels
 * that fall inside the image (the window starts padding/2 before it). */
#include "internal.h"

#include <stdlib.h>

typedef struct {
    int size, stride_x, stride_y, padding;
} avgpool_state;

static dn_status local_avgpool_make(dn_layer *l, dn_net *net)
{
    (void)net;
    avgpool_state *s = dn_calloc(1, sizeof(*s));
    if (!s) return dn_layer_fail(l, DN_ERR_NOMEM, "out of memory");
    l->priv = s;
    dn_status st;
    if ((st = dn_attr_int(l, "size", &s->size)) || (st = dn_attr_int(l, "stride_x", &s->stride_x)) ||
        (st = dn_attr_int(l, "stride_y", &s->stride_y)) || (st = dn_attr_int(l, "padding", &s->padding)))
        return st;
    if (s->size < 1 || s->stride_x < 1 || s->stride_y < 1 || s->padding < 0)
        return dn_layer_fail(l, DN_ERR_ARG, "size and strides must be positive and padding >= 0");
    return DN_OK;
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

static void local_avgpool_destroy(dn_layer *l) { free(l->priv); }

const dn_layer_ops dn_local_avgpool_ops = {"local_avgpool", local_avgpool_make, local_avgpool_setup,
                                           local_avgpool_forward, local_avgpool_destroy, NULL};

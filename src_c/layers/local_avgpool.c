/* local_avgpool.c - [local_avgpool]
 *
 * Input [B][C][H][W], output [B][C][OH][OW] with OH = (H + padding - size) /
 * stride_y + 1 (OW likewise); each output is the mean of the window's pixels
 * that fall inside the image (the window starts padding/2 before it).
 *
 * Backward: each output o averages the n_o pixels of its window inside the
 * image, so each of them gets dL/d(in) += dL/d(out[o]) / n_o. */
#include "../ops/ops.h"
#include "cuda.h"

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

static dn_status local_avgpool_backward(dn_layer *l, dn_net *net)
{
    avgpool_state *s = l->priv;
    float *d = dn_layer_input_delta(net, l);
    if (!d) return DN_OK;
    const int off = -s->padding / 2;
    for (int bc = 0; bc < l->batch * l->c; ++bc) {
        float *din = d + (size_t)bc * l->h * l->w;
        const float *delta = l->delta + (size_t)bc * l->out_h * l->out_w;
        for (int i = 0; i < l->out_h; ++i)
            for (int j = 0; j < l->out_w; ++j) {
                /* the window clipped to the image */
                int y0 = off + i * s->stride_y, x0 = off + j * s->stride_x;
                int y1 = y0 + s->size, x1 = x0 + s->size;
                if (y0 < 0) y0 = 0;
                if (x0 < 0) x0 = 0;
                if (y1 > l->h) y1 = l->h;
                if (x1 > l->w) x1 = l->w;
                if (y1 <= y0 || x1 <= x0) continue;
                const float g = delta[(size_t)i * l->out_w + j] / (float)((y1 - y0) * (x1 - x0));
                for (int y = y0; y < y1; ++y)
                    for (int x = x0; x < x1; ++x) din[(size_t)y * l->w + x] += g;
            }
    }
    return DN_OK;
}

const dn_layer_ops dn_local_avgpool_ops = {
    .type = "local_avgpool",
    .make = local_avgpool_make,
    .setup = local_avgpool_setup,
    .forward = local_avgpool_forward,
    .backward = local_avgpool_backward,
    DN_GPU_OPS(dn_local_avgpool_forward_gpu, dn_local_avgpool_backward_gpu),
};

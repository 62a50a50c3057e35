/* upsample.c - [upsample]
 *
 * stride s > 0: nearest-neighbour upsampling, output [B][C][H*s][W*s],
 *     out[c][y][x] = scale * in[c][y/s][x/s].
 * stride s < 0 (darknet's reverse mode): output [B][C][H/|s|][W/|s|],
 *     out[c][y][x] = scale * sum of the |s| x |s| input block at (y*|s|, x*|s|)
 *     (rows and columns past the last whole block are left out).
 * Backward, the adjoint of each: for s > 0 every input pixel gets scale times
 * the sum of the delta over its s x s copies; for s < 0 every input pixel of
 * a block gets scale times the delta of the block's output (pixels left out
 * get nothing). */
#include "../ops/ops.h"
#include "cuda.h"

#include <string.h>

typedef struct {
    int stride, reverse;
    float scale;
} upsample_state;

static dn_status upsample_make(dn_layer *l, dn_net *net)
{
    (void)net;
    upsample_state *s = dn_layer_priv(l, sizeof(upsample_state));
    if (!s) return DN_ERR_NOMEM;
    dn_status st;
    if ((st = dn_attr_int(l, "stride", &s->stride)) || (st = dn_attr_float(l, "scale", &s->scale))) return st;
    if (s->stride == 0) return dn_layer_fail(l, DN_ERR_ARG, "stride must not be 0");
    if (s->stride < 0) {
        s->reverse = 1;
        s->stride = -s->stride;
    }
    return DN_OK;
}

static dn_status upsample_setup(dn_layer *l, dn_net *net)
{
    (void)net;
    upsample_state *s = l->priv;
    l->out_c = l->c;
    l->out_h = s->reverse ? l->h / s->stride : l->h * s->stride;
    l->out_w = s->reverse ? l->w / s->stride : l->w * s->stride;
    return DN_OK;
}

/* nearest-neighbour upsampling of planes [p0, p1) */
typedef struct {
    const dn_layer *l;
    const upsample_state *s;
    const float *in;
} up_job;

static void up_range(void *ctx, size_t p0, size_t p1)
{
    const up_job *j = ctx;
    const dn_layer *l = j->l;
    const int st = j->s->stride;
    const float scale = j->s->scale;
    for (size_t k = p0; k < p1; ++k) {
        const float *src = j->in + k * l->h * l->w;
        float *dst = l->output + k * l->out_h * l->out_w;
        for (int y = 0; y < l->out_h; ++y) {
            const float *r = src + (size_t)(y / st) * l->w;
            float *d = dst + (size_t)y * l->out_w;
            for (int x = 0; x < l->out_w; ++x) d[x] = scale * r[x / st];
        }
    }
}

static dn_status upsample_forward(dn_layer *l, dn_net *net)
{
    upsample_state *s = l->priv;
    const float *in = dn_layer_input(net, l);
    const int st = s->stride;
    if (!s->reverse && (net->speed & DN_SPEED_THREADS)) {
        up_job j = {l, s, in};
        const size_t per = (size_t)l->out_h * l->out_w;
        dn_parallel_range(net, (size_t)l->batch * l->c, per >= 16384 ? 1 : 16384 / per, up_range, &j);
        return DN_OK;
    }
    if (!s->reverse) {
        for (int k = 0; k < l->batch * l->c; ++k) {
            const float *src = in + (size_t)k * l->h * l->w;
            float *dst = l->output + (size_t)k * l->out_h * l->out_w;
            for (int y = 0; y < l->out_h; ++y)
                for (int x = 0; x < l->out_w; ++x)
                    dst[(size_t)y * l->out_w + x] = s->scale * src[(size_t)(y / st) * l->w + x / st];
        }
        return DN_OK;
    }
    memset(l->output, 0, (size_t)l->batch * l->outputs * sizeof(float));
    for (int k = 0; k < l->batch * l->c; ++k) {
        const float *src = in + (size_t)k * l->h * l->w;
        float *dst = l->output + (size_t)k * l->out_h * l->out_w;
        for (int y = 0; y < l->out_h * st; ++y)
            for (int x = 0; x < l->out_w * st; ++x)
                dst[(size_t)(y / st) * l->out_w + x / st] += s->scale * src[(size_t)y * l->w + x];
    }
    return DN_OK;
}

static dn_status upsample_backward(dn_layer *l, dn_net *net)
{
    upsample_state *s = l->priv;
    float *d = dn_layer_input_delta(net, l);
    if (!d) return DN_OK;
    const int st = s->stride;
    for (int k = 0; k < l->batch * l->c; ++k) {
        float *din = d + (size_t)k * l->h * l->w;
        const float *delta = l->delta + (size_t)k * l->out_h * l->out_w;
        if (!s->reverse) {
            for (int y = 0; y < l->out_h; ++y)
                for (int x = 0; x < l->out_w; ++x)
                    din[(size_t)(y / st) * l->w + x / st] += s->scale * delta[(size_t)y * l->out_w + x];
        } else {
            for (int y = 0; y < l->out_h * st; ++y)
                for (int x = 0; x < l->out_w * st; ++x)
                    din[(size_t)y * l->w + x] += s->scale * delta[(size_t)(y / st) * l->out_w + x / st];
        }
    }
    return DN_OK;
}

const dn_layer_ops dn_upsample_ops = {
    .type = "upsample",
    .make = upsample_make,
    .setup = upsample_setup,
    .forward = upsample_forward,
    .backward = upsample_backward,
    DN_GPU_OPS(dn_upsample_forward_gpu, dn_upsample_backward_gpu),
};

/* maxpool.c - [maxpool]
 *
 * Input [B][C][H][W]. Spatial mode: output [B][C][OH][OW] with
 * OH = (H + padding - size) / stride_y + 1 (OW likewise), each output the max
 * over a size x size window starting padding/2 before the image (pixels
 * outside the image are skipped; the first of equal maxima wins).
 * maxpool_depth=1: pooling across channels instead, output [B][out_channels][H][W]
 * with out[g] = max over input channels k = g, g + out_channels, ...
 *
 * Backward: the max is the input at its argmax, so dL/d(in[argmax(o)]) +=
 * dL/d(out[o]) and every other input gets nothing from o. A training forward
 * pass records, per output, the index of its argmax within the image (-1 for
 * a window wholly outside the image, which passes no gradient). */
#include "../ops/ops.h"
#include "cuda.h"

#include <float.h>
#include <stdlib.h>

typedef struct {
    int size, stride_x, stride_y, padding, depth, out_channels;
    int *argmax;        /* training: per output, the index of its max in the input image */
    size_t argmax_cap;
} maxpool_state;

static dn_status maxpool_make(dn_layer *l, dn_net *net)
{
    (void)net;
    maxpool_state *s = dn_layer_priv(l, sizeof(maxpool_state));
    if (!s) return DN_ERR_NOMEM;
    if (dn_layer_owns(l, &s->argmax, NULL)) return DN_ERR_ARG;
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
    /* the separable path's row maxima of one plane */
    l->worker_workspace = !s->depth && s->size >= 4 ? (size_t)l->h * l->out_w * sizeof(float) : 0;
    return DN_OK;
}

static dn_status ensure_argmax(dn_layer *l, maxpool_state *s, size_t n)
{
    if (s->argmax && s->argmax_cap >= n) return DN_OK;
    int *p = realloc(s->argmax, (n ? n : 1) * sizeof(int));
    if (!p) return dn_layer_fail(l, DN_ERR_NOMEM, "out of memory for the max indices (%zu)", n);
    s->argmax = p;
    s->argmax_cap = n;
    return DN_OK;
}

/* The spatial max of every window with the index of its argmax in the image,
 * for the planes (image, channel) p0 <= b*C + c < p1. */
static void pool_argmax_planes(const maxpool_state *s, const dn_layer *l, const float *in, float *out, int *idx,
                               int p0, int p1)
{
    const int off = -s->padding / 2;
    const size_t hw = (size_t)l->h * l->w, ohw = (size_t)l->out_h * l->out_w;
    for (int plane = p0; plane < p1; ++plane) {
        const int b = plane / l->c, c = plane % l->c;
            const float *src = in + ((size_t)b * l->c + c) * hw;
            const size_t o0 = ((size_t)b * l->out_c + c) * ohw;
            for (int i = 0; i < l->out_h; ++i)
                for (int j = 0; j < l->out_w; ++j) {
                    const int y0 = off + i * s->stride_y, x0 = off + j * s->stride_x;
                    float best = -FLT_MAX;
                    int where = -1;
                    for (int n = 0; n < s->size; ++n) {
                        const int y = y0 + n;
                        if (y < 0 || y >= l->h) continue;
                        for (int m = 0; m < s->size; ++m) {
                            const int x = x0 + m;
                            if (x < 0 || x >= l->w) continue;
                            const float v = src[(size_t)y * l->w + x];
                            if (v > best || where < 0) {
                                best = v > best ? v : best;
                                where = y * l->w + x;
                            }
                        }
                    }
                    const size_t o = o0 + (size_t)i * l->out_w + j;
                    out[o] = best;
                    if (idx) idx[o] = where < 0 ? -1 : (int)(c * hw + (size_t)where);
                }
        }
}

/* The max across channels g, g + out_c, ... at every pixel, with its index. */
static void depth_argmax(const dn_layer *l, const float *in, float *out, int *idx)
{
    const size_t hw = (size_t)l->h * l->w;
    for (int b = 0; b < l->batch; ++b)
        for (int g = 0; g < l->out_c; ++g) {
            const size_t o0 = ((size_t)b * l->out_c + g) * hw;
            for (size_t i = 0; i < hw; ++i) {
                float best = -FLT_MAX;
                int where = -1;
                for (int k = g; k < l->c; k += l->out_c) {
                    const float v = in[((size_t)b * l->c + k) * hw + i];
                    if (v > best || where < 0) {
                        best = v > best ? v : best;
                        where = (int)(k * hw + i);
                    }
                }
                out[o0 + i] = best;
                if (idx) idx[o0 + i] = where;
            }
        }
}

/* pool_argmax_planes for 2x2 windows of stride 2 inside the image (the
 * common case), without bounds checks; the same comparisons in the same order. */
static void pool2x2_argmax_planes(const dn_layer *l, const float *in, float *out, int *idx, int p0, int p1)
{
    const size_t hw = (size_t)l->h * l->w, ohw = (size_t)l->out_h * l->out_w;
    for (int plane = p0; plane < p1; ++plane) {
        const int c = plane % l->c;
        const float *src = in + (size_t)plane * hw;
        float *o = out + (size_t)plane * ohw;
        int *ix = idx + (size_t)plane * ohw;
        for (int i = 0; i < l->out_h; ++i) {
            const float *r0 = src + (size_t)(2 * i) * l->w, *r1 = r0 + l->w;
            for (int j = 0; j < l->out_w; ++j) {
                const float v[4] = {r0[2 * j], r0[2 * j + 1], r1[2 * j], r1[2 * j + 1]};
                const int at[4] = {2 * i * l->w + 2 * j, 2 * i * l->w + 2 * j + 1, (2 * i + 1) * l->w + 2 * j,
                                   (2 * i + 1) * l->w + 2 * j + 1};
                float best = -FLT_MAX;
                int where = -1;
                for (int q = 0; q < 4; ++q)
                    if (v[q] > best || where < 0) {
                        best = v[q] > best ? v[q] : best;
                        where = at[q];
                    }
                o[(size_t)i * l->out_w + j] = best;
                ix[(size_t)i * l->out_w + j] = (int)(c * hw + (size_t)where);
            }
        }
    }
}

static void pool_argmax(const maxpool_state *s, const dn_layer *l, const float *in, float *out, int *idx)
{
    pool_argmax_planes(s, l, in, out, idx, 0, l->batch * l->c);
}

/* ---- split over the worker threads (DN_SPEED_THREADS): tasks over planes ---- */
typedef struct {
    const maxpool_state *s;
    const dn_layer *l;
    const dn_net *net;
    const float *in;
    int *idx;
    int fast;
} pool_job;

static void pool_planes(void *ctx, int task, int worker)
{
    const pool_job *j = ctx;
    const maxpool_state *s = j->s;
    const dn_layer *l = j->l;
    const size_t hw = (size_t)l->h * l->w, ohw = (size_t)l->out_h * l->out_w;
    dn_maxpool_separable(j->in + (size_t)task * hw, 1, l->h, l->w, s->size, s->stride_y, s->stride_x, s->padding,
                         l->out_h, l->out_w, l->output + (size_t)task * ohw, dn_scratch(j->net, l, worker));
}

static void pool_range(void *ctx, size_t p0, size_t p1)
{
    const pool_job *j = ctx;
    const maxpool_state *s = j->s;
    const dn_layer *l = j->l;
    const size_t hw = (size_t)l->h * l->w, ohw = (size_t)l->out_h * l->out_w;
    if (j->idx && j->fast) pool2x2_argmax_planes(l, j->in, l->output, j->idx, (int)p0, (int)p1);
    else if (j->idx) pool_argmax_planes(s, l, j->in, l->output, j->idx, (int)p0, (int)p1);
    else if (j->fast) dn_maxpool2x2(j->in + p0 * hw, (int)(p1 - p0), l->h, l->w, l->out_h, l->out_w, l->output + p0 * ohw);
    else dn_pool2d(j->in + p0 * hw, 1, (int)(p1 - p0), l->h, l->w, s->size, s->stride_y, s->stride_x, s->padding,
                   l->out_h, l->out_w, DN_POOL_MAX, l->output + p0 * ohw);
}

static void maxpool_forward_threaded(const maxpool_state *s, const dn_layer *l, dn_net *net, const float *in, int *idx)
{
    pool_job j = {s, l, net, in, idx, 0};
    j.fast = s->size == 2 && s->stride_x == 2 && s->stride_y == 2 && s->padding / 2 == 0 && 2 * l->out_h <= l->h &&
             2 * l->out_w <= l->w;
    if (!idx && l->worker_workspace) {
        /* large windows (SPP blocks): rows then columns, one plane per task */
        dn_parallel(net, l->batch * l->c, pool_planes, &j);
        return;
    }
    const size_t work = (size_t)l->out_h * l->out_w * s->size * s->size;
    const size_t grain = work >= 16384 ? 1 : 16384 / work;
    dn_parallel_range(net, (size_t)l->batch * l->c, grain, pool_range, &j);
}

static dn_status maxpool_forward(dn_layer *l, dn_net *net)
{
    maxpool_state *s = l->priv;
    const float *in = dn_layer_input(net, l);
    int *idx = NULL;
    if (net->train) {
        dn_status st = ensure_argmax(l, s, (size_t)l->batch * l->outputs);
        if (st) return st;
        idx = s->argmax;
    }
    if (s->depth) depth_argmax(l, in, l->output, idx);
    else if (net->speed & DN_SPEED_THREADS) maxpool_forward_threaded(s, l, net, in, idx);
    else if (idx) pool_argmax(s, l, in, l->output, idx);
    else dn_pool2d(in, l->batch, l->c, l->h, l->w, s->size, s->stride_y, s->stride_x, s->padding, l->out_h, l->out_w,
                   DN_POOL_MAX, l->output);
    return DN_OK;
}

/* backward of the spatial mode for the planes [p0, p1): each output plane's
 * argmax indices point into its own input plane, so planes are independent */
typedef struct {
    const dn_layer *l;
    const maxpool_state *s;
    float *d;
} unpool_job;

static void unpool_range(void *ctx, size_t p0, size_t p1)
{
    const unpool_job *j = ctx;
    const dn_layer *l = j->l;
    const size_t ohw = (size_t)l->out_h * l->out_w;
    for (size_t plane = p0; plane < p1; ++plane) {
        const size_t b = plane / (size_t)l->c;
        const int *idx = j->s->argmax + plane * ohw;
        const float *delta = l->delta + plane * ohw;
        float *din = j->d + b * l->inputs;
        for (size_t o = 0; o < ohw; ++o)
            if (idx[o] >= 0) din[idx[o]] += delta[o];
    }
}

static dn_status maxpool_backward(dn_layer *l, dn_net *net)
{
    maxpool_state *s = l->priv;
    float *d = dn_layer_input_delta(net, l);
    if (!d) return DN_OK;
    if (!s->argmax || s->argmax_cap < (size_t)l->batch * l->outputs)
        return dn_layer_fail(l, DN_ERR_STATE, "no training forward pass recorded the max indices");
    if (!s->depth && (net->speed & DN_SPEED_THREADS)) {
        unpool_job j = {l, s, d};
        const size_t per = (size_t)l->out_h * l->out_w;
        dn_parallel_range(net, (size_t)l->batch * l->c, per >= 16384 ? 1 : 16384 / per, unpool_range, &j);
        return DN_OK;
    }
    for (int b = 0; b < l->batch; ++b) {
        const int *idx = s->argmax + (size_t)b * l->outputs;
        const float *delta = l->delta + (size_t)b * l->outputs;
        float *din = d + (size_t)b * l->inputs;
        for (size_t o = 0; o < l->outputs; ++o)
            if (idx[o] >= 0) din[idx[o]] += delta[o];
    }
    return DN_OK;
}

const dn_layer_ops dn_maxpool_ops = {
    .type = "maxpool",
    .make = maxpool_make,
    .setup = maxpool_setup,
    .forward = maxpool_forward,
    .backward = maxpool_backward,
    DN_GPU_OPS(dn_maxpool_forward_gpu, dn_maxpool_backward_gpu),
};

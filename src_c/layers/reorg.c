/* reorg.c - [reorg] (darknet's old reorg of yolov2) and [reorg3d] (space-to-depth)
 *
 * Both are darknet's reorg permutation, stride s, run over an index space of
 * (C, H, W) positions per image: position a = (k, j, i) pairs with position
 *     z = (k % (C/s^2), j*s + (k/(C/s^2)) / s, i*s + (k/(C/s^2)) % s)
 * of a tensor of C/s^2 channels and (H*s) x (W*s) pixels (dn_reorg_pair).
 * Forward mode: out[a] = in[z]; reverse=1: out[z] = in[a].
 *
 * [reorg] (darknet's reorg_old_layer, the layer of yolov2's cfgs): the index
 * space is the INPUT's shape (c, h, w), so the input buffer is read as a
 * (c/s^2, h*s, w*s) tensor and the result read back as the output shape:
 *     forward: [B][c][h][w] -> [B][c*s^2][h/s][w/s], needs c % s^2 == 0 and
 *              h, w divisible by s;
 *     reverse: [B][c][h][w] -> [B][c/s^2][h*s][w*s], needs c % s^2 == 0.
 * [reorg3d] (darknet's reorg_layer): the index space is the OUTPUT's shape,
 * which makes the forward mode the true space-to-depth
 *     out[k][j][i] = in[k % c][j*s + (k/c) / s][i*s + (k/c) % s],
 * [B][c][h][w] -> [B][c*s^2][h/s][w/s] (h, w divisible by s); reverse=1 maps
 * to [B][c/s^2][h*s][w*s] and needs c % s^4 == 0.
 * Both move every value to exactly one place, so the backward pass is the
 * inverse permutation applied to the delta, added into the input delta
 * (darknet assigns it, which drops what other consumers of the input added
 * before; the sum is the true derivative). */
#include "../ops/ops.h"
#include "cuda.h"
#include "../ops/layer_math.h"

typedef struct {
    int stride, reverse;
} reorg_state;

static dn_status reorg_make(dn_layer *l, dn_net *net)
{
    (void)net;
    reorg_state *s = dn_layer_priv(l, sizeof(reorg_state));
    if (!s) return DN_ERR_NOMEM;
    dn_status st;
    if ((st = dn_attr_int(l, "stride", &s->stride)) || (st = dn_attr_int(l, "reverse", &s->reverse))) return st;
    if (s->stride < 1) return dn_layer_fail(l, DN_ERR_ARG, "stride must be positive");
    return DN_OK;
}

extern const dn_layer_ops dn_reorg_ops;

static int reorg_is_old(const dn_layer *l) { return l->ops == &dn_reorg_ops; }

static dn_status reorg_setup(dn_layer *l, dn_net *net)
{
    (void)net;
    reorg_state *s = l->priv;
    const int ss = s->stride * s->stride, old = reorg_is_old(l);
    const int need = old ? ss : s->reverse ? ss * ss : 1;
    if (l->c % need)
        return dn_layer_fail(l, DN_ERR_SHAPE, "channels %d not divisible by stride^%d=%d", l->c, need == ss ? 2 : 4,
                             need);
    if (s->reverse) {
        l->out_c = l->c / ss;
        l->out_h = l->h * s->stride;
        l->out_w = l->w * s->stride;
    } else {
        if (l->h % s->stride || l->w % s->stride)
            return dn_layer_fail(l, DN_ERR_SHAPE, "input %d x %d not divisible by stride %d", l->h, l->w, s->stride);
        l->out_c = l->c * ss;
        l->out_h = l->h / s->stride;
        l->out_w = l->w / s->stride;
    }
    return DN_OK;
}

/* the index space of the permutation: the input's shape for [reorg], the output's for [reorg3d] */
void dn_reorg_space(const dn_layer *l, int *w, int *h, int *c)
{
    const int old = reorg_is_old(l);
    *w = old ? l->w : l->out_w;
    *h = old ? l->h : l->out_h;
    *c = old ? l->c : l->out_c;
}

/* the permutation over a (c, h, w) index space: to_z: out[z] = x[a], else
 * out[a] = x[z]; accumulate: += instead of =. */
static void reorg_map(const float *x, const dn_layer *l, int s, int to_z, int accumulate, float *out)
{
    int w, h, c;
    dn_reorg_space(l, &w, &h, &c);
    const size_t n = (size_t)l->batch * c * h * w;
    for (size_t a = 0; a < n; ++a) {
        const size_t z = dn_reorg_pair(a, w, h, c, s);
        const size_t dst = to_z ? z : a, src = to_z ? a : z;
        if (accumulate) out[dst] += x[src];
        else out[dst] = x[src];
    }
}

static dn_status reorg_forward(dn_layer *l, dn_net *net)
{
    reorg_state *s = l->priv;
    reorg_map(dn_layer_input(net, l), l, s->stride, s->reverse, 0, l->output);
    return DN_OK;
}

static dn_status reorg_backward(dn_layer *l, dn_net *net)
{
    reorg_state *s = l->priv;
    float *d = dn_layer_input_delta(net, l);
    if (!d) return DN_OK;
    reorg_map(l->delta, l, s->stride, !s->reverse, 1, d);
    return DN_OK;
}

const dn_layer_ops dn_reorg_ops = {
    .type = "reorg",
    .make = reorg_make,
    .setup = reorg_setup,
    .forward = reorg_forward,
    .backward = reorg_backward,
    DN_GPU_OPS(dn_reorg_forward_gpu, dn_reorg_backward_gpu),
};

const dn_layer_ops dn_reorg3d_ops = {
    .type = "reorg3d",
    .make = reorg_make,
    .setup = reorg_setup,
    .forward = reorg_forward,
    .backward = reorg_backward,
    DN_GPU_OPS(dn_reorg_forward_gpu, dn_reorg_backward_gpu),
};

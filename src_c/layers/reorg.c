/* reorg.c - [reorg] (darknet's space-to-depth of yolov2)
 *
 * stride s, forward mode: input [B][C][H][W] to output [B][C*s*s][H/s][W/s] with
 *     out[k][j][i] = in[k % C][j*s + (k/C) / s][i*s + (k/C) % s].
 * reverse=1: output [B][C/(s*s)][H*s][W*s], filled by darknet's reorg
 * permutation run over the output's own shape (see reorg_map); darknet's
 * index arithmetic then needs C divisible by s^4.
 * Both modes move every value to exactly one place (a permutation), so the
 * backward pass is the inverse permutation applied to the delta, added into
 * the input delta. */
#include "internal.h"
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

static dn_status reorg_setup(dn_layer *l, dn_net *net)
{
    (void)net;
    reorg_state *s = l->priv;
    const int ss = s->stride * s->stride;
    if (s->reverse) {
        if (l->c % (ss * ss))
            return dn_layer_fail(l, DN_ERR_SHAPE, "channels %d not divisible by stride^4=%d", l->c, ss * ss);
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

/* darknet's reorg index map over an (oc, oh, ow) index space: position
 * (k, j, i) pairs with (k % ic, j*s + (k/ic)/s, i*s + (k/ic)%s) in a tensor of
 * ic channels and (oh*s) x (ow*s) pixels, ic = oc / (s*s) (dn_reorg_pair).
 * to_z: out[z] = x[a], else out[a] = x[z]; accumulate: += instead of =. */
static void reorg_map(const float *x, int ow, int oh, int oc, int batch, int s, int to_z, int accumulate, float *out)
{
    const size_t n = (size_t)batch * oc * oh * ow;
    for (size_t a = 0; a < n; ++a) {
        const size_t z = dn_reorg_pair(a, ow, oh, oc, s);
        const size_t dst = to_z ? z : a, src = to_z ? a : z;
        if (accumulate) out[dst] += x[src];
        else out[dst] = x[src];
    }
}

static dn_status reorg_forward(dn_layer *l, dn_net *net)
{
    reorg_state *s = l->priv;
    reorg_map(dn_layer_input(net, l), l->out_w, l->out_h, l->out_c, l->batch, s->stride, s->reverse, 0, l->output);
    return DN_OK;
}

static dn_status reorg_backward(dn_layer *l, dn_net *net)
{
    reorg_state *s = l->priv;
    float *d = dn_layer_input_delta(net, l);
    if (!d) return DN_OK;
    reorg_map(l->delta, l->out_w, l->out_h, l->out_c, l->batch, s->stride, !s->reverse, 1, d);
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

/* shortcut.c - [shortcut]
 *
 * out = act(in + sum_i from_i) where `in` is the previous layer's output and
 * the from_i are the listed layers, all of the same shape [B][C][H][W]. With
 * weights_type per_feature (one weight per source, including the input) or
 * per_channel (one per source and channel), each term is scaled by its weight,
 * optionally normalized across the sources (weights_normalization relu:
 * w' = relu(w) / (eps + sum relu(w)), softmax: w' = exp(w - max) / (eps + sum exp),
 * eps = 1e-4).
 *
 * One source of a different size (pjreddie's resnet cfgs) is added over the
 * overlapping channels with nearest sampling: in[c][y*r][x*r] += from[c][y*s][x*s]
 * where s = from size / out size and r = out size / from size (the larger of
 * each pair is 1), which needs sizes that divide each other.
 *
 * Backward, with g = dL/d(out) * act'(pre-activation):
 *   unweighted: g is added to the input's delta and to every source's delta
 *     (the sampled source gets g at the pixels it was read from);
 *   weighted: term t (t = 0 the input, t = i + 1 source i) gets g * w'_t, and
 *     with G_t = sum over batch and pixels (of the weight's channels) of g * term_t,
 *     none:    dL/dw_t = G_t
 *     relu:    dL/dw_u = [w_u > 0] (G_u - D) / S   with S = eps + sum relu(w), D = sum_t G_t w'_t
 *     softmax: dL/dw_u = w'_u (G_u - D), plus -eps D / S to the largest weight
 *              (through the shift by the max, which eps makes visible). */
#include "../ops/ops.h"
#include "cuda.h"
#include "../ops/layer_math.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { W_NONE, W_PER_FEATURE, W_PER_CHANNEL };
typedef struct {
    const int *src;
    int nsrc, weights_type, normalization;
    dn_activation activation;
    float *weights;
    float *wn;            /* nsrc + 1 normalized weights of one channel */
    double *wsum;         /* nsrc + 1 weight-gradient sums of one weight group */
    float *x, *g;         /* training: pre-activation output; backward: delta times act' */
    size_t x_cap, g_cap;
} shortcut_state;

static dn_status shortcut_make(dn_layer *l, dn_net *net)
{
    shortcut_state *s = dn_layer_priv(l, sizeof(shortcut_state));
    if (!s) return DN_ERR_NOMEM;
    if (dn_layer_owns(l, &s->wn, &s->wsum, &s->x, &s->g, NULL)) return DN_ERR_ARG;
    const char *act, *wt, *wn;
    dn_status st;
    if ((st = dn_layer_sources(l, net, "from", &s->src, &s->nsrc)) || (st = dn_attr_string(l, "activation", &act)) ||
        (st = dn_attr_string(l, "weights_type", &wt)) || (st = dn_attr_string(l, "weights_normalization", &wn)))
        return st;
    if ((st = dn_activation_from_name(act, &s->activation))) return dn_layer_fail(l, st, "unknown activation '%s'", act);
    if (!strcmp(wt, "none")) s->weights_type = W_NONE;
    else if (!strcmp(wt, "per_feature")) s->weights_type = W_PER_FEATURE;
    else if (!strcmp(wt, "per_channel")) s->weights_type = W_PER_CHANNEL;
    else return dn_layer_fail(l, DN_ERR_ARG, "weights_type must be none, per_feature or per_channel, got '%s'", wt);
    if (!strcmp(wn, "none")) s->normalization = DN_WNORM_NONE;
    else if (!strcmp(wn, "relu")) s->normalization = DN_WNORM_RELU;
    else if (!strcmp(wn, "softmax")) s->normalization = DN_WNORM_SOFTMAX;
    else return dn_layer_fail(l, DN_ERR_ARG, "weights_normalization must be none, relu or softmax, got '%s'", wn);
    if (s->weights_type != W_NONE) {
        size_t n = (size_t)(s->nsrc + 1) * (s->weights_type == W_PER_CHANNEL ? (size_t)l->c : 1);
        if ((st = dn_layer_add_param(l, "weights", n, &s->weights))) return st;
        for (size_t i = 0; i < n; ++i) s->weights[i] = 1.f;
        s->wn = dn_calloc((size_t)s->nsrc + 1, sizeof(float));
        s->wsum = dn_calloc((size_t)s->nsrc + 1, sizeof(double));
        if (!s->wn || !s->wsum) return dn_layer_fail(l, DN_ERR_NOMEM, "out of memory");
    }
    return DN_OK;
}

static dn_status shortcut_setup(dn_layer *l, dn_net *net)
{
    shortcut_state *s = l->priv;
    l->out_c = l->c;
    l->out_h = l->h;
    l->out_w = l->w;
    if (s->weights_type == W_PER_CHANNEL && l->params[0].count != (size_t)(s->nsrc + 1) * l->c)
        return dn_layer_fail(l, DN_ERR_SHAPE, "the input has %d channels but the per_channel weights were made for %zu",
                             l->c, l->params[0].count / (size_t)(s->nsrc + 1));
    for (int i = 0; i < s->nsrc; ++i) {
        const dn_layer *p = net->layers[s->src[i]];
        if (p->out_c == l->c && p->out_h == l->h && p->out_w == l->w) continue;
        const int big_w = p->out_w > l->w ? p->out_w : l->w, small_w = p->out_w > l->w ? l->w : p->out_w;
        const int big_h = p->out_h > l->h ? p->out_h : l->h, small_h = p->out_h > l->h ? l->h : p->out_h;
        const int sampled = s->nsrc == 1 && s->weights_type == W_NONE && big_w % small_w == 0 && big_h % small_h == 0 &&
                            big_w / small_w == big_h / small_h && (p->out_w >= l->w) == (p->out_h >= l->h);
        if (!sampled)
            return dn_layer_fail(l, DN_ERR_SHAPE, "layer %d is %d x %d x %d but the input is %d x %d x %d (c x h x w)",
                                 p->index, p->out_c, p->out_h, p->out_w, l->c, l->h, l->w);
        dn_log(net, DN_LOG_WARN,
               "layer %d [shortcut]: layer %d of %d x %d x %d is sampled onto the input of %d x %d x %d (c x h x w), "
               "as pjreddie's darknet does", l->index, p->index, p->out_c, p->out_h, p->out_w, l->c, l->h, l->w);
    }
    return DN_OK;
}

static int same_size(const dn_layer *l, const dn_layer *p)
{
    return p->outputs == l->outputs && p->out_w == l->out_w;
}

/* pjreddie's shortcut between layers of different sizes: out[o] += p->output[a]
 * over the sampled pairs (o, a), or in the backward direction p->delta[a] += g[o]. */
static void sampled_pairs(const dn_layer *l, dn_layer *p, const float *g, float *out, int backward)
{
    const dn_sample_shape q = {l->out_c, l->out_h, l->out_w, p->out_c, p->out_h, p->out_w};
    const size_t n = dn_sample_count(&q, l->batch);
    for (size_t t = 0; t < n; ++t) {
        size_t o, a;
        dn_sample_pair(&q, t, &o, &a);
        if (backward) p->delta[a] += g[o];
        else out[o] += p->output[a];
    }
}

/* The normalized weights of every term for channel c into s->wn; returns the
 * normalizer S (1 without normalization) and in *imax the term of the largest weight. */
static float normalized_weights(const dn_layer *l, const shortcut_state *s, int c, int *imax)
{
    const int per_channel = s->weights_type == W_PER_CHANNEL;
    return dn_shortcut_weights(s->weights, s->nsrc + 1, per_channel ? l->c : 1, per_channel ? c : 0, s->normalization,
                               s->wn, imax);
}

/* the unweighted sum of same-size sources and an elementwise activation,
 * split over the worker threads (DN_SPEED_THREADS) */
typedef struct {
    dn_layer *l;
    dn_net *net;
    const float *in;
    float *keep; /* pre-activation copy, or NULL */
} sum_job;

static void sum_range(void *ctx, size_t b, size_t e)
{
    const sum_job *j = ctx;
    const shortcut_state *s = j->l->priv;
    float *out = j->l->output;
    memcpy(out + b, j->in + b, (e - b) * sizeof(float));
    for (int i = 0; i < s->nsrc; ++i) {
        const float *src = j->net->layers[s->src[i]]->output;
        for (size_t k = b; k < e; ++k) out[k] += src[k];
    }
    if (j->keep) memcpy(j->keep + b, out + b, (e - b) * sizeof(float));
    dn_activate_slice(out + b, e - b, s->activation);
}

static int plain_sum(const dn_layer *l, const dn_net *net, const shortcut_state *s)
{
    if (s->weights_type != W_NONE || s->activation == DN_ACT_NORM_CHAN || s->activation == DN_ACT_NORM_CHAN_SOFTMAX ||
        s->activation == DN_ACT_NORM_CHAN_SOFTMAX_MAXVAL)
        return 0;
    for (int i = 0; i < s->nsrc; ++i)
        if (!same_size(l, net->layers[s->src[i]])) return 0;
    return 1;
}

static dn_status shortcut_forward(dn_layer *l, dn_net *net)
{
    shortcut_state *s = l->priv;
    const float *in = dn_layer_input(net, l);
    const size_t n = (size_t)l->batch * l->outputs;
    if ((net->speed & DN_SPEED_THREADS) && plain_sum(l, net, s)) {
        sum_job j = {l, net, in, NULL};
        if (net->train && dn_activation_needs_input(s->activation)) {
            dn_status st = dn_ensure_floats(&s->x, &s->x_cap, n);
            if (st) return dn_layer_fail(l, st, "out of memory for the pre-activation values");
            j.keep = s->x;
        }
        dn_parallel_range(net, n, 32768, sum_range, &j);
        return DN_OK;
    }
    if (s->weights_type == W_NONE) {
        memcpy(l->output, in, n * sizeof(float));
        for (int i = 0; i < s->nsrc; ++i) {
            dn_layer *p = net->layers[s->src[i]];
            if (!same_size(l, p)) {
                sampled_pairs(l, p, NULL, l->output, 0);
                continue;
            }
            for (size_t k = 0; k < n; ++k) l->output[k] += p->output[k];
        }
    } else {
        const size_t hw = (size_t)l->out_h * l->out_w;
        for (int c = 0; c < l->c; ++c) {
            int imax;
            normalized_weights(l, s, c, &imax);
            const float *w = s->wn;
            for (int b = 0; b < l->batch; ++b) {
                const size_t off = ((size_t)b * l->c + c) * hw;
                for (size_t k = 0; k < hw; ++k) l->output[off + k] = in[off + k] * w[0];
                for (int i = 0; i < s->nsrc; ++i) {
                    const float *src = net->layers[s->src[i]]->output + off;
                    for (size_t k = 0; k < hw; ++k) l->output[off + k] += src[k] * w[i + 1];
                }
            }
        }
    }
    return dn_activate_output(l, net, s->activation, &s->x, &s->x_cap);
}

/* Weighted backward: the terms' deltas and the weights' gradient, one weight
 * group at a time (per_channel: a channel; per_feature: all channels). */
static void weighted_backward(dn_layer *l, dn_net *net, const float *g)
{
    shortcut_state *s = l->priv;
    const float *in = dn_layer_input(net, l);
    float *din = dn_layer_input_delta(net, l);
    float *grad = l->params[0].grad;
    const int per_channel = s->weights_type == W_PER_CHANNEL;
    const int terms = s->nsrc + 1, step = per_channel ? l->c : 1;
    const size_t hw = (size_t)l->out_h * l->out_w;
    for (int gi = 0; gi < (per_channel ? l->c : 1); ++gi) {
        int imax;
        const float S = normalized_weights(l, s, gi, &imax);
        const float *w = s->wn;
        double *G = s->wsum;
        for (int t = 0; t < terms; ++t) G[t] = 0;
        const int c0 = per_channel ? gi : 0, c1 = per_channel ? gi + 1 : l->c;
        for (int c = c0; c < c1; ++c)
            for (int b = 0; b < l->batch; ++b) {
                const size_t off = ((size_t)b * l->c + c) * hw;
                const float *gb = g + off;
                double acc = 0;
                for (size_t k = 0; k < hw; ++k) acc += (double)gb[k] * in[off + k];
                G[0] += acc;
                if (din)
                    for (size_t k = 0; k < hw; ++k) din[off + k] += gb[k] * w[0];
                for (int i = 0; i < s->nsrc; ++i) {
                    dn_layer *p = net->layers[s->src[i]];
                    const float *src = p->output + off;
                    float *dsrc = p->delta + off;
                    acc = 0;
                    for (size_t k = 0; k < hw; ++k) {
                        acc += (double)gb[k] * src[k];
                        dsrc[k] += gb[k] * w[i + 1];
                    }
                    G[i + 1] += acc;
                }
            }
        if (!grad) continue;
        dn_shortcut_weight_grad(G, w, s->weights, S, imax, terms, step, per_channel ? gi : 0, s->normalization,
                                grad + (per_channel ? gi : 0));
    }
}

static dn_status shortcut_backward(dn_layer *l, dn_net *net)
{
    shortcut_state *s = l->priv;
    const size_t n = (size_t)l->batch * l->outputs;
    const float *g;
    dn_status st = dn_activation_delta(l, s->activation, s->x, s->x_cap, &s->g, &s->g_cap, &g);
    if (st) return st;
    if (s->weights_type != W_NONE) {
        weighted_backward(l, net, g);
        return DN_OK;
    }
    float *din = dn_layer_input_delta(net, l);
    if (din) dn_parallel_add(net, din, g, n);
    for (int i = 0; i < s->nsrc; ++i) {
        dn_layer *p = net->layers[s->src[i]];
        if (!same_size(l, p)) {
            sampled_pairs(l, p, g, NULL, 1);
            continue;
        }
        dn_parallel_add(net, p->delta, g, n);
    }
    return DN_OK;
}

const dn_layer_ops dn_shortcut_ops = {
    .type = "shortcut",
    .make = shortcut_make,
    .setup = shortcut_setup,
    .forward = shortcut_forward,
    .backward = shortcut_backward,
    DN_GPU_OPS(dn_shortcut_forward_gpu, dn_shortcut_backward_gpu),
};

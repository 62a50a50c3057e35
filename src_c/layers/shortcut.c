/* shortcut.c - [shortcut]
 *
 * out = act(in + sum_i from_i) where `in` is the previous layer's output and
 * the from_i are the listed layers, all of the same shape [B][C][H][W]. With
 * weights_type per_feature (one weight per source, including the input) or
 * per_channel (one per source and channel), each term is scaled by its weight,
 * optionally normalized across the sources (weights_normalization relu:
 * w' = relu(w) / (eps + sum relu(w)), softmax: w' = exp(w - max) / (eps + sum exp)).
 *
 * One source of a different size (pjreddie's resnet cfgs) is added over the
 * overlapping channels with nearest sampling: in[c][y*r][x*r] += from[c][y*s][x*s]
 * where s = from size / out size and r = out size / from size (the larger of
 * each pair is 1), which needs sizes that divide each other. */
#include "internal.h"

#include <math.h>
#include <string.h>

enum { W_NONE, W_PER_FEATURE, W_PER_CHANNEL };
enum { N_NONE, N_RELU, N_SOFTMAX };

typedef struct {
    const int *src;
    int nsrc, weights_type, normalization;
    dn_activation activation;
    float *weights;
} shortcut_state;

static dn_status shortcut_make(dn_layer *l, dn_net *net)
{
    shortcut_state *s = dn_layer_priv(l, sizeof(shortcut_state));
    if (!s) return DN_ERR_NOMEM;
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
    if (!strcmp(wn, "none")) s->normalization = N_NONE;
    else if (!strcmp(wn, "relu")) s->normalization = N_RELU;
    else if (!strcmp(wn, "softmax")) s->normalization = N_SOFTMAX;
    else return dn_layer_fail(l, DN_ERR_ARG, "weights_normalization must be none, relu or softmax, got '%s'", wn);
    if (s->weights_type != W_NONE) {
        size_t n = (size_t)(s->nsrc + 1) * (s->weights_type == W_PER_CHANNEL ? (size_t)l->c : 1);
        if ((st = dn_layer_add_param(l, "weights", n, &s->weights))) return st;
        for (size_t i = 0; i < n; ++i) s->weights[i] = 1.f;
    }
    return DN_OK;
}

static dn_status shortcut_setup(dn_layer *l, dn_net *net)
{
    shortcut_state *s = l->priv;
    l->out_c = l->c;
    l->out_h = l->h;
    l->out_w = l->w;
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

/* pjreddie's shortcut between layers of different sizes */
static void add_sampled(const dn_layer *l, const dn_layer *p, float *out)
{
    int stride = p->out_w / l->out_w, sample = l->out_w / p->out_w;
    if (stride < 1) stride = 1;
    if (sample < 1) sample = 1;
    const int minw = p->out_w < l->out_w ? p->out_w : l->out_w;
    const int minh = p->out_h < l->out_h ? p->out_h : l->out_h;
    const int minc = p->out_c < l->out_c ? p->out_c : l->out_c;
    for (int b = 0; b < l->batch; ++b)
        for (int k = 0; k < minc; ++k)
            for (int j = 0; j < minh; ++j)
                for (int i = 0; i < minw; ++i) {
                    size_t o = (size_t)i * sample + (size_t)l->out_w * ((size_t)j * sample + (size_t)l->out_h * (k + (size_t)l->out_c * b));
                    size_t a = (size_t)i * stride + (size_t)p->out_w * ((size_t)j * stride + (size_t)p->out_h * (k + (size_t)p->out_c * b));
                    out[o] += p->output[a];
                }
}

static dn_status shortcut_forward(dn_layer *l, dn_net *net)
{
    shortcut_state *s = l->priv;
    const float *in = dn_layer_input(net, l);
    const size_t n = (size_t)l->batch * l->outputs;
    if (s->weights_type == W_NONE) {
        memcpy(l->output, in, n * sizeof(float));
        for (int i = 0; i < s->nsrc; ++i) {
            const dn_layer *p = net->layers[s->src[i]];
            if (p->outputs != l->outputs || p->out_w != l->out_w) {
                add_sampled(l, p, l->output);
                continue;
            }
            for (size_t k = 0; k < n; ++k) l->output[k] += p->output[k];
        }
    } else {
        /* weight of term t (0 = input, 1.. = sources) for channel c */
        const int per_channel = s->weights_type == W_PER_CHANNEL;
        const int terms = s->nsrc + 1, step = per_channel ? l->c : 1;
        const size_t hw = (size_t)l->out_h * l->out_w;
        for (int c = 0; c < l->c; ++c) {
            float w[64];
            float sum = 1.f, mx = -INFINITY;
            const int wi = per_channel ? c : 0;
            for (int t = 0; t < terms && t < 64; ++t) w[t] = s->weights[wi + t * step];
            if (s->normalization != N_NONE) {
                for (int t = 0; t < terms; ++t) mx = w[t] > mx ? w[t] : mx;
                sum = .0001f;
                for (int t = 0; t < terms; ++t)
                    sum += s->normalization == N_RELU ? (w[t] > 0 ? w[t] : 0.f) : expf(w[t] - mx);
                for (int t = 0; t < terms; ++t)
                    w[t] = (s->normalization == N_RELU ? (w[t] > 0 ? w[t] : 0.f) : expf(w[t] - mx)) / sum;
            }
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
    dn_activate(l->output, l->batch, l->out_c, l->out_h * l->out_w, s->activation);
    return DN_OK;
}


const dn_layer_ops dn_shortcut_ops = {
    .type = "shortcut",
    .make = shortcut_make,
    .setup = shortcut_setup,
    .forward = shortcut_forward,
};

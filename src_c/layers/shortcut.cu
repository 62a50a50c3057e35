/* shortcut.cu - [shortcut] on the device, every case of shortcut.c:
 * out = act(sum of the terms), the terms the input and the `from` sources.
 *  - unweighted, same-size sources: copies and adds; a source of another
 *    size adds over its sampled pairs (layer_math.h's dn_sample_pair, one
 *    thread per pair: the pairs of a source are distinct on both sides);
 *  - weighted (weights_type per_feature or per_channel): one thread per
 *    weight group normalizes its weights (dn_shortcut_weights) into device
 *    slot 2 ([group][term] weights, then S per group, then imax per group),
 *    then each term is added times its channel's weight.
 * Backward, g = delta * act' (device slot 1; slot 0 keeps the pre-activation
 * sum when act' needs it): unweighted, g is added to the input's delta and
 * every source's (over the sampled pairs for another size); weighted, term t's
 * delta gets g * w_t, the sums G of g * term_t per channel and term go to
 * slot 3 (doubles, one thread per channel summing over the batch and plane),
 * and one thread per weight group adds the weights' gradient
 * (dn_shortcut_weight_grad). */
#include "cuda.h"
#include "../ops/ops.h"
#include "../ops/layer_math.h"

#include <string.h>

#define MAX_TERMS 64 /* the input and the sources of a weighted shortcut on the device */

typedef struct {
    const int *src;
    int nsrc, weighted, per_channel, normalization;
    dn_activation act;
} sc_opts;

static dn_status read_options(const dn_layer *l, sc_opts *o)
{
    const char *wt, *wn, *name;
    dn_status s;
    if ((s = dn_attr_ints(l, "from", &o->src, &o->nsrc)) || (s = dn_attr_string(l, "weights_type", &wt)) ||
        (s = dn_attr_string(l, "weights_normalization", &wn)) || (s = dn_attr_string(l, "activation", &name)) ||
        (s = dn_activation_from_name(name, &o->act)))
        return s;
    o->weighted = strcmp(wt, "none") != 0;
    o->per_channel = !strcmp(wt, "per_channel");
    o->normalization = !strcmp(wn, "relu") ? DN_WNORM_RELU : (!strcmp(wn, "softmax") ? DN_WNORM_SOFTMAX : DN_WNORM_NONE);
    return DN_OK;
}

static int same_size(const dn_layer *l, const dn_layer *p) { return p->outputs == l->outputs && p->out_w == l->out_w; }

static dn_sample_shape sample_shape(const dn_layer *l, const dn_layer *p)
{
    const dn_sample_shape q = {l->out_c, l->out_h, l->out_w, p->out_c, p->out_h, p->out_w};
    return q;
}

/* forward: out[o] += src[a]; backward: src_delta[a] += g[o] (the same kernel, the roles swapped) */
__global__ static void sample_kernel(dn_sample_shape q, size_t n, const float *from, float *to, int backward)
{
    DN_KERNEL_LOOP(t, n) {
        size_t o, a;
        dn_sample_pair(&q, t, &o, &a);
        if (backward) to[a] += from[o];
        else to[o] += from[a];
    }
}

static void sampled(const dn_layer *l, const dn_layer *p, const float *from, float *to, int backward)
{
    const dn_sample_shape q = sample_shape(l, p);
    const size_t n = dn_sample_count(&q, l->batch);
    sample_kernel<<<dn_grid(n), DN_LAUNCH>>>(q, n, from, to, backward);
}

/* one thread per weight group: w (groups x terms), then S (groups), then imax (groups) */
__global__ static void norm_kernel(const float *weights, int groups, int terms, int step, int normalization, float *w)
{
    DN_KERNEL_LOOP(gi, groups) {
        int imax;
        w[(size_t)groups * terms + gi] = dn_shortcut_weights(weights, terms, step, (int)gi, normalization,
                                                             w + gi * terms, &imax);
        w[(size_t)groups * (terms + 1) + gi] = (float)imax;
    }
}

/* y (= or +=) x * w[group of the channel][t] */
__global__ static void term_kernel(const float *x, const float *w, size_t n, int channels, size_t hw, int per_channel,
                                   int terms, int t, int accumulate, float *y)
{
    DN_KERNEL_LOOP(o, n) {
        const float v = x[o] * w[(per_channel ? (int)(o / hw % channels) : 0) * terms + t];
        y[o] = accumulate ? y[o] + v : v;
    }
}

/* G[c][t] = sum over the batch (of sums over the plane) of g * term_t, one thread per channel */
__global__ static void term_sums_kernel(const float *g, const float *const *term, int batch, int channels, size_t hw,
                                        int terms, double *G)
{
    DN_KERNEL_LOOP(c, channels) {
        for (int t = 0; t < terms; ++t) {
            double sum = 0;
            for (int b = 0; b < batch; ++b) {
                const size_t off = ((size_t)b * channels + c) * hw;
                double acc = 0;
                for (size_t k = 0; k < hw; ++k) acc += (double)g[off + k] * term[t][off + k];
                sum += acc;
            }
            G[c * terms + t] = sum;
        }
    }
}

__global__ static void weight_grad_kernel(double *G, const float *w, const float *weights, int groups, int channels,
                                          int terms, int step, int normalization, float *grad)
{
    DN_KERNEL_LOOP(gi, groups) {
        double *Gg = G + gi * terms;
        if (groups == 1)
            for (int t = 0; t < terms; ++t) {
                double sum = 0;
                for (int c = 0; c < channels; ++c) sum += G[(size_t)c * terms + t];
                Gg[t] = sum;
            }
        dn_shortcut_weight_grad(Gg, w + gi * terms, weights, w[(size_t)groups * terms + gi],
                                (int)w[(size_t)groups * (terms + 1) + gi], terms, step, (int)gi, normalization,
                                grad + gi);
    }
}

/* the normalized weights into slot 2 (see the top) */
static dn_status normalized_weights(dn_layer *l, const sc_opts *o, int *groups, float **w)
{
    const int terms = o->nsrc + 1;
    *groups = o->per_channel ? l->c : 1;
    dn_status s = dn_gpu_buffer(l, 2, (size_t)*groups * (terms + 2), w);
    if (s) return s;
    norm_kernel<<<dn_grid((size_t)*groups), DN_LAUNCH>>>(l->params[0].data_gpu, *groups, terms, o->per_channel ? l->c : 1,
                                                        o->normalization, *w);
    return DN_OK;
}

static dn_status shortcut_forward_gpu(dn_layer *l, dn_net *net)
{
    sc_opts o;
    dn_status s = read_options(l, &o);
    if (s) return s;
    const size_t n = (size_t)l->batch * l->outputs, hw = (size_t)l->out_h * l->out_w;
    const float *in = dn_gpu_input(net, l);
    if (!o.weighted) {
        dn_gpu_copy(l->output_gpu, in, n);
        for (int i = 0; i < o.nsrc; ++i) {
            const dn_layer *p = net->layers[o.src[i]];
            if (same_size(l, p)) dn_gpu_axpy(l->output_gpu, p->output_gpu, n, 1.f);
            else sampled(l, p, p->output_gpu, l->output_gpu, 0);
        }
    } else {
        int groups;
        float *w;
        if ((s = normalized_weights(l, &o, &groups, &w))) return s;
        for (int t = 0; t <= o.nsrc; ++t)
            term_kernel<<<dn_grid(n), DN_LAUNCH>>>(t ? net->layers[o.src[t - 1]]->output_gpu : in, w, n, l->c, hw,
                                                  o.per_channel, o.nsrc + 1, t, t > 0, l->output_gpu);
    }
    if (net->train && dn_activation_needs_input(o.act)) {
        float *x;
        if ((s = dn_gpu_buffer(l, 0, n, &x))) return s;
        dn_gpu_copy(x, l->output_gpu, n);
    }
    dn_gpu_activate(l->output_gpu, l->batch, l->out_c, (int)hw, o.act);
    return DN_OK;
}

static dn_status weighted_backward(dn_layer *l, dn_net *net, const sc_opts *o, const float *g)
{
    const int terms = o->nsrc + 1;
    const size_t n = (size_t)l->batch * l->outputs, hw = (size_t)l->out_h * l->out_w;
    int groups;
    float *w, *ptrs;
    dn_status s;
    if ((s = normalized_weights(l, o, &groups, &w))) return s;
    /* the terms' device pointers and the sums G share slot 3: pointers first, then doubles */
    const size_t nptr = ((size_t)terms * sizeof(float *) + sizeof(double) - 1) / sizeof(double);
    if ((s = dn_gpu_buffer(l, 3, 2 * (nptr + (size_t)l->c * terms), &ptrs))) return s;
    const float *host_ptrs[MAX_TERMS];
    if (terms > MAX_TERMS)
        return dn_layer_fail(l, DN_ERR_UNSUPPORTED, "%d sources are too many for the device pass", o->nsrc);
    for (int t = 0; t < terms; ++t) {
        const dn_layer *p = t ? net->layers[o->src[t - 1]] : NULL;
        float *dt = t ? p->delta_gpu : dn_gpu_input_delta(net, l);
        host_ptrs[t] = t ? p->output_gpu : dn_gpu_input(net, l);
        if (dt)
            term_kernel<<<dn_grid(n), DN_LAUNCH>>>(g, w, n, l->c, hw, o->per_channel, terms, t, 1, dt);
    }
    if ((s = dn_gpu_push(ptrs, (const float *)host_ptrs, terms * sizeof(float *) / sizeof(float)))) return s;
    const dn_param *p = &l->params[0];
    if (!p->grad_gpu) return DN_OK;
    double *G = (double *)(ptrs + 2 * nptr);
    term_sums_kernel<<<dn_grid((size_t)l->c), DN_LAUNCH>>>(g, (const float *const *)ptrs, l->batch, l->c, hw, terms, G);
    weight_grad_kernel<<<dn_grid((size_t)groups), DN_LAUNCH>>>(G, w, p->data_gpu, groups, l->c, terms,
                                                              o->per_channel ? l->c : 1, o->normalization, p->grad_gpu);
    return DN_OK;
}

static dn_status shortcut_backward_gpu(dn_layer *l, dn_net *net)
{
    sc_opts o;
    dn_status s = read_options(l, &o);
    if (s) return s;
    const size_t n = (size_t)l->batch * l->outputs;
    const float *g;
    if ((s = dn_gpu_activation_delta(l, o.act, l->out_c, l->out_h * l->out_w, &g))) return s;
    if (o.weighted) return weighted_backward(l, net, &o, g);
    float *d = dn_gpu_input_delta(net, l);
    if (d) dn_gpu_axpy(d, g, n, 1.f);
    for (int i = 0; i < o.nsrc; ++i) {
        dn_layer *p = net->layers[o.src[i]];
        if (same_size(l, p)) dn_gpu_axpy(p->delta_gpu, g, n, 1.f);
        else sampled(l, p, g, p->delta_gpu, 1);
    }
    return DN_OK;
}

extern "C" {
dn_status dn_shortcut_forward_gpu(dn_layer *l, dn_net *net) { return shortcut_forward_gpu(l, net); }
dn_status dn_shortcut_backward_gpu(dn_layer *l, dn_net *net) { return shortcut_backward_gpu(l, net); }
}

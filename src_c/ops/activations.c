/* activations.c - darknet's activation functions, applied in place.
 *
 * Elementwise: y = f(x) with darknet's formulas (leaky slope .1, relie .01,
 * elu/selu with exp, tanh as 2/(1+exp(-2x))-1, gelu's tanh approximation,
 * swish x*sigmoid(x), mish x*tanh(softplus(x)) with softplus threshold 20,
 * hard_mish from 0 below -2 through x^2/2+x to x above 0). Across channels at
 * each pixel: normalize_channels y = max(x,0) / (eps + sum max(x,0)); the
 * softmax kinds y = exp(x - m) / (eps + sum exp(x - m)) with m = 0 or the max. */
#include "ops.h"
#include "activation_math.h"

#include <float.h>
#include <math.h>
#include <string.h>

static void across_channels(float *x, int batch, int channels, int spatial, dn_activation a)
{
    const float eps = .0001f;
    for (int b = 0; b < batch; ++b) {
        float *base = x + (size_t)b * channels * spatial;
        for (int i = 0; i < spatial; ++i) {
            float sum = eps, m = 0.f;
            if (a == DN_ACT_NORM_CHAN) {
                for (int k = 0; k < channels; ++k) {
                    float v = base[(size_t)k * spatial + i];
                    if (v > 0) sum += v;
                }
                for (int k = 0; k < channels; ++k) {
                    float *v = &base[(size_t)k * spatial + i];
                    *v = *v > 0 ? *v / sum : 0.f;
                }
                continue;
            }
            if (a == DN_ACT_NORM_CHAN_SOFTMAX_MAXVAL) {
                m = -FLT_MAX;
                for (int k = 0; k < channels; ++k)
                    if (base[(size_t)k * spatial + i] > m) m = base[(size_t)k * spatial + i];
            }
            for (int k = 0; k < channels; ++k) sum += expf(base[(size_t)k * spatial + i] - m);
            for (int k = 0; k < channels; ++k) {
                float *v = &base[(size_t)k * spatial + i];
                *v = expf(*v - m) / sum;
            }
        }
    }
}

void dn_activate(float *x, int batch, int channels, int spatial, dn_activation a)
{
    if (a == DN_ACT_LINEAR) return;
    if (a == DN_ACT_NORM_CHAN || a == DN_ACT_NORM_CHAN_SOFTMAX || a == DN_ACT_NORM_CHAN_SOFTMAX_MAXVAL) {
        across_channels(x, batch, channels, spatial, a);
        return;
    }
    const size_t n = (size_t)batch * channels * spatial;
    dn_affine_activate(x, n, 1.f, 0.f, a);
}

DN_VECTOR_CLONES
static void affine_leaky(float *x, size_t n, float a, float b)
{
    for (size_t i = 0; i < n; ++i) {
        const float v = a * x[i] + b;
        x[i] = v > 0 ? v : .1f * v;
    }
}

DN_VECTOR_CLONES
static void affine_linear(float *x, size_t n, float a, float b)
{
    for (size_t i = 0; i < n; ++i) x[i] = a * x[i] + b;
}

DN_VECTOR_CLONES
static void affine_relu(float *x, size_t n, float a, float b)
{
    for (size_t i = 0; i < n; ++i) {
        const float v = a * x[i] + b;
        x[i] = v > 0 ? v : 0.f;
    }
}

/* e^x in a form the compiler vectorizes (Cody-Waite reduction x = k ln2 + r
 * with k rounded to nearest by the 1.5 * 2^23 trick, Cephes' degree-6
 * polynomial for e^r, 2^k through the exponent bits): within about 1 ulp of
 * expf. Arguments are clamped to keep 2^k a normal float; NaN passes through. */
static inline float exp_vec(float x)
{
    float xc = x > 88.3762626647949f ? 88.3762626647949f : x;
    xc = xc < -87.3365478515625f ? -87.3365478515625f : xc;
    xc = xc == xc ? xc : 0.f;
    const float k = (xc * 1.44269504088896341f + 12582912.f) - 12582912.f;
    const float r = xc - k * 0.693359375f + k * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.f;
    const int bits = ((int)k + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof(scale));
    const float v = p * scale;
    return x == x ? v : x;
}

DN_VECTOR_CLONES
static void affine_logistic(float *x, size_t n, float a, float b)
{
    for (size_t i = 0; i < n; ++i) x[i] = 1.f / (1.f + exp_vec(-(a * x[i] + b)));
}

void dn_logistic_vec(float *x, size_t n) { affine_logistic(x, n, 1.f, 0.f); }

DN_VECTOR_CLONES
static void affine_swish(float *x, size_t n, float a, float b)
{
    for (size_t i = 0; i < n; ++i) {
        const float v = a * x[i] + b;
        x[i] = v / (1.f + exp_vec(-v));
    }
}

/* mish(v) = v tanh(softplus(v)). With e = e^v, tanh(log(1 + e)) =
 * e (e + 2) / (e (e + 2) + 2), one exponential and no cancellation; above
 * softplus' threshold 20 darknet's value is v tanh(v) = v in float, below -20
 * the form gives v e^v as darknet's v tanh(e^v) does. */
DN_VECTOR_CLONES
static void affine_mish(float *x, size_t n, float a, float b)
{
    for (size_t i = 0; i < n; ++i) {
        const float v = a * x[i] + b;
        const float e = exp_vec(v < 20.f ? v : 0.f);
        const float p = e * (e + 2.f);
        x[i] = v < 20.f ? v * p / (p + 2.f) : v;
    }
}

void dn_affine_activate(float *x, size_t n, float a, float b, dn_activation act)
{
    switch (act) {
    case DN_ACT_LEAKY: affine_leaky(x, n, a, b); return;
    case DN_ACT_LINEAR: affine_linear(x, n, a, b); return;
    case DN_ACT_RELU: affine_relu(x, n, a, b); return;
    case DN_ACT_LOGISTIC: affine_logistic(x, n, a, b); return;
    case DN_ACT_SWISH: affine_swish(x, n, a, b); return;
    case DN_ACT_MISH: affine_mish(x, n, a, b); return;
    default:
        for (size_t i = 0; i < n; ++i) x[i] = activate1(a * x[i] + b, act);
    }
}

/* normalize_channels kinds: dL/dx_j = s_j * (g_j - sum_k g_k y_k) with
 * s_j = 1(x_j > 0) / (eps + sum relu(x)) for the plain kind and s_j = y_j for
 * the softmax kinds (the max shift of _maxval is treated as a constant). */
static void across_channels_backward(const float *y, const float *x, float *delta, int batch, int channels,
                                     int spatial, dn_activation a)
{
    for (int b = 0; b < batch; ++b) {
        const size_t base = (size_t)b * channels * spatial;
        for (int i = 0; i < spatial; ++i) {
            float dot = 0.f, sum = .0001f;
            for (int k = 0; k < channels; ++k) {
                const size_t o = base + (size_t)k * spatial + i;
                dot += delta[o] * y[o];
                if (x[o] > 0) sum += x[o];
            }
            for (int k = 0; k < channels; ++k) {
                const size_t o = base + (size_t)k * spatial + i;
                if (a == DN_ACT_NORM_CHAN) delta[o] = x[o] > 0 ? (delta[o] - dot) / sum : 0.f;
                else delta[o] = y[o] * (delta[o] - dot);
            }
        }
    }
}

dn_status dn_activate_output(dn_layer *l, const dn_net *net, dn_activation act, float **x, size_t *x_cap)
{
    const size_t n = (size_t)l->batch * l->outputs;
    if (net->train && dn_activation_needs_input(act)) {
        dn_status st = dn_ensure_floats(x, x_cap, n);
        if (st) return dn_layer_fail(l, st, "out of memory for the pre-activation values");
        memcpy(*x, l->output, n * sizeof(float));
    }
    dn_activate(l->output, l->batch, l->out_c, l->out_h * l->out_w, act);
    return DN_OK;
}

dn_status dn_activation_delta(dn_layer *l, dn_activation act, const float *x, size_t x_cap, float **g,
                              size_t *g_cap, const float **out)
{
    *out = l->delta;
    if (act == DN_ACT_LINEAR) return DN_OK;
    const size_t n = (size_t)l->batch * l->outputs;
    const int needs_x = dn_activation_needs_input(act);
    if (needs_x && (!x || x_cap < n))
        return dn_layer_fail(l, DN_ERR_STATE, "no training forward pass kept the pre-activation values");
    dn_status st = dn_ensure_floats(g, g_cap, n);
    if (st) return dn_layer_fail(l, st, "out of memory for the activation gradient");
    memcpy(*g, l->delta, n * sizeof(float));
    dn_activation_backward(l->output, needs_x ? x : NULL, *g, l->batch, l->out_c, l->out_h * l->out_w, act);
    *out = *g;
    return DN_OK;
}

void dn_activation_backward(const float *y, const float *x, float *delta, int batch, int channels, int spatial,
                            dn_activation a)
{
    if (a == DN_ACT_LINEAR) return;
    if (a == DN_ACT_NORM_CHAN || a == DN_ACT_NORM_CHAN_SOFTMAX || a == DN_ACT_NORM_CHAN_SOFTMAX_MAXVAL) {
        across_channels_backward(y, x, delta, batch, channels, spatial, a);
        return;
    }
    const size_t n = (size_t)batch * channels * spatial;
    for (size_t i = 0; i < n; ++i) delta[i] *= gradient1(y[i], x ? x[i] : 0.f, a);
}

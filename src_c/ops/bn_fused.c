/* bn_fused.c - one channel's batch norm, bias and activation, forward and
 * backward, each in as few passes over the channel as the maths allows
 * (for loops split over channels on the worker threads).
 *
 * The plain functions (blas.c, activations.c) sum a channel value by value in
 * one double; these sum in DN_LANES doubles side by side (lane l takes every
 * DN_LANES-th value; lanes added in order at the end), which the compiler
 * turns into vector code. The order is fixed by the shape, so results never
 * depend on the thread count; they differ from the plain path only by
 * rounding. Elementwise work is the same arithmetic as the plain path. */
#include "ops.h"

#include <math.h>
#include <string.h>

#define DN_LANES 16

/* sum of x[0..n) and sum of x*y (y may be NULL) into lanes */
DN_VECTOR_CLONES
static void lane_sums(const float *x, const float *y, size_t n, double *sx, double *sxy)
{
    size_t i = 0;
    for (; i + DN_LANES <= n; i += DN_LANES)
        for (int l = 0; l < DN_LANES; ++l) sx[l] += x[i + l];
    for (int l = 0; i + l < n; ++l) sx[l] += x[i + l];
    if (!y) return;
    i = 0;
    for (; i + DN_LANES <= n; i += DN_LANES)
        for (int l = 0; l < DN_LANES; ++l) sxy[l] += (double)x[i + l] * y[i + l];
    for (int l = 0; i + l < n; ++l) sxy[l] += (double)x[i + l] * y[i + l];
}

DN_VECTOR_CLONES
static void lane_sq(const float *x, size_t n, float m, double *sq)
{
    size_t i = 0;
    for (; i + DN_LANES <= n; i += DN_LANES)
        for (int l = 0; l < DN_LANES; ++l) {
            const double d = (double)x[i + l] - m;
            sq[l] += d * d;
        }
    for (int l = 0; i + l < n; ++l) {
        const double d = (double)x[i + l] - m;
        sq[l] += d * d;
    }
}

static double fold(const double *s)
{
    double t = 0;
    for (int l = 0; l < DN_LANES; ++l) t += s[l];
    return t;
}

/* (x - m) * inv -> x and x_norm, then * scale + bias (the plain path's roundings) */
DN_VECTOR_CLONES
static void normalize_scale_bias(float *x, float *xn, size_t n, float m, float inv, float scale, float bias)
{
    for (size_t i = 0; i < n; ++i) {
        float v = (x[i] - m) * inv;
        if (xn) xn[i] = v;
        v *= scale;
        x[i] = v + bias;
    }
}

DN_VECTOR_CLONES
static void leaky_inplace(float *x, size_t n)
{
    for (size_t i = 0; i < n; ++i) x[i] = x[i] > 0 ? x[i] : .1f * x[i];
}

void dn_activate_slice(float *x, size_t n, dn_activation a)
{
    if (a == DN_ACT_LEAKY) leaky_inplace(x, n);
    else if (a != DN_ACT_LINEAR) dn_activate(x, 1, 1, (int)n, a);
}

void dn_bn_forward_channel(const dn_bn_channel *p, int c)
{
    const size_t n = (size_t)p->spatial;
    float m = 0.f, inv = 1.f;
    if (p->phase == 1 || p->phase == 2) { /* a synchronized pass's sums */
        double sx[DN_LANES] = {0};
        for (int b = 0; b < p->batch; ++b) {
            const float *o = p->x + ((size_t)b * p->channels + c) * n;
            if (p->phase == 1) lane_sums(o, NULL, n, sx, NULL);
            else lane_sq(o, n, p->mean[c], sx);
        }
        p->sums[c] = fold(sx);
        return;
    }
    if (p->phase == 3) { /* the statistics of every process's mini-batch */
        m = p->mean[c];
        inv = 1.f / sqrtf(p->variance[c] + .00001f);
    } else if (p->train && p->batch_normalize) {
        double sx[DN_LANES] = {0}, sq[DN_LANES] = {0};
        for (int b = 0; b < p->batch; ++b) lane_sums(p->x + ((size_t)b * p->channels + c) * n, NULL, n, sx, NULL);
        const double count = (double)p->batch * n;
        m = (float)(fold(sx) / count);
        for (int b = 0; b < p->batch; ++b) lane_sq(p->x + ((size_t)b * p->channels + c) * n, n, m, sq);
        p->mean[c] = m;
        p->variance[c] = (float)(fold(sq) / (count - 1));
        const float rolling[2] = {DN_BN_ROLLING}; /* keep, share: a convolution's (core/layer.h) */
        p->rolling_mean[c] = rolling[0] * p->rolling_mean[c] + rolling[1] * p->mean[c];
        p->rolling_variance[c] = rolling[0] * p->rolling_variance[c] + rolling[1] * p->variance[c];
        inv = 1.f / sqrtf(p->variance[c] + .00001f);
    } else if (p->batch_normalize) {
        m = p->rolling_mean[c];
        inv = 1.f / sqrtf(p->rolling_variance[c] + .00001f);
    }
    const float scale = p->batch_normalize ? p->scales[c] : 1.f, bias = p->biases ? p->biases[c] : 0.f;
    for (int b = 0; b < p->batch; ++b) {
        const size_t off = ((size_t)b * p->channels + c) * n;
        float *o = p->x + off;
        if (p->batch_normalize)
            normalize_scale_bias(o, p->train ? p->x_norm + off : NULL, n, m, inv, scale, bias);
        else
            for (size_t i = 0; i < n; ++i) o[i] += bias;
        if (p->keep_x) memcpy(p->pre + off, o, n * sizeof(float));
        if (p->elementwise) dn_activate_slice(o, n, p->activation);
    }
}

/* delta *= f'(y) (leaky vectorized) and the channel's sums */
DN_VECTOR_CLONES
static void leaky_grad(float *d, const float *y, size_t n)
{
    for (size_t i = 0; i < n; ++i) d[i] *= y[i] > 0 ? 1.f : .1f;
}

DN_VECTOR_CLONES
static void bn_delta(float *d, const float *xn, size_t n, float inv, float s, float mean_d, float k)
{
    for (size_t i = 0; i < n; ++i) d[i] = inv * (s * d[i] - mean_d - xn[i] * k);
}

static void bn_backward_step(const dn_bn_channel *p, int c, float *delta, double sum_d, double sum_dx, double count);

void dn_bn_backward_channel(const dn_bn_channel *p, int c, float *delta, float *bias_grad, float *scale_grad)
{
    if (p->phase == 2) {
        bn_backward_step(p, c, delta, p->sums[2 * c], p->sums[2 * c + 1], p->count);
        return;
    }
    const size_t n = (size_t)p->spatial;
    double sd[DN_LANES] = {0}, sdx[DN_LANES] = {0};
    for (int b = 0; b < p->batch; ++b) {
        const size_t off = ((size_t)b * p->channels + c) * n;
        float *d = delta + off;
        if (p->elementwise && p->activation != DN_ACT_LINEAR) {
            if (p->activation == DN_ACT_LEAKY) leaky_grad(d, p->x + off, n);
            else dn_activation_backward(p->x + off, p->keep_x ? p->pre + off : NULL, d, 1, 1, (int)n, p->activation);
        }
        lane_sums(d, p->batch_normalize ? p->x_norm + off : NULL, n, sd, sdx);
    }
    double sum_d = fold(sd);
    if (bias_grad) bias_grad[c] += (float)sum_d;
    if (!p->batch_normalize) return;
    double sum_dx = fold(sdx);
    if (scale_grad) scale_grad[c] += (float)sum_dx;
    double count = (double)p->batch * n;
    if (p->phase == 1) { /* the sums go to the caller, who adds every process's */
        p->sums[2 * c] = sum_d;
        p->sums[2 * c + 1] = sum_dx;
        return;
    }
    bn_backward_step(p, c, delta, sum_d, sum_dx, count);
}

/* the batch-norm step of channel c from the sums of delta and delta*x_norm over `count` values */
static void bn_backward_step(const dn_bn_channel *p, int c, float *delta, double sum_d, double sum_dx, double count)
{
    const size_t n = (size_t)p->spatial;
    const float s = p->scales[c], inv = 1.f / sqrtf(p->variance[c] + .00001f);
    const float mean_d = (float)(s * sum_d / count), k = (float)(s * sum_dx / (count - 1));
    for (int b = 0; b < p->batch; ++b) {
        const size_t off = ((size_t)b * p->channels + c) * n;
        bn_delta(delta + off, p->x_norm + off, n, inv, s, mean_d, k);
    }
}

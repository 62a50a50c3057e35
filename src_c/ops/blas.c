/* blas.c - per-channel helpers on [batch][channels][spatial] tensors: bias,
 * scale, inference and training batch normalization and their gradients. */
#include "ops.h"
#include "layer_math.h"

#include <math.h>
#include <string.h>

void dn_add_bias(float *out, const float *bias, int batch, int channels, int spatial)
{
    for (int b = 0; b < batch; ++b)
        for (int c = 0; c < channels; ++c) {
            float *o = out + ((size_t)b * channels + c) * spatial;
            const float v = bias[c];
            for (int i = 0; i < spatial; ++i) o[i] += v;
        }
}

void dn_scale_bias(float *out, const float *scale, int batch, int channels, int spatial)
{
    for (int b = 0; b < batch; ++b)
        for (int c = 0; c < channels; ++c) {
            float *o = out + ((size_t)b * channels + c) * spatial;
            const float v = scale[c];
            for (int i = 0; i < spatial; ++i) o[i] *= v;
        }
}

/* darknet's inference batch norm: (x - mean) / sqrt(variance + .00001) */
void dn_normalize(float *x, const float *mean, const float *variance, int batch, int channels, int spatial)
{
    for (int c = 0; c < channels; ++c) dn_normalize_channel(x, mean, variance, batch, channels, spatial, c);
}

float dn_logistic(float x) { return dn_logistic1(x); }

/* Softmax of n values `stride` apart, with temperature. */
void dn_softmax(const float *in, int n, float temp, int stride, float *out)
{
    dn_softmax_group(in, n, temp, (size_t)stride, out);
}

void dn_backward_bias(float *grad, const float *delta, int batch, int channels, int spatial)
{
    for (int c = 0; c < channels; ++c) dn_backward_bias_channel(grad, delta, batch, channels, spatial, c);
}

/* Training-mode batch normalization (darknet's): for each channel, over its
 * n = batch*spatial values, mean = sum x / n and the unbiased variance
 * var = sum (x - mean)^2 / (n - 1); x becomes (x - mean) / sqrt(var + .00001)
 * in place and is also copied to x_norm; rolling = keep*rolling + share*batch
 * statistic. Needs n >= 2 (the caller checks). */
void dn_batchnorm_forward_train(float *x, int batch, int channels, int spatial, float *mean, float *variance,
                                float *x_norm, float *rolling_mean, float *rolling_variance, float keep, float share)
{
    for (int c = 0; c < channels; ++c)
        dn_batchnorm_forward_train_channel(x, batch, channels, spatial, c, mean, variance, x_norm, rolling_mean,
                                           rolling_variance, keep, share);
}

/* Backward of y = scale * x_norm (+ bias) with x_norm from
 * dn_batchnorm_forward_train. Adds sum delta*x_norm into scale_grad[c]
 * (unless NULL), then turns delta = dLoss/dy into dLoss/dx in place, the exact
 * derivative through the batch mean and the unbiased variance: with
 * d = scale*delta, inv = 1/sqrt(var + .00001) and n = batch*spatial,
 *     dLoss/dx = inv * (d - sum(d)/n - x_norm * sum(d*x_norm)/(n - 1)).
 * darknet's normalize_delta_cpu differs slightly from this: it divides the
 * variance term by n instead of n - 1 and uses 1/(sqrt(var) + .00001). */
void dn_batchnorm_backward(float *delta, const float *x_norm, const float *variance, const float *scales,
                           float *scale_grad, int batch, int channels, int spatial)
{
    for (int c = 0; c < channels; ++c)
        dn_batchnorm_backward_channel(delta, x_norm, variance, scales, scale_grad, batch, channels, spatial, c);
}

/* ---- one channel at a time, for loops split over the worker threads ----
 * The whole-tensor functions above are loops over these, so the threaded and
 * serial paths do the same arithmetic for each channel. */

void dn_batchnorm_forward_train_channel(float *x, int batch, int channels, int spatial, int c, float *mean,
                                        float *variance, float *x_norm, float *rolling_mean, float *rolling_variance,
                                        float keep, float share)
{
    const double n = (double)batch * spatial;
    double sum = 0, sq = 0;
    for (int b = 0; b < batch; ++b) {
        const float *o = x + ((size_t)b * channels + c) * spatial;
        for (int i = 0; i < spatial; ++i) sum += o[i];
    }
    const float m = (float)(sum / n);
    for (int b = 0; b < batch; ++b) {
        const float *o = x + ((size_t)b * channels + c) * spatial;
        for (int i = 0; i < spatial; ++i) sq += ((double)o[i] - m) * ((double)o[i] - m);
    }
    mean[c] = m;
    variance[c] = (float)(sq / (n - 1));
    rolling_mean[c] = keep * rolling_mean[c] + share * mean[c];
    rolling_variance[c] = keep * rolling_variance[c] + share * variance[c];
    const float inv = 1.f / sqrtf(variance[c] + .00001f);
    for (int b = 0; b < batch; ++b) {
        float *o = x + ((size_t)b * channels + c) * spatial;
        float *xn = x_norm + ((size_t)b * channels + c) * spatial;
        for (int i = 0; i < spatial; ++i) xn[i] = o[i] = (o[i] - m) * inv;
    }
}

void dn_normalize_channel(float *x, const float *mean, const float *variance, int batch, int channels, int spatial,
                          int c)
{
    const float m = mean[c];
    const float inv = 1.f / sqrtf(variance[c] + .00001f);
    for (int b = 0; b < batch; ++b) {
        float *o = x + ((size_t)b * channels + c) * spatial;
        for (int i = 0; i < spatial; ++i) o[i] = (o[i] - m) * inv;
    }
}

void dn_scale_add_bias_channel(float *x, const float *scale, const float *bias, int batch, int channels, int spatial,
                               int c)
{
    for (int b = 0; b < batch; ++b) {
        float *o = x + ((size_t)b * channels + c) * spatial;
        if (scale) {
            const float v = scale[c];
            for (int i = 0; i < spatial; ++i) o[i] *= v;
        }
        if (bias) {
            const float v = bias[c];
            for (int i = 0; i < spatial; ++i) o[i] += v;
        }
    }
}

void dn_backward_bias_channel(float *grad, const float *delta, int batch, int channels, int spatial, int c)
{
    for (int b = 0; b < batch; ++b) {
        const float *d = delta + ((size_t)b * channels + c) * spatial;
        float sum = 0.f;
        for (int i = 0; i < spatial; ++i) sum += d[i];
        grad[c] += sum;
    }
}

void dn_batchnorm_backward_channel(float *delta, const float *x_norm, const float *variance, const float *scales,
                                   float *scale_grad, int batch, int channels, int spatial, int c)
{
    const double n = (double)batch * spatial;
    double sum_d = 0, sum_dx = 0;
    for (int b = 0; b < batch; ++b) {
        const size_t o = ((size_t)b * channels + c) * spatial;
        for (int i = 0; i < spatial; ++i) {
            sum_d += delta[o + i];
            sum_dx += (double)delta[o + i] * x_norm[o + i];
        }
    }
    if (scale_grad) scale_grad[c] += (float)sum_dx;
    const float s = scales[c], inv = 1.f / sqrtf(variance[c] + .00001f);
    const float mean_d = (float)(s * sum_d / n), k = (float)(s * sum_dx / (n - 1));
    for (int b = 0; b < batch; ++b) {
        const size_t o = ((size_t)b * channels + c) * spatial;
        for (int i = 0; i < spatial; ++i) delta[o + i] = inv * (s * delta[o + i] - mean_d - x_norm[o + i] * k);
    }
}

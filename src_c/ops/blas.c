/* blas.c - small per-channel helpers on [batch][channels][spatial] tensors. */
#include "internal.h"

#include <math.h>

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
    for (int b = 0; b < batch; ++b)
        for (int c = 0; c < channels; ++c) {
            float *o = x + ((size_t)b * channels + c) * spatial;
            const float m = mean[c];
            const float inv = 1.f / sqrtf(variance[c] + .00001f);
            for (int i = 0; i < spatial; ++i) o[i] = (o[i] - m) * inv;
        }
}

float dn_logistic(float x) { return 1.f / (1.f + expf(-x)); }

/* Softmax of n values `stride` apart, with temperature. */
void dn_softmax(const float *in, int n, float temp, int stride, float *out)
{
    float largest = -INFINITY, sum = 0.f;
    for (int i = 0; i < n; ++i)
        if (in[(size_t)i * stride] > largest) largest = in[(size_t)i * stride];
    for (int i = 0; i < n; ++i) {
        float e = expf((in[(size_t)i * stride] - largest) / temp);
        sum += e;
        out[(size_t)i * stride] = e;
    }
    for (int i = 0; i < n; ++i) out[(size_t)i * stride] /= sum;
}

void dn_backward_bias(float *grad, const float *delta, int batch, int channels, int spatial)
{
    for (int b = 0; b < batch; ++b)
        for (int c = 0; c < channels; ++c) {
            const float *d = delta + ((size_t)b * channels + c) * spatial;
            float sum = 0.f;
            for (int i = 0; i < spatial; ++i) sum += d[i];
            grad[c] += sum;
        }
}

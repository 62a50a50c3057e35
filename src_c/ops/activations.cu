/* activations.cu - darknet's activations and their derivatives on the
 * device: the same formulas as activations.c (shared through
 * activation_math.h), one thread per value, or per pixel for the kinds that
 * work across channels. */
#include "cuda.h"
#include "activation_math.h"

#include <float.h>


__global__ static void activate_kernel(float *x, size_t n, dn_activation a)
{
    DN_KERNEL_LOOP(i, n) x[i] = activate1(x[i], a);
}

/* one thread per (image, pixel): the loops of activations.c's across_channels */
__global__ static void across_kernel(float *x, int batch, int channels, int spatial, dn_activation a)
{
    DN_KERNEL_LOOP(t, (size_t)batch * spatial) {
        const size_t b = t / spatial, i = t % spatial;
        float *base = x + b * channels * spatial + i;
        float sum = .0001f, m = 0.f;
        if (a == DN_ACT_NORM_CHAN) {
            for (int k = 0; k < channels; ++k)
                if (base[(size_t)k * spatial] > 0) sum += base[(size_t)k * spatial];
            for (int k = 0; k < channels; ++k) {
                float *v = &base[(size_t)k * spatial];
                *v = *v > 0 ? *v / sum : 0.f;
            }
            continue;
        }
        if (a == DN_ACT_NORM_CHAN_SOFTMAX_MAXVAL) {
            m = -FLT_MAX;
            for (int k = 0; k < channels; ++k)
                if (base[(size_t)k * spatial] > m) m = base[(size_t)k * spatial];
        }
        for (int k = 0; k < channels; ++k) sum += expf(base[(size_t)k * spatial] - m);
        for (int k = 0; k < channels; ++k) {
            float *v = &base[(size_t)k * spatial];
            *v = expf(*v - m) / sum;
        }
    }
}

void dn_gpu_activate(float *x, int batch, int channels, int spatial, dn_activation a)
{
    if (a == DN_ACT_LINEAR) return;
    const size_t n = (size_t)batch * channels * spatial;
    if (a == DN_ACT_NORM_CHAN || a == DN_ACT_NORM_CHAN_SOFTMAX || a == DN_ACT_NORM_CHAN_SOFTMAX_MAXVAL)
        across_kernel<<<dn_grid((size_t)batch * spatial), DN_LAUNCH>>>(x, batch, channels, spatial, a);
    else
        activate_kernel<<<dn_grid(n), DN_LAUNCH>>>(x, n, a);
}

__global__ static void gradient_kernel(const float *y, const float *x, float *delta, size_t n, dn_activation a)
{
    DN_KERNEL_LOOP(i, n) delta[i] *= gradient1(y[i], x ? x[i] : 0.f, a);
}

/* activations.c's across_channels_backward, one thread per (image, pixel) */
__global__ static void across_backward_kernel(const float *y, const float *x, float *delta, int batch, int channels,
                                              int spatial, dn_activation a)
{
    DN_KERNEL_LOOP(t, (size_t)batch * spatial) {
        const size_t base = (t / spatial) * channels * spatial + t % spatial;
        float dot = 0.f, sum = .0001f;
        for (int k = 0; k < channels; ++k) {
            const size_t o = base + (size_t)k * spatial;
            dot += delta[o] * y[o];
            if (x[o] > 0) sum += x[o];
        }
        for (int k = 0; k < channels; ++k) {
            const size_t o = base + (size_t)k * spatial;
            if (a == DN_ACT_NORM_CHAN) delta[o] = x[o] > 0 ? (delta[o] - dot) / sum : 0.f;
            else delta[o] = y[o] * (delta[o] - dot);
        }
    }
}

void dn_gpu_activation_backward(const float *y, const float *x, float *delta, int batch, int channels, int spatial,
                                dn_activation a)
{
    if (a == DN_ACT_LINEAR) return;
    const size_t n = (size_t)batch * channels * spatial;
    if (a == DN_ACT_NORM_CHAN || a == DN_ACT_NORM_CHAN_SOFTMAX || a == DN_ACT_NORM_CHAN_SOFTMAX_MAXVAL)
        across_backward_kernel<<<dn_grid((size_t)batch * spatial), DN_LAUNCH>>>(y, x, delta, batch, channels, spatial, a);
    else
        gradient_kernel<<<dn_grid(n), DN_LAUNCH>>>(y, x, delta, n, a);
}

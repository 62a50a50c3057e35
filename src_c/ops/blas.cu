/* blas.cu - the per-channel helpers of blas.c on the device (bias, scale,
 * batch normalization forward and backward), elementwise fill/copy/axpy/mul,
 * the softmax of groups (one thread per group, layer_math.h's formulas) and
 * the optimizer step of train.c.
 *
 * Per-channel sums run one block per channel, each thread summing a strided
 * part in double (as blas.c sums in double) and the block adding the parts in
 * shared memory; the arithmetic after the sums is blas.c's. */
#include "cuda.h"
#include "layer_math.h"

#include <math.h>

__global__ static void fill_kernel(float *x, size_t n, float v)
{
    DN_KERNEL_LOOP(i, n) x[i] = v;
}

void dn_gpu_fill(float *x, size_t n, float value) { fill_kernel<<<dn_grid(n), DN_BLOCK>>>(x, n, value); }

__global__ static void copy_kernel(float *dst, const float *src, size_t n)
{
    DN_KERNEL_LOOP(i, n) dst[i] = src[i];
}

void dn_gpu_copy(float *dst, const float *src, size_t n) { copy_kernel<<<dn_grid(n), DN_BLOCK>>>(dst, src, n); }

__global__ static void axpy_kernel(float *y, const float *x, size_t n, float a)
{
    DN_KERNEL_LOOP(i, n) y[i] += a * x[i];
}

void dn_gpu_axpy(float *y, const float *x, size_t n, float a) { axpy_kernel<<<dn_grid(n), DN_BLOCK>>>(y, x, n, a); }

__global__ static void mul_kernel(float *y, const float *a, const float *b, size_t n, int add)
{
    DN_KERNEL_LOOP(i, n) y[i] = add ? y[i] + a[i] * b[i] : a[i] * b[i];
}

void dn_gpu_mul(float *y, const float *a, const float *b, size_t n) { mul_kernel<<<dn_grid(n), DN_BLOCK>>>(y, a, b, n, 0); }
void dn_gpu_mul_add(float *y, const float *a, const float *b, size_t n)
{
    mul_kernel<<<dn_grid(n), DN_BLOCK>>>(y, a, b, n, 1);
}

static __device__ size_t group_start(size_t g, int inner, size_t outer) { return g / inner * outer + g % inner; }

__global__ static void softmax_kernel(const float *in, float *out, size_t groups, int n, size_t stride, int inner,
                                      size_t outer, float temp)
{
    DN_KERNEL_LOOP(g, groups) {
        const size_t o = group_start(g, inner, outer);
        dn_softmax_group(in + o, n, temp, stride, out + o);
    }
}

void dn_gpu_softmax(const float *in, float *out, size_t groups, int n, size_t stride, int inner, size_t outer,
                    float temp)
{
    softmax_kernel<<<dn_grid(groups), DN_BLOCK>>>(in, out, groups, n, stride, inner, outer, temp);
}

__global__ static void softmax_backward_kernel(const float *p, const float *g, float *d, size_t groups, int n,
                                               size_t stride, int inner, size_t outer, float temp)
{
    DN_KERNEL_LOOP(k, groups) {
        const size_t o = group_start(k, inner, outer);
        dn_softmax_group_backward(p + o, g + o, n, temp, stride, d + o);
    }
}

void dn_gpu_softmax_backward(const float *p, const float *g, float *d, size_t groups, int n, size_t stride, int inner,
                             size_t outer, float temp)
{
    softmax_backward_kernel<<<dn_grid(groups), DN_BLOCK>>>(p, g, d, groups, n, stride, inner, outer, temp);
}

/* mode 0: out += v[c]; 1: out *= v[c]; 2: out = (out - mean[c]) / sqrt(var[c] + .00001) */
__global__ static void channel_kernel(float *out, const float *v, const float *var, size_t n, int channels,
                                      int spatial, int mode)
{
    DN_KERNEL_LOOP(i, n) {
        const int c = (int)(i / spatial % channels);
        if (mode == 0) out[i] += v[c];
        else if (mode == 1) out[i] *= v[c];
        else out[i] = (out[i] - v[c]) * (1.f / sqrtf(var[c] + .00001f));
    }
}

void dn_gpu_add_bias(float *out, const float *bias, int batch, int channels, int spatial)
{
    const size_t n = (size_t)batch * channels * spatial;
    channel_kernel<<<dn_grid(n), DN_BLOCK>>>(out, bias, NULL, n, channels, spatial, 0);
}

void dn_gpu_scale_bias(float *out, const float *scale, int batch, int channels, int spatial)
{
    const size_t n = (size_t)batch * channels * spatial;
    channel_kernel<<<dn_grid(n), DN_BLOCK>>>(out, scale, NULL, n, channels, spatial, 1);
}

void dn_gpu_normalize(float *x, const float *mean, const float *variance, int batch, int channels, int spatial)
{
    const size_t n = (size_t)batch * channels * spatial;
    channel_kernel<<<dn_grid(n), DN_BLOCK>>>(x, mean, variance, n, channels, spatial, 2);
}

/* The sum over the block's threads of each thread's v (every thread gets it). */
static __device__ double block_sum(double v, double *shared)
{
    shared[threadIdx.x] = v;
    __syncthreads();
    for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) shared[threadIdx.x] += shared[threadIdx.x + s];
        __syncthreads();
    }
    const double total = shared[0];
    __syncthreads();
    return total;
}

/* value j of channel c's batch*spatial values, in [batch][channels][spatial] */
static __device__ size_t at(int c, size_t j, int channels, int spatial)
{
    return (j / spatial * channels + c) * (size_t)spatial + j % spatial;
}

__global__ static void backward_bias_kernel(float *grad, const float *delta, int batch, int channels, int spatial)
{
    __shared__ double shared[DN_BLOCK];
    const int c = blockIdx.x;
    const size_t n = (size_t)batch * spatial;
    double sum = 0;
    for (size_t j = threadIdx.x; j < n; j += blockDim.x) sum += delta[at(c, j, channels, spatial)];
    sum = block_sum(sum, shared);
    if (threadIdx.x == 0) grad[c] += (float)sum;
}

void dn_gpu_backward_bias(float *grad, const float *delta, int batch, int channels, int spatial)
{
    backward_bias_kernel<<<channels, DN_BLOCK>>>(grad, delta, batch, channels, spatial);
}

__global__ static void bn_train_kernel(float *x, int batch, int channels, int spatial, float *mean, float *variance,
                                       float *x_norm, float *rolling_mean, float *rolling_variance, float keep,
                                       float share)
{
    __shared__ double shared[DN_BLOCK];
    const int c = blockIdx.x;
    const size_t n = (size_t)batch * spatial;
    double sum = 0, sq = 0;
    for (size_t j = threadIdx.x; j < n; j += blockDim.x) sum += x[at(c, j, channels, spatial)];
    const float m = (float)(block_sum(sum, shared) / (double)n);
    for (size_t j = threadIdx.x; j < n; j += blockDim.x) {
        const double d = (double)x[at(c, j, channels, spatial)] - m;
        sq += d * d;
    }
    const float var = (float)(block_sum(sq, shared) / ((double)n - 1));
    if (threadIdx.x == 0) {
        mean[c] = m;
        variance[c] = var;
        rolling_mean[c] = keep * rolling_mean[c] + share * m;
        rolling_variance[c] = keep * rolling_variance[c] + share * var;
    }
    const float inv = 1.f / sqrtf(var + .00001f);
    for (size_t j = threadIdx.x; j < n; j += blockDim.x) {
        const size_t o = at(c, j, channels, spatial);
        x_norm[o] = x[o] = (x[o] - m) * inv;
    }
}

void dn_gpu_batchnorm_forward_train(float *x, int batch, int channels, int spatial, float *mean, float *variance,
                                    float *x_norm, float *rolling_mean, float *rolling_variance, float keep,
                                    float share)
{
    bn_train_kernel<<<channels, DN_BLOCK>>>(x, batch, channels, spatial, mean, variance, x_norm, rolling_mean,
                                            rolling_variance, keep, share);
}

__global__ static void bn_backward_kernel(float *delta, const float *x_norm, const float *variance,
                                          const float *scales, float *scale_grad, int batch, int channels, int spatial)
{
    __shared__ double shared[DN_BLOCK];
    const int c = blockIdx.x;
    const size_t n = (size_t)batch * spatial;
    double sd = 0, sdx = 0;
    for (size_t j = threadIdx.x; j < n; j += blockDim.x) {
        const size_t o = at(c, j, channels, spatial);
        sd += delta[o];
        sdx += (double)delta[o] * x_norm[o];
    }
    const double sum_d = block_sum(sd, shared), sum_dx = block_sum(sdx, shared);
    if (threadIdx.x == 0 && scale_grad) scale_grad[c] += (float)sum_dx;
    const float s = scales[c], inv = 1.f / sqrtf(variance[c] + .00001f);
    const float mean_d = (float)(s * sum_d / (double)n), k = (float)(s * sum_dx / ((double)n - 1));
    for (size_t j = threadIdx.x; j < n; j += blockDim.x) {
        const size_t o = at(c, j, channels, spatial);
        delta[o] = inv * (s * delta[o] - mean_d - x_norm[o] * k);
    }
}

void dn_gpu_batchnorm_backward(float *delta, const float *x_norm, const float *variance, const float *scales,
                               float *scale_grad, int batch, int channels, int spatial)
{
    bn_backward_kernel<<<channels, DN_BLOCK>>>(delta, x_norm, variance, scales, scale_grad, batch, channels, spatial);
}

/* train.c's dn_net_update for one tensor */
__global__ static void update_kernel(float *w, const float *g, float *m, float *v, size_t n, dn_update_args a)
{
    DN_KERNEL_LOOP(k, n) {
        if (a.adam) {
            const float d = -g[k] - a.decay * w[k];
            m[k] = a.B1 * m[k] + (1.f - a.B1) * d;
            v[k] = a.B2 * v[k] + (1.f - a.B2) * d * d;
            w[k] += a.rate * (m[k] / a.b1t) / (sqrtf(v[k] / a.b2t) + a.eps);
        } else {
            m[k] += -g[k] - a.decay * w[k];
            w[k] += a.rate / a.batch * m[k];
            m[k] *= a.momentum;
        }
        if (a.clip > 0.f) w[k] = fminf(a.clip, fmaxf(-a.clip, w[k]));
    }
}

void dn_gpu_update_kernel(float *w, float *g, float *m, float *v, size_t n, const dn_update_args *a)
{
    update_kernel<<<dn_grid(n), DN_BLOCK>>>(w, g, m, v, n, *a);
}

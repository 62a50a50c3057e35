/* blas.cu - the per-channel helpers of blas.c on the device (bias, scale,
 * batch normalization forward and backward), elementwise fill/copy/axpy/mul,
 * the softmax of groups (one thread per group, layer_math.h's formulas) and
 * the optimizer step of train.c.
 *
 * Per-channel sums use the whole device: blocks over (channel, chunk of its
 * values) sum in double (as blas.c sums in double) into partial sums in the
 * caller's scratch (dn_gpu_channel_scratch floats), one thread per channel
 * adds them in a fixed order, and the elementwise passes that follow run one
 * thread per value; the arithmetic after the sums is blas.c's. */
#include "cuda.h"
#include "layer_math.h"
#include "activation_math.h"

#include <math.h>

__global__ static void fill_kernel(float *x, size_t n, float v)
{
    DN_KERNEL_LOOP(i, n) x[i] = v;
}

void dn_gpu_fill(float *x, size_t n, float value) { fill_kernel<<<dn_grid(n), DN_LAUNCH>>>(x, n, value); }

__global__ static void copy_kernel(float *dst, const float *src, size_t n)
{
    DN_KERNEL_LOOP(i, n) dst[i] = src[i];
}

void dn_gpu_copy(float *dst, const float *src, size_t n) { copy_kernel<<<dn_grid(n), DN_LAUNCH>>>(dst, src, n); }

__global__ static void axpy_kernel(float *y, const float *x, size_t n, float a)
{
    DN_KERNEL_LOOP(i, n) y[i] += a * x[i];
}

void dn_gpu_axpy(float *y, const float *x, size_t n, float a) { axpy_kernel<<<dn_grid(n), DN_LAUNCH>>>(y, x, n, a); }

__global__ static void copy_rows_kernel(float *dst, size_t dst_stride, const float *src, size_t src_stride,
                                        size_t rows, unsigned len, int add)
{
    DN_ROW_LOOP(r, i, rows, len) {
        const float v = src[r * src_stride + i];
        float *d = dst + r * dst_stride + i;
        *d = add ? *d + v : v;
    }
}

void dn_gpu_copy_rows(float *dst, size_t dst_stride, const float *src, size_t src_stride, size_t rows, size_t len,
                      int add)
{
    copy_rows_kernel<<<dn_row_grid(rows, len), DN_LAUNCH>>>(dst, dst_stride, src, src_stride, rows, (unsigned)len, add);
}

__global__ static void mul_kernel(float *y, const float *a, const float *b, size_t n, int add)
{
    DN_KERNEL_LOOP(i, n) y[i] = add ? y[i] + a[i] * b[i] : a[i] * b[i];
}

void dn_gpu_mul(float *y, const float *a, const float *b, size_t n) { mul_kernel<<<dn_grid(n), DN_LAUNCH>>>(y, a, b, n, 0); }
void dn_gpu_mul_add(float *y, const float *a, const float *b, size_t n)
{
    mul_kernel<<<dn_grid(n), DN_LAUNCH>>>(y, a, b, n, 1);
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
    softmax_kernel<<<dn_grid(groups), DN_LAUNCH>>>(in, out, groups, n, stride, inner, outer, temp);
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
    softmax_backward_kernel<<<dn_grid(groups), DN_LAUNCH>>>(p, g, d, groups, n, stride, inner, outer, temp);
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

/* value j of channel c's batch*spatial values, in [batch][channels][spatial] (j < 2^32: 32-bit division) */
static __device__ size_t at(int c, unsigned j, int channels, unsigned spatial)
{
    return ((size_t)(j / spatial) * channels + c) * spatial + j % spatial;
}

/* ---- per-channel sums over the whole device ----
 * A channel's batch*spatial values are cut into `chunks` runs; block (c, k) of
 * a channels x chunks grid sums run k of channel c (up to two sums at once, in
 * double) into part[(c * chunks + k) * 2 + 0/1]; then one thread per channel
 * adds its chunks' sums in chunk order (the same order every time) and writes
 * the totals over part[c * chunks * 2 + 0/1]. The elementwise passes after
 * that run one thread per value. Forward: the values (SUM_X) or their squared
 * deviations from the mean (SUM_SQ_DEV), channel_sums_kernel; backward: the
 * gradient and its products with x_norm, gradient_sums_kernel (the output
 * stage's, below). */
enum { SUM_X, SUM_SQ_DEV };

static int channel_chunks(size_t n)
{
    const size_t k = n / ((size_t)DN_BLOCK * 16);
    return k < 1 ? 1 : (k > 64 ? 64 : (int)k);
}

size_t dn_gpu_channel_scratch(int batch, int channels, int spatial)
{
    /* doubles, counted in floats */
    return (size_t)channels * channel_chunks((size_t)batch * spatial) * 2 * 2;
}

__global__ static void channel_sums_kernel(const float *a, const float *mean, int batch, int channels, int spatial,
                                           int chunks, int what, double *part)
{
    __shared__ double shared[DN_BLOCK];
    const int c = blockIdx.x, k = blockIdx.y;
    const size_t n = (size_t)batch * spatial, j0 = n * k / chunks, j1 = n * (k + 1) / chunks;
    double s0 = 0;
    for (size_t j = j0 + threadIdx.x; j < j1; j += blockDim.x) {
        const size_t o = at(c, (unsigned)j, channels, (unsigned)spatial);
        if (what == SUM_X) {
            s0 += a[o];
        } else {
            const double d = (double)a[o] - mean[c];
            s0 += d * d;
        }
    }
    s0 = block_sum(s0, shared);
    if (threadIdx.x == 0) {
        part[((size_t)c * chunks + k) * 2] = s0;
        part[((size_t)c * chunks + k) * 2 + 1] = 0;
    }
}

__global__ static void channel_totals_kernel(int channels, int chunks, double *part)
{
    DN_KERNEL_LOOP(c, (size_t)channels) {
        double s0 = 0, s1 = 0;
        for (int k = 0; k < chunks; ++k) {
            s0 += part[(c * chunks + k) * 2];
            s1 += part[(c * chunks + k) * 2 + 1];
        }
        part[c * chunks * 2] = s0;
        part[c * chunks * 2 + 1] = s1;
    }
}

/* the totals of channel c after channel_sums */
static __device__ double total0(const double *part, int c, int chunks) { return part[(size_t)c * chunks * 2]; }
static __device__ double total1(const double *part, int c, int chunks) { return part[(size_t)c * chunks * 2 + 1]; }

static void channel_sums(const float *a, const float *mean, int batch, int channels, int spatial, int what,
                         double *part)
{
    const int chunks = channel_chunks((size_t)batch * spatial);
    channel_sums_kernel<<<dim3((unsigned)channels, (unsigned)chunks), DN_LAUNCH>>>(a, mean, batch, channels, spatial,
                                                                                 chunks, what, part);
    channel_totals_kernel<<<dn_grid((size_t)channels), DN_LAUNCH>>>(channels, chunks, part);
}

__global__ static void add_total_kernel(float *grad, int channels, int chunks, const double *part)
{
    DN_KERNEL_LOOP(c, (size_t)channels) grad[c] += (float)total0(part, (int)c, chunks);
}

__global__ static void bn_mean_kernel(float *mean, int channels, int chunks, double n, const double *part)
{
    DN_KERNEL_LOOP(c, (size_t)channels) mean[c] = (float)(total0(part, (int)c, chunks) / n);
}

__global__ static void bn_variance_kernel(const float *mean, float *variance, float *rolling_mean,
                                          float *rolling_variance, int channels, int chunks, double n, float keep,
                                          float share, const double *part)
{
    DN_KERNEL_LOOP(c, (size_t)channels) {
        const float var = (float)(total0(part, (int)c, chunks) / (n - 1));
        variance[c] = var;
        rolling_mean[c] = keep * rolling_mean[c] + share * mean[c];
        rolling_variance[c] = keep * rolling_variance[c] + share * var;
    }
}

void dn_gpu_batchnorm_statistics(const float *x, int batch, int channels, int spatial, float *mean, float *variance,
                                 float *rolling_mean, float *rolling_variance, float keep, float share, float *scratch)
{
    double *part = (double *)scratch;
    const size_t per = (size_t)batch * spatial;
    const int chunks = channel_chunks(per);
    channel_sums(x, NULL, batch, channels, spatial, SUM_X, part);
    bn_mean_kernel<<<dn_grid((size_t)channels), DN_LAUNCH>>>(mean, channels, chunks, (double)per, part);
    channel_sums(x, mean, batch, channels, spatial, SUM_SQ_DEV, part);
    bn_variance_kernel<<<dn_grid((size_t)channels), DN_LAUNCH>>>(mean, variance, rolling_mean, rolling_variance,
                                                               channels, chunks, (double)per, keep, share, part);
}

__global__ static void bn_scale_grad_kernel(float *scale_grad, int channels, int chunks, const double *part)
{
    DN_KERNEL_LOOP(c, (size_t)channels) scale_grad[c] += (float)total1(part, (int)c, chunks);
}

__global__ static void bn_backward_kernel(float *delta, const float *x_norm, const float *variance,
                                          const float *scales, size_t rows, int channels, int spatial, int chunks,
                                          double per, const double *part)
{
    DN_ROW_LOOP(r, i, rows, spatial) {
        const int c = (int)(r % (unsigned)channels);
        const size_t o = r * spatial + i;
        const float s = scales[c], inv = 1.f / sqrtf(variance[c] + .00001f);
        const float mean_d = (float)(s * total0(part, c, chunks) / per);
        const float k = (float)(s * total1(part, c, chunks) / (per - 1));
        delta[o] = inv * (s * delta[o] - mean_d - x_norm[o] * k);
    }
}

/* ---- a layer's output stage in one pass each way ----
 * Forward: out = f((x - mean) * inv * scale + bias), inv = 1 / sqrt(variance + .00001) (batch norm: the batch's
 * statistics in training, the rolling ones in inference; without it out = f(x + bias)), keeping x_norm and the
 * value before f where training needs them: the formulas of the CPU passes (blas.c, bn_fused.c: normalize, scale, bias,
 * activate), each product and sum rounded on its own (__fmul_rn, __fadd_rn: never fused into one FMA).
 * Backward: delta *= f'(out, pre) in the pass that sums it per channel (and delta * x_norm), in chunk order; the
 * bias gradient takes the first sum, batch norm both. Activations across channels (norm_chan...) keep their own
 * pass. Every layer with batch norm, a bias and an activation (convolutional, connected, batchnorm, deformable)
 * goes through it. */
static int across_channels(dn_activation a)
{
    return a == DN_ACT_NORM_CHAN || a == DN_ACT_NORM_CHAN_SOFTMAX || a == DN_ACT_NORM_CHAN_SOFTMAX_MAXVAL;
}

__global__ static void output_stage_kernel(float *x, float *x_norm, const float *mean, const float *variance,
                                           const float *scale, const float *bias, float *pre, size_t rows,
                                           int channels, int spatial, dn_activation a)
{
    DN_ROW_LOOP(r, i, rows, spatial) {
        const int c = (int)(r % (unsigned)channels);
        const size_t o = r * spatial + i;
        float v = x[o];
        if (mean) {
            v = (v - mean[c]) * (1.f / sqrtf(variance[c] + .00001f));
            if (x_norm) x_norm[o] = v;
            v = __fmul_rn(v, scale[c]);
        }
        v = __fadd_rn(v, bias[c]);
        if (pre) pre[o] = v;
        x[o] = activate1(v, a);
    }
}

void dn_gpu_output_stage(float *x, float *x_norm, const float *mean, const float *variance, const float *scale,
                         const float *bias, float *pre, int batch, int channels, int spatial, dn_activation a)
{
    const size_t rows = (size_t)batch * channels;
    output_stage_kernel<<<dn_row_grid(rows, (size_t)spatial), DN_LAUNCH>>>(
        x, x_norm, mean, variance, scale, bias, pre, rows, channels, spatial, across_channels(a) ? DN_ACT_LINEAR : a);
    if (across_channels(a)) dn_gpu_activate(x, batch, channels, spatial, a);
}

/* the sums of delta (and of delta * x_norm) per channel, with delta *= f'(y, pre) on the way (linear: left as it is) */
__global__ static void gradient_sums_kernel(float *delta, const float *y, const float *pre, dn_activation act,
                                            const float *x_norm, int batch, int channels, int spatial, int chunks,
                                            double *part)
{
    __shared__ double shared[DN_BLOCK];
    const int c = blockIdx.x, k = blockIdx.y;
    const size_t n = (size_t)batch * spatial, j0 = n * k / chunks, j1 = n * (k + 1) / chunks;
    double s0 = 0, s1 = 0;
    for (size_t j = j0 + threadIdx.x; j < j1; j += blockDim.x) {
        const size_t o = at(c, (unsigned)j, channels, (unsigned)spatial);
        float d = delta[o];
        if (act != DN_ACT_LINEAR) {
            d *= gradient1(y[o], pre ? pre[o] : 0.f, act);
            delta[o] = d;
        }
        s0 += d;
        if (x_norm) s1 += (double)d * x_norm[o];
    }
    s0 = block_sum(s0, shared);
    if (x_norm) s1 = block_sum(s1, shared);
    if (threadIdx.x == 0) {
        part[((size_t)c * chunks + k) * 2] = s0;
        part[((size_t)c * chunks + k) * 2 + 1] = s1;
    }
}

void dn_gpu_output_stage_backward(float *delta, const float *y, const float *pre, dn_activation act,
                                  const float *x_norm, const float *variance, const float *scales, float *scale_grad,
                                  float *bias_grad, int batch, int channels, int spatial, float *scratch)
{
    if (!x_norm && !bias_grad) {   /* nothing to sum */
        dn_gpu_activation_backward(y, pre, delta, batch, channels, spatial, act);
        return;
    }
    if (across_channels(act)) {
        dn_gpu_activation_backward(y, pre, delta, batch, channels, spatial, act);
        act = DN_ACT_LINEAR;   /* f' = 1: the sums' pass leaves delta as it is */
    }
    double *part = (double *)scratch;
    const size_t per = (size_t)batch * spatial;
    const int chunks = channel_chunks(per);
    gradient_sums_kernel<<<dim3((unsigned)channels, (unsigned)chunks), DN_LAUNCH>>>(delta, y, pre, act, x_norm, batch,
                                                                                  channels, spatial, chunks, part);
    channel_totals_kernel<<<dn_grid((size_t)channels), DN_LAUNCH>>>(channels, chunks, part);
    if (bias_grad) add_total_kernel<<<dn_grid((size_t)channels), DN_LAUNCH>>>(bias_grad, channels, chunks, part);
    if (!x_norm) return;
    if (scale_grad) bn_scale_grad_kernel<<<dn_grid((size_t)channels), DN_LAUNCH>>>(scale_grad, channels, chunks, part);
    const size_t rows = (size_t)batch * channels;
    bn_backward_kernel<<<dn_row_grid(rows, (size_t)spatial), DN_LAUNCH>>>(delta, x_norm, variance, scales, rows,
                                                                         channels, spatial, chunks, (double)per, part);
}

/* the bias gradient alone (a [deformable] layer's offset convolution): the output stage's sums */
void dn_gpu_backward_bias(float *grad, float *delta, int batch, int channels, int spatial, float *scratch)
{
    dn_gpu_output_stage_backward(delta, NULL, NULL, DN_ACT_LINEAR, NULL, NULL, NULL, NULL, grad, batch,
                                 channels, spatial, scratch);
}

/* train.c's dn_net_update for one tensor */
__global__ static void update_kernel(float *w, const float *g, float *m, float *v, size_t n, dn_update_args a)
{
    DN_KERNEL_LOOP(k, n) dn_update_value(&w[k], g[k], &m[k], v ? &v[k] : NULL, &a);
}

void dn_gpu_update_kernel(float *w, float *g, float *m, float *v, size_t n, const dn_update_args *a)
{
    update_kernel<<<dn_grid(n), DN_LAUNCH>>>(w, g, m, v, n, *a);
}

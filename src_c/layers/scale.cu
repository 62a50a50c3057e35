/* scale.cu - [scale] on the device, as scale.c: y = gamma * x + beta per
 * channel (a row per image and channel), and backward one block per channel
 * summing delta * x and delta in double (the image after image order of
 * scale.c, each block's threads over the positions), the input delta
 * += gamma * delta per value. */
#include "cuda.h"
#include "../ops/ops.h"

__global__ static void scale_kernel(const float *x, const float *gamma, const float *beta, size_t rows, int channels,
                                    int spatial, float *y)
{
    DN_ROW_LOOP(r, i, rows, spatial) {
        const int c = (int)(r % (unsigned)channels);
        const size_t o = r * spatial + i;
        y[o] = gamma[c] * x[o] + (beta ? beta[c] : 0.f);
    }
}

__global__ static void scale_input_delta_kernel(const float *delta, const float *gamma, size_t rows, int channels,
                                                int spatial, float *d)
{
    DN_ROW_LOOP(r, i, rows, spatial) {
        const size_t o = r * spatial + i;
        d[o] += gamma[r % (unsigned)channels] * delta[o];
    }
}

/* block c: dgamma[c] += sum delta * x, dbeta[c] += sum delta over the batch and positions */
__global__ static void scale_grads_kernel(const float *delta, const float *x, int batch, int channels, int spatial,
                                          float *dgamma, float *dbeta)
{
    __shared__ double sg[DN_BLOCK], sb[DN_BLOCK];
    const int c = blockIdx.x;
    double g = 0, b = 0;
    for (int k = 0; k < batch; ++k) {
        const size_t off = ((size_t)k * channels + c) * spatial;
        for (int i = threadIdx.x; i < spatial; i += blockDim.x) {
            g += (double)delta[off + i] * x[off + i];
            b += delta[off + i];
        }
    }
    sg[threadIdx.x] = g;
    sb[threadIdx.x] = b;
    __syncthreads();
    for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) {
            sg[threadIdx.x] += sg[threadIdx.x + s];
            sb[threadIdx.x] += sb[threadIdx.x + s];
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        if (dgamma) dgamma[c] += (float)sg[0];
        if (dbeta) dbeta[c] += (float)sb[0];
    }
}

extern "C" {
dn_status dn_scale_forward_gpu(dn_layer *l, dn_net *net)
{
    const dn_param *g = dn_layer_find_param(l, "scales"), *b = dn_layer_find_param(l, "biases");
    const size_t rows = (size_t)l->batch * l->c, hw = (size_t)l->h * l->w;
    scale_kernel<<<dn_row_grid(rows, hw), DN_LAUNCH>>>(dn_gpu_input(net, l), g->data_gpu, b ? b->data_gpu : NULL, rows,
                                                      l->c, (int)hw, l->output_gpu);
    return DN_OK;
}

dn_status dn_scale_backward_gpu(dn_layer *l, dn_net *net)
{
    const dn_param *g = dn_layer_find_param(l, "scales"), *b = dn_layer_find_param(l, "biases");
    const size_t rows = (size_t)l->batch * l->c, hw = (size_t)l->h * l->w;
    if (g->grad_gpu || (b && b->grad_gpu))
        scale_grads_kernel<<<(unsigned)l->c, DN_LAUNCH>>>(l->delta_gpu, dn_gpu_input(net, l), l->batch, l->c, (int)hw,
                                                        g->grad_gpu, b ? b->grad_gpu : NULL);
    float *d = dn_gpu_input_delta(net, l);
    if (d) scale_input_delta_kernel<<<dn_row_grid(rows, hw), DN_LAUNCH>>>(l->delta_gpu, g->data_gpu, rows, l->c,
                                                                           (int)hw, d);
    return DN_OK;
}
}

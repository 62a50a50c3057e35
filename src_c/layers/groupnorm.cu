/* groupnorm.cu - [groupnorm] on the device, as groupnorm.c: one block per
 * image and group for the statistics, the output and the input delta (sums
 * in double over the block's threads), one block per channel for dgamma and
 * dbeta (the images in order). Device slot 0 keeps every group's mean and
 * 1/sqrt(var + eps) from the forward pass for the backward pass. */
#include "cuda.h"
#include "../ops/ops.h"

/* the sum over the block of each thread's v (every thread gets it) */
static __device__ double block_total(double v, double *shared)
{
    shared[threadIdx.x] = v;
    __syncthreads();
    for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) shared[threadIdx.x] += shared[threadIdx.x + s];
        __syncthreads();
    }
    const double t = shared[0];
    __syncthreads();
    return t;
}

/* block (b, g): statistics into stats[2 (b G + g) + 0/1], then the output */
__global__ static void gn_forward_kernel(const float *in, const float *gamma, const float *beta, int channels,
                                         int groups, int hw, float eps, float *stats, float *out)
{
    __shared__ double sh[DN_BLOCK];
    const int bg = blockIdx.x, g = bg % groups, cg = channels / groups;
    const size_t n = (size_t)cg * hw, off = ((size_t)(bg / groups) * channels + (size_t)g * cg) * hw;
    double s = 0;
    for (size_t i = threadIdx.x; i < n; i += blockDim.x) s += in[off + i];
    const float m = (float)(block_total(s, sh) / (double)n);
    double q = 0;
    for (size_t i = threadIdx.x; i < n; i += blockDim.x) q += ((double)in[off + i] - m) * ((double)in[off + i] - m);
    const float inv = 1.f / sqrtf((float)(block_total(q, sh) / (double)n) + eps);
    if (threadIdx.x == 0) {
        stats[2 * bg] = m;
        stats[2 * bg + 1] = inv;
    }
    for (size_t i = threadIdx.x; i < n; i += blockDim.x) {
        const int c = g * cg + (int)(i / (size_t)hw);
        out[off + i] = gamma[c] * ((in[off + i] - m) * inv) + beta[c];
    }
}

/* block c: dgamma[c] += sum delta * xhat, dbeta[c] += sum delta */
__global__ static void gn_param_grads_kernel(const float *in, const float *delta, const float *stats, int batch,
                                             int channels, int groups, int hw, float *dgamma, float *dbeta)
{
    __shared__ double sh[DN_BLOCK];
    const int c = blockIdx.x, g = c / (channels / groups);
    double sg = 0, sb = 0;
    for (int b = 0; b < batch; ++b) {
        const size_t off = ((size_t)b * channels + c) * hw;
        const float m = stats[2 * (b * groups + g)], inv = stats[2 * (b * groups + g) + 1];
        for (int i = threadIdx.x; i < hw; i += blockDim.x) {
            sg += (double)delta[off + i] * ((in[off + i] - m) * inv);
            sb += delta[off + i];
        }
    }
    sg = block_total(sg, sh);
    sb = block_total(sb, sh);
    if (threadIdx.x == 0) {
        if (dgamma) dgamma[c] += (float)sg;
        if (dbeta) dbeta[c] += (float)sb;
    }
}

/* block (b, g): the input delta */
__global__ static void gn_input_delta_kernel(const float *in, const float *delta, const float *gamma,
                                             const float *stats, int channels, int groups, int hw, float *d)
{
    __shared__ double sh[DN_BLOCK];
    const int bg = blockIdx.x, g = bg % groups, cg = channels / groups;
    const size_t n = (size_t)cg * hw, off = ((size_t)(bg / groups) * channels + (size_t)g * cg) * hw;
    const float m = stats[2 * bg], inv = stats[2 * bg + 1];
    double sg = 0, sgx = 0;
    for (size_t i = threadIdx.x; i < n; i += blockDim.x) {
        const int c = g * cg + (int)(i / (size_t)hw);
        const float gx = gamma[c] * delta[off + i], xh = (in[off + i] - m) * inv;
        sg += gx;
        sgx += (double)gx * xh;
    }
    const float mg = (float)(block_total(sg, sh) / (double)n), mgx = (float)(block_total(sgx, sh) / (double)n);
    for (size_t i = threadIdx.x; i < n; i += blockDim.x) {
        const int c = g * cg + (int)(i / (size_t)hw);
        const float xh = (in[off + i] - m) * inv;
        d[off + i] += inv * (gamma[c] * delta[off + i] - mg - xh * mgx);
    }
}

static dn_status read(const dn_layer *l, int *groups, float *eps)
{
    dn_status st;
    if ((st = dn_attr_int(l, "groups", groups)) || (st = dn_attr_float(l, "eps", eps))) return st;
    return DN_OK;
}

extern "C" {
dn_status dn_groupnorm_forward_gpu(dn_layer *l, dn_net *net)
{
    int G;
    float eps, *stats;
    dn_status st = read(l, &G, &eps);
    if (!st) st = dn_gpu_buffer(l, 0, (size_t)2 * l->batch * G, &stats);
    if (st) return st;
    gn_forward_kernel<<<(unsigned)(l->batch * G), DN_LAUNCH>>>(
        dn_gpu_input(net, l), dn_layer_find_param(l, "scales")->data_gpu, dn_layer_find_param(l, "biases")->data_gpu,
        l->c, G, l->h * l->w, eps, stats, l->output_gpu);
    return DN_OK;
}

dn_status dn_groupnorm_backward_gpu(dn_layer *l, dn_net *net)
{
    int G;
    float eps;
    dn_status st = read(l, &G, &eps);
    if (st) return st;
    if (l->gpu_cap[0] < (size_t)2 * l->batch * G)
        return dn_layer_fail(l, DN_ERR_STATE, "backward needs a forward pass first");
    const float *stats = l->gpu_buf[0], *in = dn_gpu_input(net, l);
    dn_param *gp = dn_layer_find_param(l, "scales"), *bp = dn_layer_find_param(l, "biases");
    const int hw = l->h * l->w;
    if (gp->grad_gpu || bp->grad_gpu)
        gn_param_grads_kernel<<<(unsigned)l->c, DN_LAUNCH>>>(in, l->delta_gpu, stats, l->batch, l->c, G, hw,
                                                           gp->grad_gpu, bp->grad_gpu);
    float *d = dn_gpu_input_delta(net, l);
    if (d)
        gn_input_delta_kernel<<<(unsigned)(l->batch * G), DN_LAUNCH>>>(in, l->delta_gpu, gp->data_gpu, stats, l->c, G,
                                                                     hw, d);
    return DN_OK;
}
}

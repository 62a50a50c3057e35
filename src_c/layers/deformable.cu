/* deformable.cu - [deformable] (DCNv2) on the device, the twin of
 * deformable.c: per image the offset convolution (im2col + cuBLAS, plus its
 * biases), the deformable columns (one thread per column entry, sampling as
 * layer_math.h's dn_bilinear_points, times the logistic mask) and the main
 * GEMM; then batch norm (the batch's statistics in training), bias and
 * activation as convolutional.cu. Backward through the activation, bias and
 * batch norm as convolutional.cu; then per image the offsets are computed
 * again (nothing of them is kept), dW += delta * columns^T, the columns'
 * gradient W^T * delta goes (one thread per column entry) to the input
 * through the bilinear weights and to the offsets and mask logits, summed
 * with atomics where several channels of a deformable group meet; the
 * offset convolution's gradients as a plain convolution's. The atomics make
 * the sums' order differ from the CPU's (float32 rounding only).
 *
 * Device scratch slots as convolutional.cu: 0 batch mean, 1 batch variance,
 * 2 x_norm, 3 the pre-activation values (when the activation needs them).
 * The network's workspace: the input's columns, the deformable columns, their
 * gradient (K x N each), the offsets and their gradient (O x N each), and the
 * per-channel sums' scratch. */
#include "cuda.h"
#include "../ops/ops.h"
#include "../ops/layer_math.h"

typedef struct {
    int filters, size, stride_x, stride_y, padding, dilation, batch_normalize, dgroups, modulated, O;
    dn_activation activation;
} deform_gpu;

typedef struct {
    int C, H, W, out_w, N, k, stride_y, stride_x, pad, dilation, groups, modulated;
} deform_geom;

static dn_status read_options(const dn_layer *l, deform_gpu *d)
{
    const char *act;
    dn_status s;
    if ((s = dn_attr_int(l, "filters", &d->filters)) || (s = dn_attr_int(l, "size", &d->size)) ||
        (s = dn_attr_int(l, "stride_x", &d->stride_x)) || (s = dn_attr_int(l, "stride_y", &d->stride_y)) ||
        (s = dn_attr_int(l, "padding", &d->padding)) || (s = dn_attr_int(l, "dilation", &d->dilation)) ||
        (s = dn_attr_int(l, "batch_normalize", &d->batch_normalize)) ||
        (s = dn_attr_int(l, "deformable_groups", &d->dgroups)) || (s = dn_attr_int(l, "modulated", &d->modulated)) ||
        (s = dn_attr_string(l, "activation", &act)) || (s = dn_activation_from_name(act, &d->activation)))
        return s;
    d->O = (d->modulated ? 3 : 2) * d->dgroups * d->size * d->size;
    return DN_OK;
}

static deform_geom geom_of(const dn_layer *l, const deform_gpu *d)
{
    deform_geom g = {l->c, l->h, l->w, l->out_w, l->out_h * l->out_w, d->size, d->stride_y, d->stride_x,
                     d->padding * d->dilation, d->dilation, d->dgroups, d->modulated};
    return g;
}

/* entry e = (c * k*k + i) * N + p of the columns: channel c, tap i, output position p */
__device__ static void entry_of(const deform_geom &g, size_t e, int *c, int *i, int *p, float *h, float *w,
                                const float **dy, const float **dx, const float **mk, const float *off)
{
    const int kk = g.k * g.k, cpg = g.C / g.groups;
    *p = (int)(e % (size_t)g.N);
    const int row = (int)(e / (size_t)g.N);
    *c = row / kk;
    *i = row % kk;
    const int grp = *c / cpg, ky = *i / g.k, kx = *i % g.k, oy = *p / g.out_w, ox = *p % g.out_w;
    *dy = off + (size_t)(2 * (grp * kk + *i)) * g.N;
    *dx = *dy + g.N;
    *mk = g.modulated ? off + (size_t)(2 * g.groups * kk + grp * kk + *i) * g.N : NULL;
    *h = (float)(oy * g.stride_y - g.pad + ky * g.dilation) + (*dy)[*p];
    *w = (float)(ox * g.stride_x - g.pad + kx * g.dilation) + (*dx)[*p];
}

/* the sample of a plane at the bilinear points b, and its derivatives along h and w */
__device__ static float sample(const float *plane, const dn_bilinear_pts &b, float *vh, float *vw)
{
    float v = 0.f;
    *vh = *vw = 0.f;
    for (int t = 0; t < 4; ++t)
        if (b.idx[t] >= 0) {
            const float x = plane[b.idx[t]];
            v += b.wt[t] * x;
            *vh += b.dh[t] * x;
            *vw += b.dw[t] * x;
        }
    return v;
}

__global__ static void columns_kernel(deform_geom g, const float *im, const float *off, float *cols, size_t n)
{
    DN_KERNEL_LOOP(e, n) {
        int c, i, p;
        float h, w, vh, vw;
        const float *dy, *dx, *mk;
        entry_of(g, e, &c, &i, &p, &h, &w, &dy, &dx, &mk, off);
        const float v = sample(im + (size_t)c * g.H * g.W, dn_bilinear_points(g.H, g.W, h, w), &vh, &vw);
        cols[e] = mk ? v * dn_logistic1(mk[p]) : v;
    }
}

/* dcols: the columns' gradient; adds into doff (offsets and mask logits) and, when given, din */
__global__ static void columns_backward_kernel(deform_geom g, const float *im, const float *off, const float *dcols,
                                               float *doff, float *din, size_t n)
{
    DN_KERNEL_LOOP(e, n) {
        int c, i, p;
        float h, w, vh, vw;
        const float *dy, *dx, *mk;
        entry_of(g, e, &c, &i, &p, &h, &w, &dy, &dx, &mk, off);
        const dn_bilinear_pts b = dn_bilinear_points(g.H, g.W, h, w);
        const float v = sample(im + (size_t)c * g.H * g.W, b, &vh, &vw);
        const float m = mk ? dn_logistic1(mk[p]) : 1.f, dc = dcols[e], dv = dc * m;
        const size_t gdy = (size_t)(dy - off) + p, gdx = (size_t)(dx - off) + p;
        atomicAdd(doff + gdy, dv * vh);
        atomicAdd(doff + gdx, dv * vw);
        if (mk) atomicAdd(doff + (size_t)(mk - off) + p, dc * v * m * (1.f - m));
        if (din) {
            float *dplane = din + (size_t)c * g.H * g.W;
            for (int t = 0; t < 4; ++t)
                if (b.idx[t] >= 0) atomicAdd(dplane + b.idx[t], dv * b.wt[t]);
        }
    }
}

/* the offset convolution of one image: off [O][N] = offset_weights * columns of the input + offset_biases */
static dn_status offsets_of(dn_net *net, const dn_layer *l, const deform_gpu *d, const float *im, float *cols_x,
                            float *off)
{
    const int K = l->c * d->size * d->size, N = l->out_h * l->out_w;
    dn_gpu_im2col(im, l->c, l->h, l->w, d->size, d->padding * d->dilation, d->stride_y, d->stride_x, d->dilation,
                  l->out_h, l->out_w, cols_x);
    dn_status s = dn_gpu_gemm(net, 0, 0, d->O, N, K, 1.f, dn_layer_find_param((dn_layer *)l, "offset_weights")->data_gpu,
                              K, cols_x, N, 0.f, off, N, DN_GEMM_VALUES);
    if (!s)   /* + the offset biases (blas.cu's output stage: linear, no batch norm) */
        dn_gpu_output_stage(off, NULL, NULL, NULL, NULL, dn_layer_find_param((dn_layer *)l, "offset_biases")->data_gpu,
                            NULL, 1, d->O, N, DN_ACT_LINEAR);
    return s;
}

static dn_status deform_workspace(dn_net *net, const dn_layer *l, const deform_gpu *d, float **ws, float **scratch)
{
    const size_t K = (size_t)l->c * d->size * d->size, N = (size_t)l->out_h * l->out_w;
    size_t sums = dn_gpu_channel_scratch(l->batch, d->filters, (int)N);
    const size_t off_sums = dn_gpu_channel_scratch(1, d->O, (int)N);
    if (off_sums > sums) sums = off_sums;
    const size_t body = 3 * K * N + 2 * (size_t)d->O * N;
    dn_status s = dn_gpu_workspace(net, body + sums, ws);
    if (!s) *scratch = *ws + body;
    return s;
}

static dn_status deformable_forward_gpu(dn_layer *l, dn_net *net)
{
    deform_gpu d;
    dn_status s = read_options(l, &d);
    if (s) return s;
    if (d.batch_normalize && dn_layer_sync_bn(net, l))
        return dn_layer_fail(l, DN_ERR_UNSUPPORTED, "sync_bn (batch statistics over the processes) is not "
                                                    "implemented on CUDA devices yet; train with sync_bn=0");
    const int K = l->c * d.size * d.size, N = l->out_h * l->out_w, F = d.filters;
    const size_t total = (size_t)l->batch * l->outputs, plane = (size_t)l->c * l->h * l->w;
    float *ws, *scratch;
    if ((s = deform_workspace(net, l, &d, &ws, &scratch))) return s;
    float *cols_x = ws, *cols = cols_x + (size_t)K * N, *off = cols + 2 * (size_t)K * N;
    const deform_geom g = geom_of(l, &d);
    const size_t n = (size_t)K * N;
    const float *input = dn_gpu_input(net, l), *w = dn_layer_find_param(l, "weights")->data_gpu;
    for (int b = 0; b < l->batch && !s; ++b) {
        const float *im = input + (size_t)b * plane;
        if ((s = offsets_of(net, l, &d, im, cols_x, off))) break;
        columns_kernel<<<dn_grid(n), DN_LAUNCH>>>(g, im, off, cols, n);
        s = dn_gpu_gemm(net, 0, 0, F, N, K, 1.f, w, K, cols, N, 0.f, l->output_gpu + (size_t)b * l->outputs, N,
                        DN_GEMM_VALUES);
    }
    if (s) return s;
    const float *mean = NULL, *var = NULL, *scales = NULL;
    float *xn = NULL, *pre = NULL;
    if (d.batch_normalize) {
        float *rmean = dn_layer_find_param(l, "rolling_mean")->data_gpu;
        float *rvar = dn_layer_find_param(l, "rolling_variance")->data_gpu;
        scales = dn_layer_find_param(l, "scales")->data_gpu;
        mean = rmean;
        var = rvar;
        if (net->train) {
            float *bm, *bv;
            if ((size_t)l->batch * N < 2)
                return dn_layer_fail(l, DN_ERR_SHAPE, "batch normalization in training needs at least 2 values per "
                                                      "filter (batch %d x %d x %d)", l->batch, l->out_h, l->out_w);
            if ((s = dn_gpu_buffer(l, 0, (size_t)F, &bm)) || (s = dn_gpu_buffer(l, 1, (size_t)F, &bv)) ||
                (s = dn_gpu_buffer(l, 2, total, &xn)))
                return s;
            dn_gpu_batchnorm_statistics(l->output_gpu, l->batch, F, N, bm, bv, rmean, rvar, DN_BN_ROLLING, scratch);
            mean = bm;
            var = bv;
        }
    }
    if (net->train && dn_activation_needs_input(d.activation) && (s = dn_gpu_buffer(l, 3, total, &pre))) return s;
    /* normalization, scale, bias and activation in one pass (blas.cu's output stage) */
    dn_gpu_output_stage(l->output_gpu, xn, mean, var, scales, dn_layer_find_param(l, "biases")->data_gpu, pre, l->batch,
                        F, N, d.activation);
    return dn_gpu_check(l, "the deformable forward pass");
}

static dn_status deformable_backward_gpu(dn_layer *l, dn_net *net)
{
    deform_gpu d;
    dn_status s = read_options(l, &d);
    if (s) return s;
    const int K = l->c * d.size * d.size, N = l->out_h * l->out_w, F = d.filters, O = d.O;
    const size_t total = (size_t)l->batch * l->outputs, plane = (size_t)l->c * l->h * l->w, n = (size_t)K * N;
    const int needs_x = dn_activation_needs_input(d.activation);
    if ((d.batch_normalize && l->gpu_cap[2] < total) || (needs_x && l->gpu_cap[3] < total))
        return dn_layer_fail(l, DN_ERR_STATE, "backward needs a training forward pass first");
    float *ws, *scratch;
    if ((s = deform_workspace(net, l, &d, &ws, &scratch))) return s;
    dn_param *bias = dn_layer_find_param(l, "biases"), *w = dn_layer_find_param(l, "weights");
    dn_param *wo = dn_layer_find_param(l, "offset_weights"), *bo = dn_layer_find_param(l, "offset_biases");
    dn_param *scales = d.batch_normalize ? dn_layer_find_param(l, "scales") : NULL;
    /* the activation's gradient, the bias and scale gradients and batch norm's backward (blas.cu's output stage) */
    dn_gpu_output_stage_backward(l->delta_gpu, l->output_gpu, needs_x ? l->gpu_buf[3] : NULL, d.activation,
                                 scales ? l->gpu_buf[2] : NULL, scales ? l->gpu_buf[1] : NULL,
                                 scales ? scales->data_gpu : NULL, scales ? scales->grad_gpu : NULL, bias->grad_gpu,
                                 l->batch, F, N, scratch);
    float *cols_x = ws, *cols = cols_x + n, *dcols = cols + n, *off = dcols + n, *doff = off + (size_t)O * N;
    const deform_geom g = geom_of(l, &d);
    const float *input = dn_gpu_input(net, l);
    float *in_delta = dn_gpu_input_delta(net, l);
    for (int b = 0; b < l->batch && !s; ++b) {
        const float *im = input + (size_t)b * plane, *delta = l->delta_gpu + (size_t)b * l->outputs;
        float *din = in_delta ? in_delta + (size_t)b * plane : NULL;
        if ((s = offsets_of(net, l, &d, im, cols_x, off))) break;
        columns_kernel<<<dn_grid(n), DN_LAUNCH>>>(g, im, off, cols, n);
        if (w->grad_gpu &&
            (s = dn_gpu_gemm(net, 0, 1, F, K, N, 1.f, delta, N, cols, N, 1.f, w->grad_gpu, K, DN_GEMM_GRAD_A)))
            break;
        if ((s = dn_gpu_gemm(net, 1, 0, K, N, F, 1.f, w->data_gpu, K, delta, N, 0.f, dcols, N, DN_GEMM_GRAD_B))) break;
        dn_gpu_fill(doff, (size_t)O * N, 0.f);
        columns_backward_kernel<<<dn_grid(n), DN_LAUNCH>>>(g, im, off, dcols, doff, din, n);
        /* the offset convolution's gradients, as a plain convolution's (cols_x still holds the input's columns) */
        if (wo->grad_gpu &&
            (s = dn_gpu_gemm(net, 0, 1, O, K, N, 1.f, doff, N, cols_x, N, 1.f, wo->grad_gpu, K, DN_GEMM_GRAD_A)))
            break;
        if (bo->grad_gpu) dn_gpu_backward_bias(bo->grad_gpu, doff, 1, O, N, scratch);
        if (din) {
            if ((s = dn_gpu_gemm(net, 1, 0, K, N, O, 1.f, wo->data_gpu, K, doff, N, 0.f, dcols, N, DN_GEMM_GRAD_B)))
                break;
            dn_gpu_col2im(dcols, l->c, l->h, l->w, d.size, d.padding * d.dilation, d.stride_y, d.stride_x,
                          d.dilation, l->out_h, l->out_w, din);
        }
    }
    return s ? s : dn_gpu_check(l, "the deformable backward pass");
}

extern "C" {
dn_status dn_deformable_forward_gpu(dn_layer *l, dn_net *net) { return deformable_forward_gpu(l, net); }
dn_status dn_deformable_backward_gpu(dn_layer *l, dn_net *net) { return deformable_backward_gpu(l, net); }
}

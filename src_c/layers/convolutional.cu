/* convolutional.cu - [convolutional] on the device: the plain passes of
 * convolutional.c (forward: per group, im2col of a chunk of the mini-batch's
 * images in one launch and one strided batched cuBLAS GEMM for them, 1x1
 * convolutions straight on the input; backward by chunks, the weight
 * gradient one GEMM per chunk over all its images; batch norm with
 * the batch's statistics in training and the rolling ones otherwise, bias,
 * activation; backward through the activation, bias, batch norm, then the
 * weight gradient and col2im of W^T * delta).
 *
 * Device scratch slots: 0 batch mean, 1 batch variance, 2 x_norm, 3 the
 * pre-activation values (kept when the activation's derivative needs them).
 * The options are read back from the layer's resolved attributes (make
 * checked them). */
#include "cuda.h"
#include "../ops/ops.h"

/* the forward's columns of several images at most this many floats (256 MiB) */
#define CHUNK_FLOATS ((size_t)1 << 26)

typedef struct {
    int filters, size, stride_x, stride_y, padding, groups, dilation, batch_normalize;
    dn_activation activation;
    int M, K, N, cg, pad, direct;
} conv_gpu;

static dn_status read_options(dn_layer *l, conv_gpu *c)
{
    const char *act;
    dn_status s;
    if ((s = dn_attr_int(l, "filters", &c->filters)) || (s = dn_attr_int(l, "size", &c->size)) ||
        (s = dn_attr_int(l, "stride_x", &c->stride_x)) || (s = dn_attr_int(l, "stride_y", &c->stride_y)) ||
        (s = dn_attr_int(l, "padding", &c->padding)) || (s = dn_attr_int(l, "groups", &c->groups)) ||
        (s = dn_attr_int(l, "dilation", &c->dilation)) || (s = dn_attr_int(l, "batch_normalize", &c->batch_normalize)) ||
        (s = dn_attr_string(l, "activation", &act)) || (s = dn_activation_from_name(act, &c->activation)))
        return s;
    c->M = c->filters / c->groups;
    c->cg = l->c / c->groups;
    c->K = c->cg * c->size * c->size;
    c->N = l->out_h * l->out_w;
    c->pad = c->padding * c->dilation;
    c->direct = c->size == 1 && c->stride_x == 1 && c->stride_y == 1 && c->padding == 0;
    return DN_OK;
}

/* Images per chunk of the mini-batch (the columns of a chunk at most CHUNK_FLOATS; all of them for 1x1) and
 * the workspace for their columns (NULL for 1x1, which read the input in place). */
static dn_status image_chunks(dn_net *net, const dn_layer *l, const conv_gpu *c, int *chunk, float **cols)
{
    const size_t per_image = (size_t)c->K * c->N;
    *chunk = c->direct ? l->batch : (int)(per_image >= CHUNK_FLOATS ? 1 : CHUNK_FLOATS / per_image);
    if (*chunk > l->batch) *chunk = l->batch;
    *cols = NULL;
    return c->direct ? DN_OK : dn_gpu_workspace(net, per_image * (size_t)*chunk, cols);
}

static dn_status conv_forward_gpu(dn_layer *l, dn_net *net)
{
    conv_gpu c;
    dn_status s = read_options(l, &c);
    if (s) return s;
    const size_t total = (size_t)l->batch * l->outputs, plane = (size_t)l->h * l->w;
    const float *input = dn_gpu_input(net, l);
    const float *weights = dn_layer_find_param(l, "weights")->data_gpu;
    /* the mini-batch in chunks of images: per group one im2col launch for the chunk's images and one
     * strided batched GEMM (the group's weights for every image) */
    const size_t per_image = (size_t)c.K * c.N;
    int chunk;
    float *cols;
    if ((s = image_chunks(net, l, &c, &chunk, &cols))) return s;
    for (int b0 = 0; b0 < l->batch; b0 += chunk) {
        const int n = l->batch - b0 < chunk ? l->batch - b0 : chunk;
        for (int g = 0; g < c.groups; ++g) {
            const float *im = input + ((size_t)b0 * l->c + (size_t)g * c.cg) * plane;
            float *out = l->output_gpu + ((size_t)b0 * c.groups + g) * (size_t)c.M * c.N;
            if (!c.direct)
                dn_gpu_im2col_images(im, n, (size_t)l->c * plane, c.cg, l->h, l->w, c.size, c.pad, c.stride_y,
                                     c.stride_x, c.dilation, l->out_h, l->out_w, cols);
            if ((s = dn_gpu_gemm_strided(net, 0, 0, c.M, c.N, c.K, 1.f, weights + (size_t)g * c.M * c.K, c.K, 0,
                                         c.direct ? im : cols, c.N,
                                         c.direct ? (long long)l->c * plane : (long long)per_image, 0.f, out, c.N,
                                         (long long)c.groups * c.M * c.N, n)))
                return dn_layer_fail(l, s, "%s", dn_last_error());
        }
    }
    if (c.batch_normalize) {
        const float *mean = dn_layer_find_param(l, "rolling_mean")->data_gpu;
        float *rvar = dn_layer_find_param(l, "rolling_variance")->data_gpu;
        if (net->train) {
            float *bm, *bv, *xn;
            if ((size_t)l->batch * c.N < 2)
                return dn_layer_fail(l, DN_ERR_SHAPE,
                                     "batch normalization in training needs at least 2 values per filter "
                                     "(batch %d x %d x %d)", l->batch, l->out_h, l->out_w);
            float *scratch; /* the workspace: the columns are no longer needed */
            if ((s = dn_gpu_buffer(l, 0, (size_t)l->out_c, &bm)) || (s = dn_gpu_buffer(l, 1, (size_t)l->out_c, &bv)) ||
                (s = dn_gpu_buffer(l, 2, total, &xn)) ||
                (s = dn_gpu_workspace(net, dn_gpu_channel_scratch(l->batch, l->out_c, c.N), &scratch)))
                return s;
            dn_gpu_batchnorm_forward_train(l->output_gpu, l->batch, l->out_c, c.N, bm, bv, xn,
                                           dn_layer_find_param(l, "rolling_mean")->data_gpu, rvar, DN_BN_ROLLING,
                                           scratch);
        } else {
            dn_gpu_normalize(l->output_gpu, mean, rvar, l->batch, l->out_c, c.N);
        }
        dn_gpu_scale_bias(l->output_gpu, dn_layer_find_param(l, "scales")->data_gpu, l->batch, l->out_c, c.N);
    }
    dn_gpu_add_bias(l->output_gpu, dn_layer_find_param(l, "biases")->data_gpu, l->batch, l->out_c, c.N);
    if (net->train && dn_activation_needs_input(c.activation)) {
        float *x;
        if ((s = dn_gpu_buffer(l, 3, total, &x))) return s;
        dn_gpu_copy(x, l->output_gpu, total);
    }
    dn_gpu_activate(l->output_gpu, l->batch, l->out_c, c.N, c.activation);
    return DN_OK;
}

static dn_status conv_backward_gpu(dn_layer *l, dn_net *net)
{
    conv_gpu c;
    dn_status s = read_options(l, &c);
    if (s) return s;
    const size_t total = (size_t)l->batch * l->outputs, plane = (size_t)l->h * l->w;
    const int needs_x = dn_activation_needs_input(c.activation);
    if ((c.batch_normalize && l->gpu_cap[2] < total) || (needs_x && l->gpu_cap[3] < total))
        return dn_layer_fail(l, DN_ERR_STATE, "backward needs a training forward pass first");
    dn_gpu_activation_backward(l->output_gpu, needs_x ? l->gpu_buf[3] : NULL, l->delta_gpu, l->batch, l->out_c, c.N,
                               c.activation);
    dn_param *bias = dn_layer_find_param(l, "biases"), *w = dn_layer_find_param(l, "weights");
    float *scratch; /* the workspace, before the columns use it */
    if ((s = dn_gpu_workspace(net, dn_gpu_channel_scratch(l->batch, l->out_c, c.N), &scratch))) return s;
    if (bias->grad_gpu) dn_gpu_backward_bias(bias->grad_gpu, l->delta_gpu, l->batch, l->out_c, c.N, scratch);
    if (c.batch_normalize) {
        dn_param *scales = dn_layer_find_param(l, "scales");
        dn_gpu_batchnorm_backward(l->delta_gpu, l->gpu_buf[2], l->gpu_buf[1], scales->data_gpu, scales->grad_gpu,
                                  l->batch, l->out_c, c.N, scratch);
    }
    const float *input = dn_gpu_input(net, l);
    float *in_delta = dn_gpu_input_delta(net, l);
    /* By chunks of images. The weight gradient is one GEMM per chunk and group: the chunk's columns regrouped as
     * [K][images][N] (im2col_interleaved; for 1x1 the input's rows) and its delta as [M][images][N], so
     * dW_g [M x K] += D [M x images*N] * X [K x images*N]^T sums over the images inside cuBLAS. The input delta is
     * one strided batched GEMM per chunk (W_g^T * d_b for every image), added straight in for 1x1, else through
     * col2im. Workspace: the columns (K*N per image), then the regrouped delta (M*N per image). */
    const size_t per_image = (size_t)c.K * c.N, per_delta = (size_t)c.M * c.N;
    int chunk = (int)(per_image + per_delta >= CHUNK_FLOATS ? 1 : CHUNK_FLOATS / (per_image + per_delta));
    if (chunk > l->batch) chunk = l->batch;
    float *cols;
    if ((s = dn_gpu_workspace(net, (per_image + per_delta) * (size_t)chunk, &cols))) return s;
    float *dgather = cols + per_image * (size_t)chunk;
    const long long in_stride = (long long)l->c * plane, d_stride = (long long)c.groups * c.M * c.N;
    for (int b0 = 0; b0 < l->batch; b0 += chunk) {
        const int n = l->batch - b0 < chunk ? l->batch - b0 : chunk;
        for (int g = 0; g < c.groups; ++g) {
            const size_t in_off = ((size_t)b0 * l->c + (size_t)g * c.cg) * plane;
            const float *d = l->delta_gpu + ((size_t)b0 * c.groups + g) * (size_t)c.M * c.N;
            const float *wg = w->data_gpu + (size_t)g * c.M * c.K;
            if (w->grad_gpu) {
                if (c.direct)
                    dn_gpu_gather_images(cols, input + in_off, n, (size_t)c.K, (size_t)c.N, (size_t)in_stride,
                                         (size_t)c.N);
                else
                    dn_gpu_im2col_interleaved(input + in_off, n, (size_t)in_stride, c.cg, l->h, l->w, c.size, c.pad,
                                              c.stride_y, c.stride_x, c.dilation, l->out_h, l->out_w, cols);
                dn_gpu_gather_images(dgather, d, n, (size_t)c.M, (size_t)c.N, (size_t)d_stride, (size_t)c.N);
                const int nN = n * c.N;
                if ((s = dn_gpu_gemm(net, 0, 1, c.M, c.K, nN, 1.f, dgather, nN, cols, nN, 1.f,
                                     w->grad_gpu + (size_t)g * c.M * c.K, c.K)))
                    return dn_layer_fail(l, s, "%s", dn_last_error());
            }
            if (!in_delta) continue;
            /* the columns' delta [K x N] = W_g^T * d_b, added straight in for 1x1, else through col2im */
            if (c.direct) {
                s = dn_gpu_gemm_strided(net, 1, 0, c.K, c.N, c.M, 1.f, wg, c.K, 0, d, c.N, d_stride, 1.f,
                                        in_delta + in_off, c.N, in_stride, n);
            } else {
                s = dn_gpu_gemm_strided(net, 1, 0, c.K, c.N, c.M, 1.f, wg, c.K, 0, d, c.N, d_stride, 0.f, cols, c.N,
                                        (long long)per_image, n);
                dn_gpu_col2im_images(cols, n, (size_t)in_stride, c.cg, l->h, l->w, c.size, c.pad, c.stride_y,
                                     c.stride_x, c.dilation, l->out_h, l->out_w, in_delta + in_off);
            }
            if (s) return dn_layer_fail(l, s, "%s", dn_last_error());
        }
    }
    return DN_OK;
}

extern "C" {
dn_status dn_convolutional_forward_gpu(dn_layer *l, dn_net *net) { return conv_forward_gpu(l, net); }
dn_status dn_convolutional_backward_gpu(dn_layer *l, dn_net *net) { return conv_backward_gpu(l, net); }
}

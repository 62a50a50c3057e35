/* convolutional.cu - [convolutional] on the device: the plain passes of
 * convolutional.c, the convolution itself by cuDNN in a build with it (see
 * the cuDNN section) or by im2col + cuBLAS (forward: per group, im2col of a chunk of the mini-batch's
 * images in one launch and one strided batched cuBLAS GEMM for them, 1x1
 * convolutions straight on the input; backward by chunks, the weight
 * gradient one GEMM per chunk over all its images; batch norm with
 * the batch's statistics in training and the rolling ones otherwise, then
 * normalization, scale, bias and activation in one pass over the output
 * (dn_gpu_output_stage); backward the activation's gradient, the bias and
 * scale gradients' sums and batch norm in one pass and one more
 * (dn_gpu_output_stage_backward), then the weight gradient and col2im of
 * W^T * delta).
 *
 * Device scratch slots: 0 batch mean, 1 batch variance, 2 x_norm, 3 the
 * pre-activation values (kept when the activation's derivative needs them).
 * The options are read back from the layer's resolved attributes (make
 * checked them). */
#include "cuda.h"
#include "../ops/ops.h"

#ifdef DN_CUDNN
#include <cudnn.h>
#endif

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


/* output = W * input by im2col + cuBLAS: the mini-batch in chunks of images, per group one im2col launch for the
 * chunk's images and one strided batched GEMM (the group's weights for every image) */
static dn_status conv_gemm_forward(dn_net *net, dn_layer *l, const conv_gpu *cp)
{
    const conv_gpu c = *cp;
    const size_t plane = (size_t)l->h * l->w;
    const float *input = dn_gpu_input(net, l);
    const float *weights = dn_layer_find_param(l, "weights")->data_gpu;
    dn_status s;
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
                                         (long long)c.groups * c.M * c.N, n, DN_GEMM_VALUES)))
                return dn_layer_fail(l, s, "%s", dn_last_error());
        }
    }
    return DN_OK;
}

#ifdef DN_CUDNN
/* ---- the cuDNN path (dn_gpu_cudnn): per layer shape a plan of descriptors and the fastest algorithm of each
 * pass that cudnnFind* measured, in float32 arithmetic (CUDNN_FMA_MATH: no TF32, no tensor-core rounding) ---- */
#define DNN_WORKSPACE_LIMIT ((size_t)1 << 30) /* bytes an algorithm may ask for */

typedef struct {
    int ok;                /* 1: cuDNN runs this layer; -1: it cannot (the GEMM path does) */
    int batch, h, w;       /* the shape it was made for */
    cudnnTensorDescriptor_t x, y;
    cudnnFilterDescriptor_t f;
    cudnnConvolutionDescriptor_t conv;
    cudnnConvolutionFwdAlgo_t fwd;
    cudnnConvolutionBwdFilterAlgo_t bwd_filter;
    cudnnConvolutionBwdDataAlgo_t bwd_data;
    size_t fwd_bytes, filter_bytes, data_bytes;
    int found_backward;
} dnn_plan;

static void dnn_release(void *p)
{
    dnn_plan *q = (dnn_plan *)p;
    if (q->x) cudnnDestroyTensorDescriptor(q->x);
    if (q->y) cudnnDestroyTensorDescriptor(q->y);
    if (q->f) cudnnDestroyFilterDescriptor(q->f);
    if (q->conv) cudnnDestroyConvolutionDescriptor(q->conv);
}

static dn_status dnn_fail(const dn_layer *l, cudnnStatus_t st, const char *what)
{
    return dn_layer_fail(l, DN_ERR_STATE, "cuDNN %s: %s", what, cudnnGetErrorString(st));
}

/* The plan of layer l (made on first use): NULL when cuDNN does not run it. */
static dn_status dnn_plan_of(dn_net *net, dn_layer *l, const conv_gpu *c, dnn_plan **out)
{
    *out = NULL;
    cudnnHandle_t h = (cudnnHandle_t)dn_gpu_cudnn(net);
    if (!h) return DN_OK;
    void *block;
    int fresh;
    dn_status s = dn_gpu_plan(net, l, sizeof(dnn_plan), dnn_release, &block, &fresh);
    if (s) return s;
    dnn_plan *p = (dnn_plan *)block;
    if (!fresh && p->batch == l->batch && p->h == l->h && p->w == l->w) {
        *out = p->ok > 0 ? p : NULL;
        return DN_OK;
    }
    dnn_release(p);
    memset(p, 0, sizeof(*p));
    p->batch = l->batch, p->h = l->h, p->w = l->w, p->ok = -1;
    cudnnStatus_t st;
    if ((st = cudnnCreateTensorDescriptor(&p->x)) || (st = cudnnCreateTensorDescriptor(&p->y)) ||
        (st = cudnnCreateFilterDescriptor(&p->f)) || (st = cudnnCreateConvolutionDescriptor(&p->conv)) ||
        (st = cudnnSetTensor4dDescriptor(p->x, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, l->batch, l->c, l->h, l->w)) ||
        (st = cudnnSetTensor4dDescriptor(p->y, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, l->batch, l->out_c, l->out_h,
                                         l->out_w)) ||
        (st = cudnnSetFilter4dDescriptor(p->f, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NCHW, c->filters, c->cg, c->size,
                                         c->size)) ||
        (st = cudnnSetConvolution2dDescriptor(p->conv, c->pad, c->pad, c->stride_y, c->stride_x, c->dilation,
                                              c->dilation, CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT)) ||
        (st = cudnnSetConvolutionGroupCount(p->conv, c->groups)) ||
        (st = cudnnSetConvolutionMathType(p->conv, CUDNN_FMA_MATH)))
        return dnn_fail(l, st, "describing the convolution");
    int n, oc, oh, ow;
    if ((st = cudnnGetConvolution2dForwardOutputDim(p->conv, p->x, p->f, &n, &oc, &oh, &ow)))
        return dnn_fail(l, st, "the output shape");
    if (n != l->batch || oc != l->out_c || oh != l->out_h || ow != l->out_w) return DN_OK; /* not darknet's shape */
    cudnnConvolutionFwdAlgoPerf_t perf[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
    int found = 0;
    if ((st = cudnnFindConvolutionForwardAlgorithm(h, p->x, p->f, p->conv, p->y, CUDNN_CONVOLUTION_FWD_ALGO_COUNT,
                                                   &found, perf)))
        return dnn_fail(l, st, "choosing the forward algorithm");
    int k = 0;
    while (k < found && (perf[k].status != CUDNN_STATUS_SUCCESS || perf[k].memory > DNN_WORKSPACE_LIMIT ||
                         perf[k].mathType != CUDNN_FMA_MATH))
        ++k;
    if (k == found) return DN_OK;
    p->fwd = perf[k].algo;
    p->fwd_bytes = perf[k].memory;
    p->ok = 1;
    *out = p;
    return DN_OK;
}

/* the backward algorithms, found on the first backward pass (inference never needs them) */
static dn_status dnn_find_backward(dn_net *net, dn_layer *l, dnn_plan *p)
{
    if (p->found_backward) return DN_OK;
    cudnnHandle_t h = (cudnnHandle_t)dn_gpu_cudnn(net);
    cudnnStatus_t st;
    cudnnConvolutionBwdFilterAlgoPerf_t fp[CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT];
    cudnnConvolutionBwdDataAlgoPerf_t dp[CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT];
    int nf = 0, nd = 0, i = 0, j = 0;
    if ((st = cudnnFindConvolutionBackwardFilterAlgorithm(h, p->x, p->y, p->conv, p->f,
                                                          CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT, &nf, fp)))
        return dnn_fail(l, st, "choosing the weight-gradient algorithm");
    if ((st = cudnnFindConvolutionBackwardDataAlgorithm(h, p->f, p->y, p->conv, p->x,
                                                        CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT, &nd, dp)))
        return dnn_fail(l, st, "choosing the input-gradient algorithm");
    while (i < nf && (fp[i].status != CUDNN_STATUS_SUCCESS || fp[i].memory > DNN_WORKSPACE_LIMIT ||
                      fp[i].mathType != CUDNN_FMA_MATH))
        ++i;
    while (j < nd && (dp[j].status != CUDNN_STATUS_SUCCESS || dp[j].memory > DNN_WORKSPACE_LIMIT ||
                      dp[j].mathType != CUDNN_FMA_MATH))
        ++j;
    if (i == nf || j == nd) return dn_layer_fail(l, DN_ERR_STATE, "cuDNN has no backward algorithm for this layer");
    p->bwd_filter = fp[i].algo;
    p->filter_bytes = fp[i].memory;
    p->bwd_data = dp[j].algo;
    p->data_bytes = dp[j].memory;
    p->found_backward = 1;
    return DN_OK;
}

static dn_status dnn_workspace(dn_net *net, size_t bytes, float **ws)
{
    *ws = NULL;
    return bytes ? dn_gpu_workspace(net, (bytes + sizeof(float) - 1) / sizeof(float), ws) : DN_OK;
}

/* output = W * input, every image in one call */
static dn_status dnn_forward(dn_net *net, dn_layer *l, dnn_plan *p)
{
    const float one = 1.f, zero = 0.f;
    float *ws;
    dn_status s = dnn_workspace(net, p->fwd_bytes, &ws);
    if (s) return s;
    const cudnnStatus_t st = cudnnConvolutionForward(
        (cudnnHandle_t)dn_gpu_cudnn(net), &one, p->x, dn_gpu_input(net, l), p->f,
        dn_layer_find_param(l, "weights")->data_gpu, p->conv, p->fwd, ws, p->fwd_bytes, &zero, p->y, l->output_gpu);
    return st ? dnn_fail(l, st, "forward") : DN_OK;
}

/* dW += (delta, input), input delta += (W, delta) */
static dn_status dnn_backward(dn_net *net, dn_layer *l, dnn_plan *p)
{
    dn_status s = dnn_find_backward(net, l, p);
    if (s) return s;
    cudnnHandle_t h = (cudnnHandle_t)dn_gpu_cudnn(net);
    const float one = 1.f;
    dn_param *w = dn_layer_find_param(l, "weights");
    float *ws;
    cudnnStatus_t st;
    if (w->grad_gpu) {
        if ((s = dnn_workspace(net, p->filter_bytes, &ws))) return s;
        if ((st = cudnnConvolutionBackwardFilter(h, &one, p->x, dn_gpu_input(net, l), p->y, l->delta_gpu, p->conv,
                                                 p->bwd_filter, ws, p->filter_bytes, &one, p->f, w->grad_gpu)))
            return dnn_fail(l, st, "weight gradient");
    }
    float *in_delta = dn_gpu_input_delta(net, l);
    if (in_delta) {
        if ((s = dnn_workspace(net, p->data_bytes, &ws))) return s;
        if ((st = cudnnConvolutionBackwardData(h, &one, p->f, w->data_gpu, p->y, l->delta_gpu, p->conv, p->bwd_data,
                                               ws, p->data_bytes, &one, p->x, in_delta)))
            return dnn_fail(l, st, "input gradient");
    }
    return DN_OK;
}
#endif

static dn_status conv_forward_gpu(dn_layer *l, dn_net *net)
{
    conv_gpu c;
    dn_status s = read_options(l, &c);
    if (s) return s;
    const size_t total = (size_t)l->batch * l->outputs;
#ifdef DN_CUDNN
    dnn_plan *plan;
    if ((s = dnn_plan_of(net, l, &c, &plan))) return s;
    if (plan && (s = dnn_forward(net, l, plan))) return s;
    if (!plan)
#endif
    if ((s = conv_gemm_forward(net, l, &c))) return s;
    if (c.batch_normalize && dn_layer_sync_bn(net, l))
        return dn_layer_fail(l, DN_ERR_UNSUPPORTED, "sync_bn (batch statistics over the processes) is not "
                                                    "implemented on CUDA devices yet; train with sync_bn=0");
    /* batch norm's statistics, then normalization, scale, bias and activation in one pass (ops/blas.cu) */
    const float *mean = NULL, *var = NULL, *scales = NULL;
    float *xn = NULL, *pre = NULL;
    if (c.batch_normalize) {
        scales = dn_layer_find_param(l, "scales")->data_gpu;
        float *rmean = dn_layer_find_param(l, "rolling_mean")->data_gpu;
        float *rvar = dn_layer_find_param(l, "rolling_variance")->data_gpu;
        mean = rmean;
        var = rvar;
        if (net->train) {
            float *bm, *bv;
            if ((size_t)l->batch * c.N < 2)
                return dn_layer_fail(l, DN_ERR_SHAPE,
                                     "batch normalization in training needs at least 2 values per filter "
                                     "(batch %d x %d x %d)", l->batch, l->out_h, l->out_w);
            float *scratch; /* the workspace: the columns are no longer needed */
            if ((s = dn_gpu_buffer(l, 0, (size_t)l->out_c, &bm)) || (s = dn_gpu_buffer(l, 1, (size_t)l->out_c, &bv)) ||
                (s = dn_gpu_buffer(l, 2, total, &xn)) ||
                (s = dn_gpu_workspace(net, dn_gpu_channel_scratch(l->batch, l->out_c, c.N), &scratch)))
                return s;
            dn_gpu_batchnorm_statistics(l->output_gpu, l->batch, l->out_c, c.N, bm, bv, rmean, rvar, DN_BN_ROLLING,
                                        scratch);
            mean = bm;
            var = bv;
        }
    }
    if (net->train && dn_activation_needs_input(c.activation) && (s = dn_gpu_buffer(l, 3, total, &pre))) return s;
    dn_gpu_output_stage(l->output_gpu, xn, mean, var, scales, dn_layer_find_param(l, "biases")->data_gpu, pre,
                        l->batch, l->out_c, c.N, c.activation);
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
    dn_param *bias = dn_layer_find_param(l, "biases"), *w = dn_layer_find_param(l, "weights");
    dn_param *scales = c.batch_normalize ? dn_layer_find_param(l, "scales") : NULL;
    float *scratch; /* the workspace, before the columns use it */
    if ((s = dn_gpu_workspace(net, dn_gpu_channel_scratch(l->batch, l->out_c, c.N), &scratch))) return s;
    /* the activation's gradient, the bias and scale gradients and batch norm's backward in one pass (ops/blas.cu) */
    dn_gpu_output_stage_backward(l->delta_gpu, l->output_gpu, needs_x ? l->gpu_buf[3] : NULL, c.activation,
                                 scales ? l->gpu_buf[2] : NULL, scales ? l->gpu_buf[1] : NULL,
                                 scales ? scales->data_gpu : NULL, scales ? scales->grad_gpu : NULL, bias->grad_gpu,
                                 l->batch, l->out_c, c.N, scratch);
#ifdef DN_CUDNN
    dnn_plan *plan;
    if ((s = dnn_plan_of(net, l, &c, &plan))) return s;
    if (plan) return dnn_backward(net, l, plan);
#endif
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
                                     w->grad_gpu + (size_t)g * c.M * c.K, c.K, DN_GEMM_GRAD_A)))
                    return dn_layer_fail(l, s, "%s", dn_last_error());
            }
            if (!in_delta) continue;
            /* the columns' delta [K x N] = W_g^T * d_b, added straight in for 1x1, else through col2im */
            if (c.direct) {
                s = dn_gpu_gemm_strided(net, 1, 0, c.K, c.N, c.M, 1.f, wg, c.K, 0, d, c.N, d_stride, 1.f,
                                        in_delta + in_off, c.N, in_stride, n, DN_GEMM_GRAD_B);
            } else {
                s = dn_gpu_gemm_strided(net, 1, 0, c.K, c.N, c.M, 1.f, wg, c.K, 0, d, c.N, d_stride, 0.f, cols, c.N,
                                        (long long)per_image, n, DN_GEMM_GRAD_B);
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

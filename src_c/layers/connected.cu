/* connected.cu - [connected] on the device, as connected.c: z[B][N] =
 * x[B][K] W^T (cuBLAS), batch norm over the batch per output (the batch's
 * statistics in training, else the rolling ones) and scale, bias,
 * activation; backward through the activation, bias, batch norm, then
 * weight grad [N][K] += dz^T x and input delta [B][K] += dz W.
 * Device slots: 0 batch mean, 1 batch variance, 2 z_norm, 3 the
 * pre-activation values (kept when the activation's derivative needs them). */
#include "cuda.h"
#include "../ops/ops.h"

static dn_status read_options(const dn_layer *l, int *bn, dn_activation *act)
{
    const char *name;
    dn_status s;
    if ((s = dn_attr_int(l, "batch_normalize", bn)) || (s = dn_attr_string(l, "activation", &name))) return s;
    return dn_activation_from_name(name, act);
}

static dn_status connected_forward_gpu(dn_layer *l, dn_net *net)
{
    int bn;
    dn_activation act;
    dn_status s = read_options(l, &bn, &act);
    if (s) return s;
    const int K = (int)l->inputs, N = l->out_c;
    const size_t total = (size_t)l->batch * N;
    if ((s = dn_gpu_gemm(net, 0, 1, l->batch, N, K, 1.f, dn_gpu_input(net, l), K,
                         dn_layer_find_param(l, "weights")->data_gpu, K, 0.f, l->output_gpu, N, DN_GEMM_VALUES)))
        return dn_layer_fail(l, s, "%s", dn_last_error());
    const float *mean = NULL, *var = NULL, *scales = NULL;
    float *xn = NULL, *pre = NULL;
    if (bn) {
        float *rmean = dn_layer_find_param(l, "rolling_mean")->data_gpu;
        float *rvar = dn_layer_find_param(l, "rolling_variance")->data_gpu;
        scales = dn_layer_find_param(l, "scales")->data_gpu;
        mean = rmean;
        var = rvar;
        if (net->train) {
            float *bm, *bv;
            if (l->batch < 2)
                return dn_layer_fail(l, DN_ERR_SHAPE,
                                     "batch normalization in training needs a mini-batch of at least 2 images");
            float *scratch;
            if ((s = dn_gpu_buffer(l, 0, (size_t)N, &bm)) || (s = dn_gpu_buffer(l, 1, (size_t)N, &bv)) ||
                (s = dn_gpu_buffer(l, 2, total, &xn)) ||
                (s = dn_gpu_workspace(net, dn_gpu_channel_scratch(l->batch, N, 1), &scratch)))
                return s;
            dn_gpu_batchnorm_statistics(l->output_gpu, l->batch, N, 1, bm, bv, rmean, rvar, DN_BN_ROLLING_CONNECTED,
                                        scratch);
            mean = bm;
            var = bv;
        }
    }
    if (net->train && dn_activation_needs_input(act) && (s = dn_gpu_buffer(l, 3, total, &pre))) return s;
    /* normalization, scale, bias and activation in one pass (blas.cu's output stage) */
    dn_gpu_output_stage(l->output_gpu, xn, mean, var, scales, dn_layer_find_param(l, "biases")->data_gpu, pre, l->batch,
                        N, 1, act);
    return DN_OK;
}

static dn_status connected_backward_gpu(dn_layer *l, dn_net *net)
{
    int bn;
    dn_activation act;
    dn_status s = read_options(l, &bn, &act);
    if (s) return s;
    const int K = (int)l->inputs, N = l->out_c;
    const size_t total = (size_t)l->batch * N;
    const int needs_x = dn_activation_needs_input(act);
    if ((bn && l->gpu_cap[2] < total) || (needs_x && l->gpu_cap[3] < total))
        return dn_layer_fail(l, DN_ERR_STATE, "backward needs a training forward pass first");
    dn_param *bias = dn_layer_find_param(l, "biases"), *w = dn_layer_find_param(l, "weights");
    dn_param *scales = bn ? dn_layer_find_param(l, "scales") : NULL;
    float *scratch;
    if ((s = dn_gpu_workspace(net, dn_gpu_channel_scratch(l->batch, N, 1), &scratch))) return s;
    /* the activation's gradient, the bias and scale gradients and batch norm's backward (blas.cu's output stage) */
    dn_gpu_output_stage_backward(l->delta_gpu, l->output_gpu, needs_x ? l->gpu_buf[3] : NULL, act,
                                 scales ? l->gpu_buf[2] : NULL, scales ? l->gpu_buf[1] : NULL,
                                 scales ? scales->data_gpu : NULL, scales ? scales->grad_gpu : NULL, bias->grad_gpu,
                                 l->batch, N, 1, scratch);
    if (w->grad_gpu && (s = dn_gpu_gemm(net, 1, 0, N, K, l->batch, 1.f, l->delta_gpu, N, dn_gpu_input(net, l), K, 1.f,
                                        w->grad_gpu, K, DN_GEMM_GRAD_A)))
        return dn_layer_fail(l, s, "%s", dn_last_error());
    float *d = dn_gpu_input_delta(net, l);
    if (d && (s = dn_gpu_gemm(net, 0, 0, l->batch, K, N, 1.f, l->delta_gpu, N, w->data_gpu, K, 1.f, d, K,
                              DN_GEMM_GRAD_A)))
        return dn_layer_fail(l, s, "%s", dn_last_error());
    return DN_OK;
}

extern "C" {
dn_status dn_connected_forward_gpu(dn_layer *l, dn_net *net) { return connected_forward_gpu(l, net); }
dn_status dn_connected_backward_gpu(dn_layer *l, dn_net *net) { return connected_backward_gpu(l, net); }
}

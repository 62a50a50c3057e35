/* batchnorm.cu - [batchnorm] on the device, as batchnorm.c: the input
 * copied, normalized per channel (the batch's statistics in training, which
 * move the rolling ones, else the rolling ones), scaled and biased; backward
 * through the bias, the scale and the batch statistics (blas.cu's output stage), then
 * added into the input delta. Device slots: 0 batch mean, 1 batch variance,
 * 2 x_norm. */
#include "cuda.h"
#include "../ops/ops.h"

static dn_status batchnorm_forward_gpu(dn_layer *l, dn_net *net)
{
    const int hw = l->out_h * l->out_w;
    const size_t total = (size_t)l->batch * l->outputs;
    float *rmean = dn_layer_find_param(l, "rolling_mean")->data_gpu;
    float *rvar = dn_layer_find_param(l, "rolling_variance")->data_gpu;
    dn_status s;
    dn_gpu_copy(l->output_gpu, dn_gpu_input(net, l), total);
    const float *mean = rmean, *var = rvar;
    float *xn = NULL;
    if (net->train) {
        float *bm, *bv;
        if ((size_t)l->batch * hw < 2)
            return dn_layer_fail(l, DN_ERR_SHAPE,
                                 "batch normalization in training needs at least 2 values per channel "
                                 "(batch %d x %d x %d)", l->batch, l->out_h, l->out_w);
        float *scratch;
        if ((s = dn_gpu_buffer(l, 0, (size_t)l->out_c, &bm)) || (s = dn_gpu_buffer(l, 1, (size_t)l->out_c, &bv)) ||
            (s = dn_gpu_buffer(l, 2, total, &xn)) ||
            (s = dn_gpu_workspace(net, dn_gpu_channel_scratch(l->batch, l->out_c, hw), &scratch)))
            return s;
        dn_gpu_batchnorm_statistics(l->output_gpu, l->batch, l->out_c, hw, bm, bv, rmean, rvar, DN_BN_ROLLING,
                                    scratch);
        mean = bm;
        var = bv;
    }
    /* normalization, scale and bias in one pass (blas.cu's output stage, no activation) */
    dn_gpu_output_stage(l->output_gpu, xn, mean, var, dn_layer_find_param(l, "scales")->data_gpu,
                        dn_layer_find_param(l, "biases")->data_gpu, NULL, l->batch, l->out_c, hw, DN_ACT_LINEAR);
    return DN_OK;
}

static dn_status batchnorm_backward_gpu(dn_layer *l, dn_net *net)
{
    const size_t total = (size_t)l->batch * l->outputs;
    if (l->gpu_cap[2] < total) return dn_layer_fail(l, DN_ERR_STATE, "backward needs a training forward pass first");
    dn_param *scales = dn_layer_find_param(l, "scales");
    const int hw = l->out_h * l->out_w;
    float *scratch;
    dn_status s = dn_gpu_workspace(net, dn_gpu_channel_scratch(l->batch, l->out_c, hw), &scratch);
    if (s) return s;
    /* the bias and scale gradients' sums and batch norm's backward (blas.cu's output stage) */
    dn_gpu_output_stage_backward(l->delta_gpu, NULL, NULL, DN_ACT_LINEAR, l->gpu_buf[2], l->gpu_buf[1],
                                 scales->data_gpu, scales->grad_gpu, dn_layer_find_param(l, "biases")->grad_gpu,
                                 l->batch, l->out_c, hw, scratch);
    float *d = dn_gpu_input_delta(net, l);
    if (d) dn_gpu_axpy(d, l->delta_gpu, total, 1.f);
    return DN_OK;
}

extern "C" {
dn_status dn_batchnorm_forward_gpu(dn_layer *l, dn_net *net) { return batchnorm_forward_gpu(l, net); }
dn_status dn_batchnorm_backward_gpu(dn_layer *l, dn_net *net) { return batchnorm_backward_gpu(l, net); }
}

/* deformable.c - [deformable]: modulated deformable convolution (DCNv2).
 *
 * Options as [convolutional] (filters, size, stride/stride_x/stride_y,
 * pad/padding, dilation, batch_normalize, activation; no groups) plus
 * deformable_groups=DG (default 1, dividing the input channels) and
 * modulated (default 1). An internal convolution over the same input with
 * the same size, strides, padding and dilation gives, per output position,
 * O = 3*DG*k*k values (2*DG*k*k without modulation), initialized to zero as
 * in DCNv2: channels [0, 2*DG*k*k) are the offsets in torchvision's
 * deform_conv2d layout (group g, tap i = ky*k + kx: dy at 2*(g*k*k + i), dx at
 * 2*(g*k*k + i) + 1), the rest pass the logistic and are the masks (channel
 * 2*DG*k*k + g*k*k + i). Input channel c belongs to group c / (C/DG). Tap i of
 * output (oy, ox) samples its channel bilinearly at
 *     (oy*stride_y - pad + ky*dilation + dy, ox*stride_x - pad + kx*dilation + dx)
 * with torchvision's rule for the image's edge (layer_math.h's
 * dn_bilinear_points), times the mask; the samples form the columns the
 * main weights [filters][C][k][k] multiply, as a convolution's. Then batch
 * norm (or bias) and the activation as [convolutional]. The forward equals
 * torchvision.ops.deform_conv2d with the same tensors (tests/test_layers.py).
 *
 * Parameters in weights-file order: the main convolution as [convolutional]
 * writes it (biases, [scales, rolling_mean, rolling_variance], weights), then
 * offset_biases (O) and offset_weights [O][C][k][k].
 *
 * Backward: the activation, bias and batch norm as [convolutional]; then per
 * image dW += delta * columns^T, the columns' gradient W^T * delta goes to the
 * input through the bilinear weights, to the offsets through the weights'
 * derivatives and to the mask logits through mask * (1 - mask); the offset
 * convolution's gradient as a plain convolution's (im2col, col2im). */
#include "../ops/ops.h"
#include "cuda.h"
#include "../ops/layer_math.h"

#include <string.h>

typedef struct {
    int filters, size, stride_x, stride_y, padding, dilation, batch_normalize, dgroups, modulated, O;
    dn_activation activation;
    float *offsets;          /* the offset convolution's output of the last pass, [B][O][N] */
    size_t offsets_cap;
    float *x, *x_norm, *mean, *variance; /* kept for backward (as convolutional.c) */
    size_t x_cap, x_norm_cap, mean_cap, variance_cap;
    int trained;
} deform_state;

static dn_status deform_make(dn_layer *l, dn_net *net)
{
    (void)net;
    deform_state *s = dn_layer_priv(l, sizeof(deform_state));
    if (!s) return DN_ERR_NOMEM;
    if (dn_layer_owns(l, &s->offsets, &s->x, &s->x_norm, &s->mean, &s->variance, NULL)) return DN_ERR_ARG;
    const char *act;
    dn_status st;
    if ((st = dn_attr_int(l, "filters", &s->filters)) || (st = dn_attr_int(l, "size", &s->size)) ||
        (st = dn_attr_int(l, "stride_x", &s->stride_x)) || (st = dn_attr_int(l, "stride_y", &s->stride_y)) ||
        (st = dn_attr_int(l, "padding", &s->padding)) || (st = dn_attr_int(l, "dilation", &s->dilation)) ||
        (st = dn_attr_int(l, "batch_normalize", &s->batch_normalize)) ||
        (st = dn_attr_int(l, "deformable_groups", &s->dgroups)) || (st = dn_attr_int(l, "modulated", &s->modulated)) ||
        (st = dn_attr_string(l, "activation", &act)))
        return st;
    if ((st = dn_activation_from_name(act, &s->activation))) return dn_layer_fail(l, st, "unknown activation '%s'", act);
    if (s->filters < 1 || s->size < 1 || s->stride_x < 1 || s->stride_y < 1 || s->dilation < 1 || s->padding < 0)
        return dn_layer_fail(l, DN_ERR_ARG, "filters, size, strides and dilation must be positive, padding >= 0");
    if (s->dgroups < 1 || l->c % s->dgroups)
        return dn_layer_fail(l, DN_ERR_ARG, "deformable_groups=%d must divide the input's %d channels", s->dgroups, l->c);
    const int kk = s->size * s->size;
    s->O = (s->modulated ? 3 : 2) * s->dgroups * kk;
    const size_t n = (size_t)s->filters;
    float *p;
    if ((st = dn_layer_add_param_flags(l, "biases", n, DN_PARAM_TRAIN, &p))) return st;
    if (s->batch_normalize) {
        float *scales, *var;
        if ((st = dn_layer_add_param_flags(l, "scales", n, DN_PARAM_TRAIN, &scales)) ||
            (st = dn_layer_add_param_flags(l, "rolling_mean", n, 0, &p)) ||
            (st = dn_layer_add_param_flags(l, "rolling_variance", n, 0, &var)))
            return st;
        for (size_t i = 0; i < n; ++i) scales[i] = var[i] = 1.f;
    }
    if ((st = dn_layer_add_param_flags(l, "weights", n * (size_t)l->c * kk, DN_PARAM_TRAIN | DN_PARAM_DECAY, &p)) ||
        (st = dn_layer_add_param_flags(l, "offset_biases", (size_t)s->O, DN_PARAM_TRAIN, &p)) ||
        (st = dn_layer_add_param_flags(l, "offset_weights", (size_t)s->O * l->c * kk, DN_PARAM_TRAIN | DN_PARAM_DECAY,
                                       &p)))
        return st;
    return DN_OK;
}

static dn_status deform_setup(dn_layer *l, dn_net *net)
{
    (void)net;
    deform_state *s = l->priv;
    if ((size_t)l->c * s->size * s->size * s->filters != dn_layer_find_param(l, "weights")->count)
        return dn_layer_fail(l, DN_ERR_SHAPE, "input has %d channels, the layer was built for another count", l->c);
    l->out_c = s->filters;
    l->out_h = (l->h + 2 * s->padding - s->size) / s->stride_y + 1;
    l->out_w = (l->w + 2 * s->padding - s->size) / s->stride_x + 1;
    if (l->out_h < 1 || l->out_w < 1)
        return dn_layer_fail(l, DN_ERR_SHAPE, "kernel %d is larger than the padded input %d x %d", s->size, l->h, l->w);
    const size_t K = (size_t)l->c * s->size * s->size, N = (size_t)l->out_h * l->out_w;
    /* columns of the input (offset convolution), the deformable columns, their gradient, the offsets' gradient */
    l->workspace = (3 * K * N + (size_t)s->O * N) * sizeof(float);
    s->trained = 0;
    return DN_OK;
}

static dn_deform_shape shape_of(const deform_state *s)
{
    const dn_deform_shape q = {s->size, s->stride_y, s->stride_x, s->padding * s->dilation, s->dilation, s->dgroups,
                               s->modulated};
    return q;
}

static void im2col_of(const dn_layer *l, const deform_state *s, const float *im, float *cols)
{
    const int pad = s->padding * s->dilation;
    dn_im2col(im, l->c, l->h, l->w, s->size, s->size, pad, pad, s->stride_y, s->stride_x, s->dilation, s->dilation,
              l->out_h, l->out_w, cols);
}

/* the deformable columns [C*k*k][N] of one image from its input and offset convolution output */
static void deform_columns(const dn_layer *l, const dn_deform_shape *q, const float *im, const float *off, float *cols)
{
    const int kk = q->k * q->k, N = l->out_h * l->out_w, cpg = l->c / q->groups;
    for (int c = 0; c < l->c; ++c)
        for (int i = 0; i < kk; ++i) {
            const int g = c / cpg, ky = i / q->k, kx = i % q->k;
            const float *dy = off + (size_t)(2 * (g * kk + i)) * N, *dx = dy + N;
            const float *mk = q->modulated ? off + (size_t)(2 * q->groups * kk + g * kk + i) * N : NULL;
            float *col = cols + ((size_t)c * kk + i) * N;
            const float *plane = im + (size_t)c * l->h * l->w;
            for (int p = 0; p < N; ++p) {
                const int oy = p / l->out_w, ox = p % l->out_w;
                const float h = (float)(oy * q->stride_y - q->pad + ky * q->dilation) + dy[p];
                const float w = (float)(ox * q->stride_x - q->pad + kx * q->dilation) + dx[p];
                const dn_bilinear_pts b = dn_bilinear_points(l->h, l->w, h, w);
                float v = 0.f;
                for (int t = 0; t < 4; ++t)
                    if (b.idx[t] >= 0) v += b.wt[t] * plane[b.idx[t]];
                col[p] = mk ? v * dn_logistic1(mk[p]) : v;
            }
        }
}

static dn_status deform_forward(dn_layer *l, dn_net *net)
{
    deform_state *s = l->priv;
    const float *input = dn_layer_input(net, l);
    const int kk = s->size * s->size, K = l->c * kk, N = l->out_h * l->out_w, F = s->filters, O = s->O;
    const size_t total = (size_t)l->batch * l->outputs;
    const dn_deform_shape q = shape_of(s);
    dn_status st = dn_ensure_floats(&s->offsets, &s->offsets_cap, (size_t)l->batch * O * N);
    if (st) return st;
    float *cols_x = net->workspace, *cols = cols_x + (size_t)K * N;
    const float *w = dn_layer_find_param(l, "weights")->data, *wo = dn_layer_find_param(l, "offset_weights")->data;
    const float *bo = dn_layer_find_param(l, "offset_biases")->data;
    s->trained = 0;
    for (int b = 0; b < l->batch; ++b) {
        const float *im = input + (size_t)b * l->c * l->h * l->w;
        float *off = s->offsets + (size_t)b * O * N;
        im2col_of(l, s, im, cols_x);
        dn_gemm(net, 0, 0, O, N, K, 1.f, wo, K, cols_x, N, 0.f, off, N);
        for (int o = 0; o < O; ++o)
            for (int p = 0; p < N; ++p) off[(size_t)o * N + p] += bo[o];
        deform_columns(l, &q, im, off, cols);
        dn_gemm(net, 0, 0, F, N, K, 1.f, w, K, cols, N, 0.f, l->output + (size_t)b * l->outputs, N);
    }
    const float *bias = dn_layer_find_param(l, "biases")->data;
    if (s->batch_normalize) {
        float *rm = dn_layer_find_param(l, "rolling_mean")->data, *rv = dn_layer_find_param(l, "rolling_variance")->data;
        if (net->train) {
            if ((st = dn_ensure_floats(&s->mean, &s->mean_cap, (size_t)F)) ||
                (st = dn_ensure_floats(&s->variance, &s->variance_cap, (size_t)F)) ||
                (st = dn_ensure_floats(&s->x_norm, &s->x_norm_cap, total)))
                return st;
            dn_batchnorm_forward_train(l->output, l->batch, F, N, s->mean, s->variance, s->x_norm, rm, rv,
                                       DN_BN_ROLLING);
        } else {
            dn_normalize(l->output, rm, rv, l->batch, F, N);
        }
        dn_scale_bias(l->output, dn_layer_find_param(l, "scales")->data, l->batch, F, N);
    }
    dn_add_bias(l->output, bias, l->batch, F, N);
    if (net->train && dn_activation_needs_input(s->activation)) {
        if ((st = dn_ensure_floats(&s->x, &s->x_cap, total))) return st;
        memcpy(s->x, l->output, total * sizeof(float));
    }
    dn_activate(l->output, l->batch, F, N, s->activation);
    s->trained = net->train;
    return DN_OK;
}

static dn_status deform_backward(dn_layer *l, dn_net *net)
{
    deform_state *s = l->priv;
    if (!s->trained) return dn_layer_fail(l, DN_ERR_STATE, "backward needs a training forward pass first");
    const int kk = s->size * s->size, K = l->c * kk, N = l->out_h * l->out_w, F = s->filters, O = s->O;
    const int cpg = l->c / s->dgroups, hw = l->h * l->w;
    const dn_deform_shape q = shape_of(s);
    dn_activation_backward(l->output, dn_activation_needs_input(s->activation) ? s->x : NULL, l->delta, l->batch, F, N,
                           s->activation);
    dn_param *bias = dn_layer_find_param(l, "biases"), *w = dn_layer_find_param(l, "weights");
    dn_param *wo = dn_layer_find_param(l, "offset_weights"), *bo = dn_layer_find_param(l, "offset_biases");
    if (bias->grad) dn_backward_bias(bias->grad, l->delta, l->batch, F, N);
    if (s->batch_normalize) {
        dn_param *scales = dn_layer_find_param(l, "scales");
        dn_batchnorm_backward(l->delta, s->x_norm, s->variance, scales->data, scales->grad, l->batch, F, N);
    }
    const float *input = dn_layer_input(net, l);
    float *in_delta = dn_layer_input_delta(net, l);
    float *cols_x = net->workspace, *cols = cols_x + (size_t)K * N, *dcols = cols + (size_t)K * N;
    float *doff = dcols + (size_t)K * N;
    for (int b = 0; b < l->batch; ++b) {
        const float *im = input + (size_t)b * l->c * hw, *off = s->offsets + (size_t)b * O * N;
        const float *d = l->delta + (size_t)b * l->outputs;
        float *din = in_delta ? in_delta + (size_t)b * l->c * hw : NULL;
        deform_columns(l, &q, im, off, cols);
        if (w->grad) dn_gemm(net, 0, 1, F, K, N, 1.f, d, N, cols, N, 1.f, w->grad, K);
        dn_gemm(net, 1, 0, K, N, F, 1.f, w->data, K, d, N, 0.f, dcols, N);
        memset(doff, 0, (size_t)O * N * sizeof(float));
        for (int c = 0; c < l->c; ++c)
            for (int i = 0; i < kk; ++i) {
                const int g = c / cpg, ky = i / q.k, kx = i % q.k;
                const float *dy = off + (size_t)(2 * (g * kk + i)) * N, *dx = dy + N;
                const float *mk = q.modulated ? off + (size_t)(2 * q.groups * kk + g * kk + i) * N : NULL;
                float *gdy = doff + (size_t)(2 * (g * kk + i)) * N, *gdx = gdy + N;
                float *gmk = q.modulated ? doff + (size_t)(2 * q.groups * kk + g * kk + i) * N : NULL;
                const float *plane = im + (size_t)c * hw, *dc = dcols + ((size_t)c * kk + i) * N;
                float *dplane = din ? din + (size_t)c * hw : NULL;
                for (int p = 0; p < N; ++p) {
                    const int oy = p / l->out_w, ox = p % l->out_w;
                    const float h = (float)(oy * q.stride_y - q.pad + ky * q.dilation) + dy[p];
                    const float wv = (float)(ox * q.stride_x - q.pad + kx * q.dilation) + dx[p];
                    const dn_bilinear_pts pts = dn_bilinear_points(l->h, l->w, h, wv);
                    float v = 0.f, vh = 0.f, vw = 0.f;
                    for (int t = 0; t < 4; ++t)
                        if (pts.idx[t] >= 0) {
                            v += pts.wt[t] * plane[pts.idx[t]];
                            vh += pts.dh[t] * plane[pts.idx[t]];
                            vw += pts.dw[t] * plane[pts.idx[t]];
                        }
                    const float m = mk ? dn_logistic1(mk[p]) : 1.f, dv = dc[p] * m;
                    if (gmk) gmk[p] += dc[p] * v * m * (1.f - m);
                    gdy[p] += dv * vh;
                    gdx[p] += dv * vw;
                    if (dplane)
                        for (int t = 0; t < 4; ++t)
                            if (pts.idx[t] >= 0) dplane[pts.idx[t]] += dv * pts.wt[t];
                }
            }
        /* the offset convolution's gradients, as a plain convolution's */
        im2col_of(l, s, im, cols_x);
        if (wo->grad) dn_gemm(net, 0, 1, O, K, N, 1.f, doff, N, cols_x, N, 1.f, wo->grad, K);
        if (bo->grad)
            for (int o = 0; o < O; ++o) {
                double sum = 0;
                for (int p = 0; p < N; ++p) sum += doff[(size_t)o * N + p];
                bo->grad[o] += (float)sum;
            }
        if (din) {
            dn_gemm(net, 1, 0, K, N, O, 1.f, wo->data, K, doff, N, 0.f, dcols, N);
            const int pad = s->padding * s->dilation;
            dn_col2im(dcols, l->c, l->h, l->w, s->size, s->size, pad, pad, s->stride_y, s->stride_x, s->dilation,
                      s->dilation, l->out_h, l->out_w, din);
        }
    }
    return DN_OK;
}

const dn_layer_ops dn_deformable_ops = {
    .type = "deformable",
    .make = deform_make,
    .setup = deform_setup,
    .forward = deform_forward,
    .backward = deform_backward,
    DN_GPU_OPS(dn_deformable_forward_gpu, dn_deformable_backward_gpu),
};

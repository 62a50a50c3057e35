/* convolutional.c - [convolutional]
 *
 * Input [B][C][H][W], output [B][N][OH][OW] with N = filters and
 * OH = (H + 2*padding - size) / stride_y + 1, OW likewise with stride_x (darknet's
 * formula; dilation d spreads the kernel taps d pixels apart and pads by
 * padding*d). Weights [N][C/groups][size][size]; for each image and group g:
 *     out_g = W_g (N/groups x K) * im2col(in_g) (K x OH*OW),  K = C/groups*size*size
 * then either out += bias, or with batch_normalize (inference statistics)
 *     out = scale * (out - rolling_mean) / sqrt(rolling_variance + .00001) + bias,
 * then the activation. Parameters in darknet's file order: biases, scales,
 * rolling_mean, rolling_variance (the three only with batch_normalize), weights. */
#include "internal.h"


typedef struct {
    int filters, size, stride_x, stride_y, padding, groups, dilation, batch_normalize;
    dn_activation activation;
    float *biases, *scales, *rolling_mean, *rolling_variance, *weights;
} conv_state;

static dn_status conv_make(dn_layer *l, dn_net *net)
{
    (void)net;
    conv_state *s = dn_layer_priv(l, sizeof(conv_state));
    if (!s) return DN_ERR_NOMEM;
    const char *act;
    dn_status st;
    if ((st = dn_attr_int(l, "filters", &s->filters)) || (st = dn_attr_int(l, "size", &s->size)) ||
        (st = dn_attr_int(l, "stride_x", &s->stride_x)) || (st = dn_attr_int(l, "stride_y", &s->stride_y)) ||
        (st = dn_attr_int(l, "padding", &s->padding)) || (st = dn_attr_int(l, "groups", &s->groups)) ||
        (st = dn_attr_int(l, "dilation", &s->dilation)) ||
        (st = dn_attr_int(l, "batch_normalize", &s->batch_normalize)) || (st = dn_attr_string(l, "activation", &act)))
        return st;
    if ((st = dn_activation_from_name(act, &s->activation))) return dn_layer_fail(l, st, "unknown activation '%s'", act);
    if (s->filters < 1 || s->size < 1 || s->stride_x < 1 || s->stride_y < 1 || s->groups < 1 || s->dilation < 1 ||
        s->padding < 0)
        return dn_layer_fail(l, DN_ERR_ARG,
                             "filters, size, stride, groups and dilation must be positive and padding >= 0 "
                             "(filters=%d size=%d stride_x=%d stride_y=%d groups=%d dilation=%d padding=%d)",
                             s->filters, s->size, s->stride_x, s->stride_y, s->groups, s->dilation, s->padding);
    if (l->c % s->groups || s->filters % s->groups)
        return dn_layer_fail(l, DN_ERR_SHAPE, "groups=%d must divide the input channels (%d) and filters (%d)", s->groups,
                             l->c, s->filters);
    const size_t n = (size_t)s->filters;
    if ((st = dn_layer_add_param(l, "biases", n, &s->biases))) return st;
    if (s->batch_normalize) {
        if ((st = dn_layer_add_param(l, "scales", n, &s->scales)) ||
            (st = dn_layer_add_param(l, "rolling_mean", n, &s->rolling_mean)) ||
            (st = dn_layer_add_param(l, "rolling_variance", n, &s->rolling_variance)))
            return st;
        for (size_t i = 0; i < n; ++i) s->scales[i] = s->rolling_variance[i] = 1.f;
    }
    return dn_layer_add_param(l, "weights", n * (size_t)(l->c / s->groups) * s->size * s->size, &s->weights);
}

static dn_status conv_setup(dn_layer *l, dn_net *net)
{
    (void)net;
    conv_state *s = l->priv;
    if (l->c % s->groups)
        return dn_layer_fail(l, DN_ERR_SHAPE, "groups=%d does not divide the input channels (%d)", s->groups, l->c);
    l->out_c = s->filters;
    l->out_h = (l->h + 2 * s->padding - s->size) / s->stride_y + 1;
    l->out_w = (l->w + 2 * s->padding - s->size) / s->stride_x + 1;
    if (l->h + 2 * s->padding < s->size || l->w + 2 * s->padding < s->size)
        return dn_layer_fail(l, DN_ERR_SHAPE, "kernel %d is larger than the padded input %d x %d", s->size, l->h, l->w);
    const int direct = s->size == 1 && s->stride_x == 1 && s->stride_y == 1 && s->padding == 0;
    l->workspace = direct ? 0
                          : (size_t)l->out_h * l->out_w * (size_t)(l->c / s->groups) * s->size * s->size * sizeof(float);
    return DN_OK;
}

static dn_status conv_forward(dn_layer *l, dn_net *net)
{
    conv_state *s = l->priv;
    const int M = s->filters / s->groups;
    const int K = l->c / s->groups * s->size * s->size;
    const int N = l->out_h * l->out_w;
    const int cg = l->c / s->groups;
    const float *input = dn_layer_input(net, l);
    for (int b = 0; b < l->batch; ++b) {
        for (int g = 0; g < s->groups; ++g) {
            const float *im = input + ((size_t)b * l->c + (size_t)g * cg) * l->h * l->w;
            const float *a = s->weights + (size_t)g * M * K;
            float *c = l->output + ((size_t)b * s->groups + g) * (size_t)M * N;
            const float *cols = im;
            if (l->workspace) {
                dn_im2col(im, cg, l->h, l->w, s->size, s->size, s->padding * s->dilation, s->padding * s->dilation,
                          s->stride_y, s->stride_x, s->dilation, s->dilation, l->out_h, l->out_w, net->workspace);
                cols = net->workspace;
            }
            dn_gemm(net, 0, 0, M, N, K, 1.f, a, K, cols, N, 0.f, c, N);
        }
    }
    if (s->batch_normalize) {
        dn_normalize(l->output, s->rolling_mean, s->rolling_variance, l->batch, l->out_c, N);
        dn_scale_bias(l->output, s->scales, l->batch, l->out_c, N);
    }
    dn_add_bias(l->output, s->biases, l->batch, l->out_c, N);
    dn_activate(l->output, l->batch, l->out_c, N, s->activation);
    return DN_OK;
}


const dn_layer_ops dn_convolutional_ops = {
    .type = "convolutional",
    .make = conv_make,
    .setup = conv_setup,
    .forward = conv_forward,
};

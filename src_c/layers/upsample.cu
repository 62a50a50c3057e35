/* upsample.cu - [upsample] on the device, both modes of upsample.c, one
 * thread per value written: forward per output value (nearest copy, or the
 * sum of its block in reverse mode), backward per input value (the sum of the
 * deltas of its copies, or its block's delta in reverse mode), so no two
 * threads write the same place. */
#include "cuda.h"
#include "../ops/ops.h"

__global__ static void upsample_kernel(const float *in, int planes, int h, int w, int st, int reverse, float scale,
                                       int out_h, int out_w, float *out)
{
    DN_KERNEL_LOOP(o, (size_t)planes * out_h * out_w) {
        const size_t k = o / ((size_t)out_h * out_w);
        const int y = (int)(o / out_w % out_h), x = (int)(o % out_w);
        const float *src = in + k * h * w;
        if (!reverse) {
            out[o] = scale * src[(size_t)(y / st) * w + x / st];
        } else {
            float sum = 0.f;
            for (int dy = 0; dy < st; ++dy)
                for (int dx = 0; dx < st; ++dx) sum += scale * src[(size_t)(y * st + dy) * w + x * st + dx];
            out[o] = sum;
        }
    }
}

__global__ static void upsample_back_kernel(const float *delta, int planes, int h, int w, int st, int reverse,
                                            float scale, int out_h, int out_w, float *in_delta)
{
    DN_KERNEL_LOOP(t, (size_t)planes * h * w) {
        const size_t k = t / ((size_t)h * w);
        const int y = (int)(t / w % h), x = (int)(t % w);
        const float *d = delta + k * out_h * out_w;
        if (!reverse) {
            float sum = 0.f;
            for (int dy = 0; dy < st; ++dy)
                for (int dx = 0; dx < st; ++dx) sum += scale * d[(size_t)(y * st + dy) * out_w + x * st + dx];
            in_delta[t] += sum;
        } else if (y < out_h * st && x < out_w * st) {
            in_delta[t] += scale * d[(size_t)(y / st) * out_w + x / st];
        }
    }
}

static dn_status read_options(const dn_layer *l, int *stride, int *reverse, float *scale)
{
    dn_status s;
    if ((s = dn_attr_int(l, "stride", stride)) || (s = dn_attr_float(l, "scale", scale))) return s;
    *reverse = *stride < 0;
    if (*reverse) *stride = -*stride;
    return DN_OK;
}

static dn_status upsample_forward_gpu(dn_layer *l, dn_net *net)
{
    int st, reverse;
    float scale;
    dn_status s = read_options(l, &st, &reverse, &scale);
    if (s) return s;
    const size_t n = (size_t)l->batch * l->outputs;
    upsample_kernel<<<dn_grid(n), DN_LAUNCH>>>(dn_gpu_input(net, l), l->batch * l->c, l->h, l->w, st, reverse, scale,
                                              l->out_h, l->out_w, l->output_gpu);
    return DN_OK;
}

static dn_status upsample_backward_gpu(dn_layer *l, dn_net *net)
{
    int st, reverse;
    float scale;
    dn_status s = read_options(l, &st, &reverse, &scale);
    if (s) return s;
    float *d = dn_gpu_input_delta(net, l);
    if (!d) return DN_OK;
    const size_t n = (size_t)l->batch * l->inputs;
    upsample_back_kernel<<<dn_grid(n), DN_LAUNCH>>>(l->delta_gpu, l->batch * l->c, l->h, l->w, st, reverse, scale,
                                                   l->out_h, l->out_w, d);
    return DN_OK;
}

extern "C" {
dn_status dn_upsample_forward_gpu(dn_layer *l, dn_net *net) { return upsample_forward_gpu(l, net); }
dn_status dn_upsample_backward_gpu(dn_layer *l, dn_net *net) { return upsample_backward_gpu(l, net); }
}

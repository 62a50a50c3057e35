/* scale_channels.cu - [scale_channels] on the device, as scale_channels.c:
 * out = act(scale * F) with F the `from` layer's output and the scale the
 * input's value of the channel (or, scale_wh=1, of the pixel), one thread
 * per output. Backward with g = delta * act' (device slot 1; slot 0 keeps
 * the pre-activation values when act' needs them): dF += g * scale per
 * value; the input delta gets sum over the plane of g * F per channel (one
 * thread per image and channel, summed in double as the CPU), or with
 * scale_wh the sum over channels per pixel (one thread per image and pixel). */
#include "cuda.h"
#include "../ops/ops.h"

typedef struct {
    size_t hw, outputs;
    int c, in_c, wh;
} sc_shape;

/* the scale that multiplies output o */
static __device__ float scale_of(const float *in, size_t o, sc_shape q)
{
    const size_t b = o / q.outputs;
    return q.wh ? in[b * q.hw + o % q.hw] : in[b * q.in_c + o / q.hw % q.c];
}

__global__ static void scale_kernel(const float *in, const float *f, size_t n, sc_shape q, float *out)
{
    DN_KERNEL_LOOP(o, n) out[o] = scale_of(in, o, q) * f[o];
}

__global__ static void from_delta_kernel(const float *in, const float *g, size_t n, sc_shape q, float *df)
{
    DN_KERNEL_LOOP(o, n) df[o] += g[o] * scale_of(in, o, q);
}

/* per (image, channel): din[b][c] += sum over the plane of g * F */
__global__ static void channel_delta_kernel(const float *g, const float *f, size_t planes, sc_shape q, float *din)
{
    DN_KERNEL_LOOP(k, planes) {
        double acc = 0;
        for (size_t i = 0; i < q.hw; ++i) acc += (double)g[k * q.hw + i] * f[k * q.hw + i];
        din[k / q.c * q.in_c + k % q.c] += (float)acc;
    }
}

/* per (image, pixel): din[b][i] += sum over the channels of g * F, in channel order */
__global__ static void pixel_delta_kernel(const float *g, const float *f, size_t n, sc_shape q, float *din)
{
    DN_KERNEL_LOOP(t, n) {
        const size_t b = t / q.hw, i = t % q.hw;
        float v = din[t];
        for (int c = 0; c < q.c; ++c) {
            const size_t o = b * q.outputs + (size_t)c * q.hw + i;
            v += g[o] * f[o];
        }
        din[t] = v;
    }
}

static dn_status read_options(dn_layer *l, dn_net *net, int *from, dn_activation *act, sc_shape *q)
{
    dn_status s;
    if ((s = dn_layer_from_and_activation(l, net, from, act)) || (s = dn_attr_int(l, "scale_wh", &q->wh))) return s;
    q->hw = (size_t)l->out_h * l->out_w;
    q->outputs = l->outputs;
    q->c = l->out_c;
    q->in_c = l->c;
    return DN_OK;
}

static dn_status scale_channels_forward_gpu(dn_layer *l, dn_net *net)
{
    int from;
    dn_activation act;
    sc_shape q;
    dn_status s = read_options(l, net, &from, &act, &q);
    if (s) return s;
    const size_t n = (size_t)l->batch * l->outputs;
    scale_kernel<<<dn_grid(n), DN_LAUNCH>>>(dn_gpu_input(net, l), net->layers[from]->output_gpu, n, q, l->output_gpu);
    if (net->train && dn_activation_needs_input(act)) {
        float *x;
        if ((s = dn_gpu_buffer(l, 0, n, &x))) return s;
        dn_gpu_copy(x, l->output_gpu, n);
    }
    dn_gpu_activate(l->output_gpu, l->batch, l->out_c, (int)q.hw, act);
    return DN_OK;
}

static dn_status scale_channels_backward_gpu(dn_layer *l, dn_net *net)
{
    int from;
    dn_activation act;
    sc_shape q;
    dn_status s = read_options(l, net, &from, &act, &q);
    if (s) return s;
    const size_t n = (size_t)l->batch * l->outputs;
    const float *g;
    if ((s = dn_gpu_activation_delta(l, act, l->out_c, (int)q.hw, &g))) return s;
    const float *in = dn_gpu_input(net, l);
    const dn_layer *f = net->layers[from];
    float *din = dn_gpu_input_delta(net, l);
    if (din && q.wh) {
        const size_t m = (size_t)l->batch * q.hw;
        pixel_delta_kernel<<<dn_grid(m), DN_LAUNCH>>>(g, f->output_gpu, m, q, din);
    } else if (din) {
        const size_t planes = (size_t)l->batch * q.c;
        channel_delta_kernel<<<dn_grid(planes), DN_LAUNCH>>>(g, f->output_gpu, planes, q, din);
    }
    from_delta_kernel<<<dn_grid(n), DN_LAUNCH>>>(in, g, n, q, f->delta_gpu);
    return DN_OK;
}

extern "C" {
dn_status dn_scale_channels_forward_gpu(dn_layer *l, dn_net *net) { return scale_channels_forward_gpu(l, net); }
dn_status dn_scale_channels_backward_gpu(dn_layer *l, dn_net *net) { return scale_channels_backward_gpu(l, net); }
}

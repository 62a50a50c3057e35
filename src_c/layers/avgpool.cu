/* avgpool.cu - [avgpool] (global average pooling) on the device, as
 * avgpool.c: forward one thread per (image, channel) plane, summing its H*W
 * values in order and dividing by H*W; backward one thread per input value,
 * adding its plane's delta / (H*W). */
#include "cuda.h"
#include "../ops/ops.h"

__global__ static void avgpool_kernel(const float *in, size_t planes, size_t hw, float *out)
{
    DN_KERNEL_LOOP(k, planes) {
        float sum = 0.f;
        for (size_t i = 0; i < hw; ++i) sum += in[k * hw + i];
        out[k] = sum / hw;
    }
}

__global__ static void avgpool_back_kernel(const float *delta, size_t n, size_t hw, float *in_delta)
{
    DN_KERNEL_LOOP(i, n) in_delta[i] += delta[i / hw] / (float)hw;
}

static dn_status avgpool_forward_gpu(dn_layer *l, dn_net *net)
{
    const size_t planes = (size_t)l->batch * l->c;
    avgpool_kernel<<<dn_grid(planes), DN_LAUNCH>>>(dn_gpu_input(net, l), planes, (size_t)l->h * l->w, l->output_gpu);
    return DN_OK;
}

static dn_status avgpool_backward_gpu(dn_layer *l, dn_net *net)
{
    float *d = dn_gpu_input_delta(net, l);
    if (!d) return DN_OK;
    const size_t n = (size_t)l->batch * l->inputs;
    avgpool_back_kernel<<<dn_grid(n), DN_LAUNCH>>>(l->delta_gpu, n, (size_t)l->h * l->w, d);
    return DN_OK;
}

extern "C" {
dn_status dn_avgpool_forward_gpu(dn_layer *l, dn_net *net) { return avgpool_forward_gpu(l, net); }
dn_status dn_avgpool_backward_gpu(dn_layer *l, dn_net *net) { return avgpool_backward_gpu(l, net); }
}

/* reduction.cu - [reduction] on the device, as reduction.c (layer_math.h's
 * dn_reduce_run and dn_reduce_grad, reduction.c's options): one thread per output value reducing
 * its run, backward one thread per input value. */
#include "cuda.h"
#include "../ops/ops.h"
#include "../ops/layer_math.h"

__global__ static void reduce_kernel(const float *in, size_t outs, size_t n, int op, float coeff, float *out)
{
    DN_KERNEL_LOOP(o, outs) out[o] = dn_reduce_run(in + o * n, n, op, coeff);
}

__global__ static void reduce_grad_kernel(const float *in, const float *delta, size_t total, size_t n, int op,
                                          float coeff, float *d)
{
    DN_KERNEL_LOOP(i, total) d[i] += dn_reduce_grad(in[i], delta[i / n], n, op, coeff);
}

extern "C" {
dn_status dn_reduction_forward_gpu(dn_layer *l, dn_net *net)
{
    int op;
    float coeff;
    size_t n;
    dn_status st = dn_reduction_options(l, &op, &coeff, &n);
    if (st) return st;
    const size_t outs = (size_t)l->batch * l->outputs;
    reduce_kernel<<<dn_grid(outs), DN_LAUNCH>>>(dn_gpu_input(net, l), outs, n, op, coeff, l->output_gpu);
    return DN_OK;
}

dn_status dn_reduction_backward_gpu(dn_layer *l, dn_net *net)
{
    float *d = dn_gpu_input_delta(net, l);
    if (!d) return DN_OK;
    int op;
    float coeff;
    size_t n;
    dn_status st = dn_reduction_options(l, &op, &coeff, &n);
    if (st) return st;
    const size_t total = (size_t)l->batch * l->inputs;
    reduce_grad_kernel<<<dn_grid(total), DN_LAUNCH>>>(dn_gpu_input(net, l), l->delta_gpu, total, n, op, coeff, d);
    return DN_OK;
}
}

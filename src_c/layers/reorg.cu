/* reorg.cu - [reorg] and [reorg3d] on the device, both directions of
 * reorg.c: one thread per position a of the permutation's index space (the
 * input's shape for [reorg], the output's for [reorg3d]: dn_reorg_space)
 * moves the value between a and its pair z (layer_math.h's dn_reorg_pair):
 * forward out[a] = in[z] (reverse=1: out[z] = in[a]); backward the inverse
 * permutation, added into the input delta. A permutation: no two threads
 * write the same place. */
#include "cuda.h"
#include "../ops/ops.h"
#include "../ops/layer_math.h"

__global__ static void reorg_kernel(const float *x, size_t n, int w, int h, int c, int s, int to_z, int accumulate,
                                    float *out)
{
    DN_KERNEL_LOOP(a, n) {
        const size_t z = dn_reorg_pair(a, w, h, c, s);
        const size_t dst = to_z ? z : a, src = to_z ? a : z;
        out[dst] = accumulate ? out[dst] + x[src] : x[src];
    }
}

static dn_status reorg_pass(dn_layer *l, dn_net *net, int backward)
{
    int stride, reverse, w, h, c;
    dn_status s;
    if ((s = dn_attr_int(l, "stride", &stride)) || (s = dn_attr_int(l, "reverse", &reverse))) return s;
    dn_reorg_space(l, &w, &h, &c);
    const size_t n = (size_t)l->batch * l->outputs;
    if (!backward) {
        reorg_kernel<<<dn_grid(n), DN_LAUNCH>>>(dn_gpu_input(net, l), n, w, h, c, stride, reverse, 0, l->output_gpu);
        return DN_OK;
    }
    float *d = dn_gpu_input_delta(net, l);
    if (d) reorg_kernel<<<dn_grid(n), DN_LAUNCH>>>(l->delta_gpu, n, w, h, c, stride, !reverse, 1, d);
    return DN_OK;
}

extern "C" {
dn_status dn_reorg_forward_gpu(dn_layer *l, dn_net *net) { return reorg_pass(l, net, 0); }
dn_status dn_reorg_backward_gpu(dn_layer *l, dn_net *net) { return reorg_pass(l, net, 1); }
}

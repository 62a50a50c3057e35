/* dropout.cu - [dropout] on the device: out = in at inference; in a
 * training pass out = in * m. The mask m is drawn on the host by dropout.c's
 * dn_dropout_mask from the network's generator, one draw per element in
 * memory order as the CPU pass does, so the GPU and CPU drop the same values
 * and the generator's state moves the same way; it is copied to device
 * slot 0. Backward: the input delta += delta * m. */
#include "cuda.h"
#include "../ops/ops.h"

static dn_status dropout_forward_gpu(dn_layer *l, dn_net *net)
{
    const size_t n = (size_t)l->batch * l->outputs;
    if (!net->train) {
        dn_gpu_copy(l->output_gpu, dn_gpu_input(net, l), n);
        return DN_OK;
    }
    const float *mask;
    float *dev;
    dn_status s;
    if ((s = dn_dropout_mask(l, net, &mask)) || (s = dn_gpu_buffer(l, 0, n, &dev)) || (s = dn_gpu_push(dev, mask, n)))
        return s;
    dn_gpu_mul(l->output_gpu, dn_gpu_input(net, l), dev, n);
    return DN_OK;
}

static dn_status dropout_backward_gpu(dn_layer *l, dn_net *net)
{
    float *d = dn_gpu_input_delta(net, l);
    if (!d) return DN_OK;
    const size_t n = (size_t)l->batch * l->outputs;
    if (l->gpu_cap[0] < n) return dn_layer_fail(l, DN_ERR_STATE, "no training forward pass drew a mask");
    dn_gpu_mul_add(d, l->delta_gpu, l->gpu_buf[0], n);
    return DN_OK;
}

extern "C" {
dn_status dn_dropout_forward_gpu(dn_layer *l, dn_net *net) { return dropout_forward_gpu(l, net); }
dn_status dn_dropout_backward_gpu(dn_layer *l, dn_net *net) { return dropout_backward_gpu(l, net); }
}

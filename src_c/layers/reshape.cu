/* reshape.cu - [reshape] on the device, as reshape.c: the values copied,
 * the delta added back into the input delta. */
#include "cuda.h"
#include "../ops/ops.h"

extern "C" {
dn_status dn_reshape_forward_gpu(dn_layer *l, dn_net *net)
{
    dn_gpu_copy(l->output_gpu, dn_gpu_input(net, l), (size_t)l->batch * l->outputs);
    return DN_OK;
}

dn_status dn_reshape_backward_gpu(dn_layer *l, dn_net *net)
{
    float *d = dn_gpu_input_delta(net, l);
    if (d) dn_gpu_axpy(d, l->delta_gpu, (size_t)l->batch * l->outputs, 1.f);
    return DN_OK;
}
}

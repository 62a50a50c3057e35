/* sam.cu - [sam] on the device, as sam.c: out = act(in * F) elementwise;
 * backward with g = delta * act' (device slot 1; slot 0 keeps in * F when
 * act' needs it): the input delta += g * F and F's delta += g * in. */
#include "cuda.h"
#include "../ops/ops.h"

static dn_status sam_forward_gpu(dn_layer *l, dn_net *net)
{
    int from;
    dn_activation act;
    dn_status s = dn_layer_from_and_activation(l, net, &from, &act);
    if (s) return s;
    const size_t n = (size_t)l->batch * l->outputs;
    dn_gpu_mul(l->output_gpu, dn_gpu_input(net, l), net->layers[from]->output_gpu, n);
    if (net->train && dn_activation_needs_input(act)) {
        float *x;
        if ((s = dn_gpu_buffer(l, 0, n, &x))) return s;
        dn_gpu_copy(x, l->output_gpu, n);
    }
    dn_gpu_activate(l->output_gpu, l->batch, l->out_c, l->out_h * l->out_w, act);
    return DN_OK;
}

static dn_status sam_backward_gpu(dn_layer *l, dn_net *net)
{
    int from;
    dn_activation act;
    dn_status s = dn_layer_from_and_activation(l, net, &from, &act);
    if (s) return s;
    const size_t n = (size_t)l->batch * l->outputs;
    const float *g;
    if ((s = dn_gpu_activation_delta(l, act, l->out_c, l->out_h * l->out_w, &g))) return s;
    dn_layer *f = net->layers[from];
    float *din = dn_gpu_input_delta(net, l);
    if (din) dn_gpu_mul_add(din, g, f->output_gpu, n);
    dn_gpu_mul_add(f->delta_gpu, g, dn_gpu_input(net, l), n);
    return DN_OK;
}

extern "C" {
dn_status dn_sam_forward_gpu(dn_layer *l, dn_net *net) { return sam_forward_gpu(l, net); }
dn_status dn_sam_backward_gpu(dn_layer *l, dn_net *net) { return sam_backward_gpu(l, net); }
}

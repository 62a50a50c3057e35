/* activation.cu - [activation] on the device, as activation.c: out = f(in)
 * (activations.cu); backward the input delta += delta * f' (device slot 1;
 * slot 0 keeps the input when f' needs it). */
#include "cuda.h"
#include "../ops/ops.h"

static dn_status read_activation(const dn_layer *l, dn_activation *act)
{
    const char *name;
    dn_status s = dn_attr_string(l, "activation", &name);
    return s ? s : dn_activation_from_name(name, act);
}

static dn_status activation_forward_gpu(dn_layer *l, dn_net *net)
{
    dn_activation act;
    dn_status s = read_activation(l, &act);
    if (s) return s;
    const size_t n = (size_t)l->batch * l->outputs;
    const float *in = dn_gpu_input(net, l);
    if (net->train && dn_activation_needs_input(act)) {
        float *x;
        if ((s = dn_gpu_buffer(l, 0, n, &x))) return s;
        dn_gpu_copy(x, in, n);
    }
    dn_gpu_copy(l->output_gpu, in, n);
    dn_gpu_activate(l->output_gpu, l->batch, l->out_c, l->out_h * l->out_w, act);
    return DN_OK;
}

static dn_status activation_backward_gpu(dn_layer *l, dn_net *net)
{
    dn_activation act;
    dn_status s = read_activation(l, &act);
    if (s) return s;
    float *d = dn_gpu_input_delta(net, l);
    if (!d) return DN_OK;
    const float *g;
    if ((s = dn_gpu_activation_delta(l, act, l->out_c, l->out_h * l->out_w, &g))) return s;
    dn_gpu_axpy(d, g, (size_t)l->batch * l->outputs, 1.f);
    return DN_OK;
}

extern "C" {
dn_status dn_activation_forward_gpu(dn_layer *l, dn_net *net) { return activation_forward_gpu(l, net); }
dn_status dn_activation_backward_gpu(dn_layer *l, dn_net *net) { return activation_backward_gpu(l, net); }
}

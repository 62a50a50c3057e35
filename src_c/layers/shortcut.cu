/* shortcut.cu - [shortcut] on the device for the common case: no weights
 * and every source the shape of the input, out = act(in + sum_i from_i);
 * backward g = delta * act'(.) (device slot 1) is added to the input's delta
 * and every source's delta, as shortcut.c. Device slot 0 keeps the
 * pre-activation sum when the activation's derivative needs it. Weighted
 * shortcuts and sources of another size run on the host. */
#include "cuda.h"

#include <string.h>

static dn_status plain_case(const dn_layer *l, const dn_net *net, const int **src, int *nsrc, dn_activation *act,
                            int *plain)
{
    const char *wt, *name;
    dn_status s;
    if ((s = dn_attr_ints(l, "from", src, nsrc)) || (s = dn_attr_string(l, "weights_type", &wt)) ||
        (s = dn_attr_string(l, "activation", &name)) || (s = dn_activation_from_name(name, act)))
        return s;
    *plain = !strcmp(wt, "none");
    for (int i = 0; i < *nsrc; ++i) {
        const dn_layer *p = net->layers[(*src)[i]];
        if (p->out_c != l->out_c || p->out_h != l->out_h || p->out_w != l->out_w) *plain = 0;
    }
    return DN_OK;
}

static dn_status shortcut_forward_gpu(dn_layer *l, dn_net *net)
{
    const int *src;
    int nsrc, plain;
    dn_activation act;
    dn_status s = plain_case(l, net, &src, &nsrc, &act, &plain);
    if (s) return s;
    if (!plain) return dn_gpu_host_forward(net, l);
    const size_t n = (size_t)l->batch * l->outputs;
    dn_gpu_copy(l->output_gpu, dn_gpu_input(net, l), n);
    for (int i = 0; i < nsrc; ++i) dn_gpu_axpy(l->output_gpu, net->layers[src[i]]->output_gpu, n, 1.f);
    if (net->train && dn_activation_needs_input(act)) {
        float *x;
        if ((s = dn_gpu_buffer(l, 0, n, &x))) return s;
        dn_gpu_copy(x, l->output_gpu, n);
    }
    dn_gpu_activate(l->output_gpu, l->batch, l->out_c, l->out_h * l->out_w, act);
    return DN_OK;
}

static dn_status shortcut_backward_gpu(dn_layer *l, dn_net *net)
{
    const int *src;
    int nsrc, plain;
    dn_activation act;
    dn_status s = plain_case(l, net, &src, &nsrc, &act, &plain);
    if (s) return s;
    if (!plain) return dn_gpu_host_backward(net, l);
    const size_t n = (size_t)l->batch * l->outputs;
    const int needs_x = dn_activation_needs_input(act);
    if (needs_x && l->gpu_cap[0] < n) return dn_layer_fail(l, DN_ERR_STATE, "backward needs a training forward pass first");
    float *g;
    if ((s = dn_gpu_buffer(l, 1, n, &g))) return s;
    dn_gpu_copy(g, l->delta_gpu, n);
    dn_gpu_activation_backward(l->output_gpu, needs_x ? l->gpu_buf[0] : NULL, g, l->batch, l->out_c,
                               l->out_h * l->out_w, act);
    float *d = dn_gpu_input_delta(net, l);
    if (d) dn_gpu_axpy(d, g, n, 1.f);
    for (int i = 0; i < nsrc; ++i) dn_gpu_axpy(net->layers[src[i]]->delta_gpu, g, n, 1.f);
    return DN_OK;
}

extern "C" {
dn_status dn_shortcut_forward_gpu(dn_layer *l, dn_net *net) { return shortcut_forward_gpu(l, net); }
dn_status dn_shortcut_backward_gpu(dn_layer *l, dn_net *net) { return shortcut_backward_gpu(l, net); }
}

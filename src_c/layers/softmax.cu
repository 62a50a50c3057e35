/* softmax.cu - [softmax] on the device: the softmax with temperature of
 * each group (one thread per group, layer_math.h's dn_softmax_group, as
 * softmax.c). The cross-entropy loss of a training pass with truths stays on
 * the host with softmax.c's one implementation: the input and output are
 * copied to the host, dn_softmax_train_loss adds the loss and keeps its
 * gradient, which goes to device slot 0. Backward adds the softmax Jacobian
 * applied to the delta (dn_softmax_group_backward) and that gradient. */
#include "cuda.h"
#include "../ops/ops.h"

static dn_status read_options(const dn_layer *l, int *groups, float *temp)
{
    dn_status s;
    if ((s = dn_attr_int(l, "groups", groups)) || (s = dn_attr_float(l, "temperature", temp))) return s;
    return DN_OK;
}

static dn_status softmax_forward_gpu(dn_layer *l, dn_net *net)
{
    int groups;
    float temp;
    dn_status s = read_options(l, &groups, &temp);
    if (s) return s;
    const int n = (int)(l->inputs / groups);
    dn_gpu_softmax(dn_gpu_input(net, l), l->output_gpu, (size_t)l->batch * groups, n, 1, 1, (size_t)n, temp);
    if (!net->train) return DN_OK;
    if (net->truth && l->is_loss && (s = dn_gpu_pull_sources(net, l))) return s;
    if ((s = dn_softmax_train_loss(l, net))) return s;
    const float *xent = dn_softmax_xent(l);
    if (!xent) return DN_OK;
    const size_t total = (size_t)l->batch * l->inputs;
    float *dev;
    if ((s = dn_gpu_buffer(l, 0, total, &dev)) || (s = dn_gpu_push(dev, xent, total))) return s;
    return DN_OK;
}

static dn_status softmax_backward_gpu(dn_layer *l, dn_net *net)
{
    int groups;
    float temp;
    dn_status s = read_options(l, &groups, &temp);
    if (s) return s;
    float *d = dn_gpu_input_delta(net, l);
    if (!d) return DN_OK;
    const int n = (int)(l->inputs / groups);
    const size_t total = (size_t)l->batch * l->inputs;
    dn_gpu_softmax_backward(l->output_gpu, l->delta_gpu, d, (size_t)l->batch * groups, n, 1, 1, (size_t)n, temp);
    if (dn_softmax_xent(l)) {
        if (l->gpu_cap[0] < total) return dn_layer_fail(l, DN_ERR_STATE, "no training forward pass kept the loss gradient");
        dn_gpu_axpy(d, l->gpu_buf[0], total, 1.f);
    }
    return DN_OK;
}

extern "C" {
dn_status dn_softmax_forward_gpu(dn_layer *l, dn_net *net) { return softmax_forward_gpu(l, net); }
dn_status dn_softmax_backward_gpu(dn_layer *l, dn_net *net) { return softmax_backward_gpu(l, net); }
}

/* softmax.cu - [softmax] on the device: the softmax with temperature of
 * each group (one thread per group, layer_math.h's dn_softmax_group, as
 * softmax.c). The cross-entropy loss of a training pass with truths, two
 * ways: on the host (the default), the input and output copied there,
 * dn_softmax_train_loss adds the loss and keeps its gradient, which goes to
 * device slot 0; or on the device (PYDARKNET_LOSS=device; written without a
 * GPU to run it on, off by default until a device run checks it), the same
 * dn_softmax_group_loss a thread per group, the truths up and the groups'
 * losses down (summed on the host in softmax.c's order). Backward adds the
 * softmax Jacobian applied to the delta (dn_softmax_group_backward) and that
 * gradient. */
#include "cuda.h"
#include "../ops/ops.h"
#include "../ops/layer_math.h"

static dn_status read_options(const dn_layer *l, int *groups, float *temp)
{
    dn_status s;
    if ((s = dn_attr_int(l, "groups", groups)) || (s = dn_attr_float(l, "temperature", temp))) return s;
    return DN_OK;
}

__global__ static void group_loss_kernel(const float *in, const float *truth, const float *out, size_t groups, size_t n,
                                         float temp, float gamma, float alpha, float *grad, double *loss)
{
    DN_KERNEL_LOOP(g, groups)
        loss[g] = dn_softmax_group_loss(in + g * n, truth + g * n, out + g * n, n, temp, gamma, alpha, grad + g * n);
}

/* the loss on the device: slot 0 the gradient (as the host loss leaves it), slot 1 the truths, slot 2 the groups'
 * losses */
static dn_status device_loss(dn_layer *l, dn_net *net, int groups, float temp, float gamma, float alpha)
{
    const size_t total = (size_t)l->batch * l->inputs, count = (size_t)l->batch * groups, n = l->inputs / groups;
    float *grad, *truth, *loss;
    dn_status s;
    if ((s = dn_gpu_buffer(l, 0, total, &grad)) || (s = dn_gpu_buffer(l, 1, total, &truth)) ||
        (s = dn_gpu_buffer(l, 2, 2 * count, &loss)) || (s = dn_gpu_push(truth, net->truth, total)))
        return s;
    group_loss_kernel<<<dn_grid(count), DN_LAUNCH>>>(dn_gpu_input(net, l), truth, l->output_gpu, count, n, temp, gamma,
                                                    alpha, grad, (double *)loss);
    double sum; /* the groups' losses in order, as softmax.c adds them */
    if ((s = dn_gpu_loss_total(net, (const double *)loss, 1, count, 1.0, &sum))) return s;
    net->loss += sum;
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
    if (net->truth && dn_gpu_loss_on_device()) {
        int has_loss;
        float gamma, alpha;
        if ((s = dn_softmax_loss_options(l, net, &has_loss, &gamma, &alpha))) return s;
        return has_loss ? device_loss(l, net, groups, temp, gamma, alpha) : DN_OK;
    }
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
    if (dn_softmax_has_loss(l)) {   /* the host's loss or the device's left its gradient in slot 0 */
        if (l->gpu_cap[0] < total) return dn_layer_fail(l, DN_ERR_STATE, "no training forward pass kept the loss gradient");
        dn_gpu_axpy(d, l->gpu_buf[0], total, 1.f);
    }
    return DN_OK;
}

extern "C" {
dn_status dn_softmax_forward_gpu(dn_layer *l, dn_net *net) { return softmax_forward_gpu(l, net); }
dn_status dn_softmax_backward_gpu(dn_layer *l, dn_net *net) { return softmax_backward_gpu(l, net); }
}

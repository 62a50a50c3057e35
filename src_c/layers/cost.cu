/* cost.cu - [cost] on the device: the output is the input (a copy), and
 * backward adds the layer's delta (the loss gradient, and what later layers
 * added) into the input delta. The loss of a training pass with truths, two
 * ways: on the host (the default), cost.c's forward on host copies (the
 * delta goes to the device); or on the device (PYDARKNET_LOSS=device;
 * written without a GPU to run it on, off by default until a device run
 * checks it), cost_math.h's dn_cost_term a thread per value, the truths up
 * and the values' losses down (summed on the host in cost.c's order). */
#include "cuda.h"
#include "../ops/ops.h"
#include "cost_math.h"

__global__ static void cost_kernel(const float *x, const float *t, size_t n, int type, float scale, float sigma,
                                   float delta, int batch, float *d, double *terms)
{
    DN_KERNEL_LOOP(i, n) {
        float g;
        terms[i] = dn_cost_term(type, x[i], t[i], sigma, delta, batch, &g);
        d[i] = scale * g;
    }
}

/* slot 0 the truths, slot 1 the values' losses */
static dn_status device_loss(dn_layer *l, dn_net *net)
{
    int type;
    float scale, sigma, delta;
    dn_status s = dn_cost_options(l, net, &type, &scale, &sigma, &delta);
    if (s) return s;
    const size_t n = (size_t)l->batch * l->inputs;
    float *truth, *terms;
    if ((s = dn_gpu_buffer(l, 0, n, &truth)) || (s = dn_gpu_buffer(l, 1, 2 * n, &terms)) ||
        (s = dn_gpu_push(truth, net->truth, n)))
        return s;
    cost_kernel<<<dn_grid(n), DN_LAUNCH>>>(dn_gpu_input(net, l), truth, n, type, scale, sigma, delta, l->batch,
                                          l->delta_gpu, (double *)terms);
    double loss; /* the values' losses in order, times the scale, as cost.c adds them */
    if ((s = dn_gpu_loss_total(net, (const double *)terms, 1, n, scale, &loss))) return s;
    net->loss += loss;
    return DN_OK;
}

static dn_status cost_forward_gpu(dn_layer *l, dn_net *net)
{
    if (!net->train || !net->truth) {
        dn_gpu_copy(l->output_gpu, dn_gpu_input(net, l), (size_t)l->batch * l->outputs);
        return DN_OK;
    }
    if (!dn_gpu_loss_on_device()) return dn_gpu_host_forward(net, l);   /* cost.c's pass, its delta pushed */
    dn_gpu_copy(l->output_gpu, dn_gpu_input(net, l), (size_t)l->batch * l->outputs);
    return device_loss(l, net);
}

static dn_status cost_backward_gpu(dn_layer *l, dn_net *net)
{
    float *d = dn_gpu_input_delta(net, l);
    if (d) dn_gpu_axpy(d, l->delta_gpu, (size_t)l->batch * l->outputs, 1.f);
    return DN_OK;
}

extern "C" {
dn_status dn_cost_forward_gpu(dn_layer *l, dn_net *net) { return cost_forward_gpu(l, net); }
dn_status dn_cost_backward_gpu(dn_layer *l, dn_net *net) { return cost_backward_gpu(l, net); }
}

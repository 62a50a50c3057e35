/* region.cu - [region] on the device: the head's output as region.c, in
 * darknet's cell-major [B][H*W][num][per] layout, one thread per image, cell
 * and anchor running layer_math.h's dn_region_cell_forward (raw x, y, w, h,
 * the logistic on objectness, the softmax over the classes with softmax=1).
 * The loss stays on the host with region.c's one implementation: in a
 * training pass with truths the input is copied to the host (page-locked),
 * where region.c's forward makes the output, adds the loss and writes
 * l->delta (in the input's layout), which is copied back. Backward adds that delta into the input
 * delta, or without a loss applies the forward's Jacobian
 * (dn_region_cell_backward, one thread per image, cell and anchor: each
 * writes its own input positions). */
#include "cuda.h"
#include "../ops/ops.h"
#include "../ops/layer_math.h"

typedef struct {
    size_t hw, inputs;
    int per, coords, classes, num, softmax;
} region_shape;

/* group t = (b*hw + i)*num + a: its input at b*inputs + a*per*hw + i, its output at t*per */
__device__ static size_t input_of(size_t t, const region_shape *q)
{
    const size_t a = t % q->num, i = t / q->num % q->hw, b = t / ((size_t)q->num * q->hw);
    return b * q->inputs + a * q->per * q->hw + i;
}

__global__ static void region_kernel(const float *in, size_t groups, region_shape q, float *out)
{
    DN_KERNEL_LOOP(t, groups) {
        dn_region_cell_forward(in + input_of(t, &q), q.hw, q.per, q.coords, q.softmax, out + t * q.per);
    }
}

__global__ static void region_back_kernel(const float *y, const float *g, size_t groups, region_shape q, float *d)
{
    DN_KERNEL_LOOP(t, groups) {
        dn_region_cell_backward(y + t * q.per, g + t * q.per, q.hw, q.per, q.coords, q.softmax, d + input_of(t, &q));
    }
}

static dn_status read_shape(const dn_layer *l, region_shape *q)
{
    dn_status s;
    if ((s = dn_attr_int(l, "classes", &q->classes)) || (s = dn_attr_int(l, "coords", &q->coords)) ||
        (s = dn_attr_int(l, "num", &q->num)) || (s = dn_attr_int(l, "softmax", &q->softmax)))
        return s;
    q->hw = (size_t)l->out_h * l->out_w;
    q->inputs = l->inputs;
    q->per = q->coords + 1 + q->classes;
    return DN_OK;
}

static size_t cell_groups(const dn_layer *l, const region_shape *q) { return (size_t)l->batch * q->num * q->hw; }

static dn_status region_forward_gpu(dn_layer *l, dn_net *net)
{
    region_shape q;
    dn_status s = read_shape(l, &q);
    if (s) return s;
    const size_t groups = cell_groups(l, &q);
    region_kernel<<<dn_grid(groups), DN_BLOCK>>>(dn_gpu_input(net, l), groups, q, l->output_gpu);
    if (!net->train) return DN_OK;
    /* without truths: no loss (has_loss cleared) */
    return net->truth ? dn_gpu_host_loss(net, l) : dn_region_train_loss(l, net);
}

static dn_status region_backward_gpu(dn_layer *l, dn_net *net)
{
    region_shape q;
    dn_status s = read_shape(l, &q);
    if (s) return s;
    float *d = dn_gpu_input_delta(net, l);
    if (!d) return DN_OK;
    if (l->has_loss) {
        dn_gpu_axpy(d, l->delta_gpu, (size_t)l->batch * l->outputs, 1.f);
        return DN_OK;
    }
    const size_t groups = cell_groups(l, &q);
    region_back_kernel<<<dn_grid(groups), DN_BLOCK>>>(l->output_gpu, l->delta_gpu, groups, q, d);
    return DN_OK;
}

extern "C" {
dn_status dn_region_forward_gpu(dn_layer *l, dn_net *net) { return region_forward_gpu(l, net); }
dn_status dn_region_backward_gpu(dn_layer *l, dn_net *net) { return region_backward_gpu(l, net); }
}

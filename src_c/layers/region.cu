/* region.cu - [region] on the device: the head's output as region.c, in
 * darknet's cell-major [B][H*W][num][per] layout, one thread per image, cell
 * and anchor running layer_math.h's dn_region_cell_forward (raw x, y, w, h,
 * the logistic on objectness, the softmax over the classes with softmax=1).
 * The loss of a training pass with truths, two ways: on the host (the
 * default), the input copied there (page-locked), where region.c's forward
 * makes the output, adds the loss and writes l->delta (in the input's
 * layout), which is copied back; or on the device (PYDARKNET_LOSS=device;
 * written without a GPU to run it on, off by default until a device run
 * checks it), region_loss.h's functions, the ones region.c runs, a thread
 * per anchor and cell for step 1 and the terms and a thread per image for
 * step 2 (the truths up, the cells' losses down, summed on the host in
 * region.c's order). Backward adds that delta into the input
 * delta, or without a loss applies the forward's Jacobian
 * (dn_region_cell_backward, one thread per image, cell and anchor: each
 * writes its own input positions). */
#include "cuda.h"
#include "../ops/ops.h"
#include "../ops/layer_math.h"
#include "region_loss.h"

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

/* ---- the loss on the device ---- */
typedef struct {
    const float *in, *out, *truth;
    float *delta;
    region_cell *cells;
    double *cell_loss;
    size_t hw, inputs, outputs;
    int stride, batch;
} region_batch;

static __device__ region_image image_of(const region_params *p, const region_batch &d, int b)
{
    region_image c = {p, d.in + (size_t)b * d.inputs, d.out + (size_t)b * d.outputs, d.delta + (size_t)b * d.outputs,
                      d.truth + (size_t)b * d.stride, d.stride / 5, d.hw, d.cells + (size_t)b * p->num * d.hw};
    return c;
}

/* step 0: region_judge, 1: region_cell_loss (into d.cell_loss) */
__global__ static void cells_kernel(region_params p, region_batch d, int step)
{
    const size_t cells = (size_t)p.num * d.hw;
    DN_KERNEL_LOOP(e, (size_t)d.batch * cells) {
        const int b = (int)(e / cells), a = (int)(e % cells / d.hw);
        const size_t i = e % d.hw;
        region_image c = image_of(&p, d, b);
        if (step == 0) region_judge(&c, a, i);
        else d.cell_loss[e] = region_cell_loss(&c, a, i);
    }
}

__global__ static void truths_kernel(region_params p, region_batch d)
{
    DN_KERNEL_LOOP(b, (size_t)d.batch) {
        region_image c = image_of(&p, d, (int)b);
        region_assign_truths(&c);
    }
}

/* slot 0: the truths, then the anchors; slot 1: the cells' states; slot 2: their losses */
static dn_status region_device_loss(dn_layer *l, dn_net *net)
{
    dn_status s = dn_region_loss_ready(l, net);
    if (s) return s;
    region_params p;
    dn_region_params(l, net, &p);
    const int batch = l->batch, stride = net->truth_stride;
    const size_t hw = (size_t)l->h * l->w, cells = (size_t)p.num * hw, total = (size_t)batch * cells;
    const size_t truth_n = (size_t)batch * stride;
    float *f, *losses;
    void *states;
    if ((s = dn_gpu_buffer(l, 0, truth_n + 2 * (size_t)p.num, &f)) ||
        (s = dn_gpu_buffer_bytes(l, 1, total * sizeof(region_cell), &states)) ||
        (s = dn_gpu_buffer(l, 2, 2 * total, &losses)))
        return s;
    if ((s = dn_gpu_push(f, net->truth, truth_n)) || (s = dn_gpu_push(f + truth_n, p.anchors, 2 * (size_t)p.num)))
        return s;
    p.anchors = f + truth_n;
    const region_batch d = {dn_gpu_input(net, l), l->output_gpu, f, l->delta_gpu, (region_cell *)states,
                            (double *)losses, hw, l->inputs, l->outputs, stride, batch};
    dn_gpu_fill(l->delta_gpu, (size_t)batch * l->outputs, 0.f);
    cells_kernel<<<dn_grid(total), DN_LAUNCH>>>(p, d, 0);
    truths_kernel<<<dn_grid((size_t)batch), DN_LAUNCH>>>(p, d);
    cells_kernel<<<dn_grid(total), DN_LAUNCH>>>(p, d, 1);
    double sum; /* as region.c sums: per image in cell order, then the images */
    if ((s = dn_gpu_loss_total(net, (const double *)losses, (size_t)batch, cells, 1.0, &sum))) return s;
    net->loss += sum;
    return DN_OK;
}

static dn_status region_forward_gpu(dn_layer *l, dn_net *net)
{
    region_shape q;
    dn_status s = read_shape(l, &q);
    if (s) return s;
    const size_t groups = cell_groups(l, &q);
    region_kernel<<<dn_grid(groups), DN_LAUNCH>>>(dn_gpu_input(net, l), groups, q, l->output_gpu);
    if (!net->train) return DN_OK;
    /* without truths: no loss (has_loss cleared) */
    if (!net->truth) return dn_region_train_loss(l, net);
    if (!dn_gpu_loss_on_device()) return dn_gpu_host_loss(net, l);
    l->has_loss = 1;
    return region_device_loss(l, net);
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
    region_back_kernel<<<dn_grid(groups), DN_LAUNCH>>>(l->output_gpu, l->delta_gpu, groups, q, d);
    return DN_OK;
}

extern "C" {
dn_status dn_region_forward_gpu(dn_layer *l, dn_net *net) { return region_forward_gpu(l, net); }
dn_status dn_region_backward_gpu(dn_layer *l, dn_net *net) { return region_backward_gpu(l, net); }
}

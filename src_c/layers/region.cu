/* region.cu - [region] on the device: the head's output as region.c, the
 * logistic on x, y and objectness (one thread per value) and, with
 * softmax=1, the softmax over the class channels of each cell (blas.cu's
 * group softmax, one thread per cell and anchor). The loss stays on the host
 * with region.c's one implementation: in a training pass with truths the
 * input and output are copied to the host, dn_region_train_loss adds the
 * loss and writes l->delta, which is copied back. Backward adds that delta
 * into the input delta, or without a loss applies the forward's Jacobian on
 * the device. */
#include "cuda.h"
#include "../ops/activation_math.h"

typedef struct {
    size_t hw;
    int per, coords, classes, num, softmax;
} region_shape;

__global__ static void region_kernel(const float *in, size_t n, region_shape q, float *out)
{
    DN_KERNEL_LOOP(e, n) {
        const int k = (int)(e / q.hw % ((size_t)q.num * q.per)) % q.per;
        out[e] = k < 2 || k == q.coords ? activate1(in[e], DN_ACT_LOGISTIC) : in[e];
    }
}

/* the Jacobian of every value but the softmax classes: sigma' for x, y and objectness, 1 otherwise */
__global__ static void region_back_kernel(const float *y, const float *g, size_t n, region_shape q, float *d)
{
    DN_KERNEL_LOOP(e, n) {
        const int k = (int)(e / q.hw % ((size_t)q.num * q.per)) % q.per;
        if (k < 2 || k == q.coords) d[e] += g[e] * y[e] * (1.f - y[e]);
        else if (k < q.coords || !q.softmax) d[e] += g[e];
    }
}

static dn_status read_shape(const dn_layer *l, region_shape *q)
{
    dn_status s;
    if ((s = dn_attr_int(l, "classes", &q->classes)) || (s = dn_attr_int(l, "coords", &q->coords)) ||
        (s = dn_attr_int(l, "num", &q->num)) || (s = dn_attr_int(l, "softmax", &q->softmax)))
        return s;
    q->hw = (size_t)l->out_h * l->out_w;
    q->per = q->coords + 1 + q->classes;
    return DN_OK;
}

/* the class softmax groups: one per image, anchor and cell, classes values hw apart */
static size_t class_groups(const dn_layer *l, const region_shape *q) { return (size_t)l->batch * q->num * q->hw; }

static dn_status region_forward_gpu(dn_layer *l, dn_net *net)
{
    region_shape q;
    dn_status s = read_shape(l, &q);
    if (s) return s;
    const size_t n = (size_t)l->batch * l->outputs, c0 = (size_t)(q.coords + 1) * q.hw;
    region_kernel<<<dn_grid(n), DN_BLOCK>>>(dn_gpu_input(net, l), n, q, l->output_gpu);
    if (q.softmax)
        dn_gpu_softmax(l->output_gpu + c0, l->output_gpu + c0, class_groups(l, &q), q.classes, q.hw, (int)q.hw,
                       (size_t)q.per * q.hw, 1.f);
    if (!net->train) return DN_OK;
    if (net->truth && (s = dn_gpu_pull_sources(net, l))) return s;
    if ((s = dn_region_train_loss(l, net))) return s;
    return dn_region_has_loss(l) ? dn_gpu_push(l->delta_gpu, l->delta, n) : DN_OK;
}

static dn_status region_backward_gpu(dn_layer *l, dn_net *net)
{
    region_shape q;
    dn_status s = read_shape(l, &q);
    if (s) return s;
    float *d = dn_gpu_input_delta(net, l);
    if (!d) return DN_OK;
    const size_t n = (size_t)l->batch * l->outputs, c0 = (size_t)(q.coords + 1) * q.hw;
    if (dn_region_has_loss(l)) {
        dn_gpu_axpy(d, l->delta_gpu, n, 1.f);
        return DN_OK;
    }
    region_back_kernel<<<dn_grid(n), DN_BLOCK>>>(l->output_gpu, l->delta_gpu, n, q, d);
    if (q.softmax)
        dn_gpu_softmax_backward(l->output_gpu + c0, l->delta_gpu + c0, d + c0, class_groups(l, &q), q.classes, q.hw,
                                (int)q.hw, (size_t)q.per * q.hw, 1.f);
    return DN_OK;
}

extern "C" {
dn_status dn_region_forward_gpu(dn_layer *l, dn_net *net) { return region_forward_gpu(l, net); }
dn_status dn_region_backward_gpu(dn_layer *l, dn_net *net) { return region_backward_gpu(l, net); }
}

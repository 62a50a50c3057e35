/* yolo.cu - [yolo] on the device: the head's output, one thread per value,
 * as yolo.c (the logistic on x, y, objectness and the classes unless
 * new_coords, then x, y scaled by scale_x_y around the cell centre). The loss
 * stays on the host with yolo.c's one implementation: in a training pass with
 * truths the input is copied to the host (into page-locked memory), where
 * yolo.c's forward makes the output, adds the loss and writes l->delta (the
 * gradient with respect to the input), which is copied back. Backward adds that delta into the input
 * delta, or without a loss applies the forward's Jacobian on the device. */
#include "cuda.h"
#include "../ops/ops.h"
#include "../ops/activation_math.h"

typedef struct {
    size_t hw;
    int per;       /* 5 + classes: the channels of one anchor */
    int new_coords;
    float scale, shift;
} yolo_shape;

__global__ static void yolo_kernel(const float *in, size_t n, int out_c, yolo_shape q, float *out)
{
    DN_KERNEL_LOOP(e, n) {
        const int k = (int)(e / q.hw % out_c) % q.per;
        float v = in[e];
        if (!q.new_coords && (k < 2 || k >= 4)) v = activate1(v, DN_ACT_LOGISTIC);
        if (k < 2) v = v * q.scale + q.shift;
        out[e] = v;
    }
}

__global__ static void yolo_back_kernel(const float *in, const float *delta, size_t n, int out_c, yolo_shape q, float *d)
{
    DN_KERNEL_LOOP(e, n) {
        const int k = (int)(e / q.hw % out_c) % q.per;
        float g = delta[e];
        if (k < 2) g *= q.scale;
        if (!q.new_coords && (k < 2 || k >= 4)) {
            const float sg = activate1(in[e], DN_ACT_LOGISTIC);
            g *= sg * (1.f - sg);
        }
        d[e] += g;
    }
}

static dn_status read_shape(const dn_layer *l, yolo_shape *q)
{
    int classes;
    dn_status s;
    if ((s = dn_attr_int(l, "classes", &classes)) || (s = dn_attr_float(l, "scale_x_y", &q->scale)) ||
        (s = dn_attr_int(l, "new_coords", &q->new_coords)))
        return s;
    q->hw = (size_t)l->out_h * l->out_w;
    q->per = classes + 5;
    q->shift = -0.5f * (q->scale - 1.f);
    return DN_OK;
}

static dn_status yolo_forward_gpu(dn_layer *l, dn_net *net)
{
    yolo_shape q;
    dn_status s = read_shape(l, &q);
    if (s) return s;
    const size_t n = (size_t)l->batch * l->outputs;
    yolo_kernel<<<dn_grid(n), DN_BLOCK>>>(dn_gpu_input(net, l), n, l->out_c, q, l->output_gpu);
    if (!net->train) return DN_OK;
    /* without truths: no loss (has_loss cleared) */
    return net->truth ? dn_gpu_host_loss(net, l) : dn_yolo_train_loss(l, net);
}

static dn_status yolo_backward_gpu(dn_layer *l, dn_net *net)
{
    yolo_shape q;
    dn_status s = read_shape(l, &q);
    if (s) return s;
    float *d = dn_gpu_input_delta(net, l);
    if (!d) return DN_OK;
    const size_t n = (size_t)l->batch * l->outputs;
    if (l->has_loss) dn_gpu_axpy(d, l->delta_gpu, n, 1.f);
    else yolo_back_kernel<<<dn_grid(n), DN_BLOCK>>>(dn_gpu_input(net, l), l->delta_gpu, n, l->out_c, q, d);
    return DN_OK;
}

extern "C" {
dn_status dn_yolo_forward_gpu(dn_layer *l, dn_net *net) { return yolo_forward_gpu(l, net); }
dn_status dn_yolo_backward_gpu(dn_layer *l, dn_net *net) { return yolo_backward_gpu(l, net); }
}

/* yolo.cu - [yolo] on the device: the head's output, one thread per value,
 * as yolo.c (the logistic on x, y, objectness and the classes unless
 * new_coords, then x, y scaled by scale_x_y around the cell centre).
 *
 * The loss of a training pass with truths, two ways:
 *  - on the device (PYDARKNET_LOSS=device): yolo_loss.h's functions, the
 *    ones yolo.c runs on the host, here a thread per prediction for step 1
 *    (judge_prediction), a thread per image for step 2 (the truths, in row
 *    order), a thread per prediction for step 3 and the terms (cell_loss);
 *    the truths go to the device and the per-prediction losses come back
 *    (summed on the host in yolo.c's order), nothing else crosses.
 *    Written and compiled without a GPU to run it on: off by default until
 *    a device run checks it against the CPU (tests/test_cuda.py runs both).
 *  - on the host (the default): the input is copied to the host (into
 *    page-locked memory), where yolo.c's forward makes the output, adds the
 *    loss and writes l->delta, which is copied back.
 * Backward adds that delta into the input delta, or without a loss applies
 * the forward's Jacobian on the device. */
#include "cuda.h"
#include "../ops/ops.h"
#include "../ops/activation_math.h"
#include "yolo_loss.h"

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

/* ---- the loss on the device ---- */
typedef struct {
    const float *in, *out, *truth;
    float *delta;
    const int *valid, *nvalid;
    cell_state *cells;
    cls_term *terms;
    double *cell_loss;
    size_t hw, inputs, outputs;
    int stride, rows, batch;
} yolo_batch;

/* image b's context (yolo_loss.h), its scratch the b-th of the batch's */
static __device__ image_ctx image_of(const yolo_params *p, const yolo_batch &d, int b)
{
    const size_t cells = (size_t)p->n * d.hw;
    image_ctx c = {p, d.in + (size_t)b * d.inputs, d.out + (size_t)b * d.outputs, d.delta + (size_t)b * d.outputs,
                   d.truth + (size_t)b * d.stride, d.valid + (size_t)b * d.rows, d.nvalid[b], d.hw,
                   d.cells + (size_t)b * cells, d.terms + (size_t)b * cells * (size_t)p->classes};
    return c;
}

__global__ static void valid_rows_kernel(yolo_params p, const float *truth, int stride, int rows, int batch, int *valid,
                                         int *nvalid)
{
    DN_KERNEL_LOOP(b, (size_t)batch) nvalid[b] = yolo_valid_rows(&p, truth + b * stride, rows, valid + b * rows);
}

/* step: 0 judge_prediction, 1 yolo_divide_box_terms, 2 cell_loss (into d.cell_loss) */
__global__ static void prediction_kernel(yolo_params p, yolo_batch d, int step)
{
    const size_t cells = (size_t)p.n * d.hw;
    DN_KERNEL_LOOP(e, (size_t)d.batch * cells) {
        const int b = (int)(e / cells), a = (int)(e % cells / d.hw);
        const size_t i = e % d.hw;
        image_ctx c = image_of(&p, d, b);
        if (step == 0) judge_prediction(&c, a, i);
        else if (step == 1) yolo_divide_box_terms(&c, a, i);
        else d.cell_loss[e] = cell_loss(&c, a, i);
    }
}

__global__ static void truths_kernel(yolo_params p, yolo_batch d)
{
    DN_KERNEL_LOOP(b, (size_t)d.batch) {
        image_ctx c = image_of(&p, d, (int)b);
        yolo_assign_truths(&c);
    }
}

__global__ static void scale_kernel(float *x, size_t n, float a)
{
    DN_KERNEL_LOOP(e, n) x[e] *= a;
}

static size_t round8(size_t bytes) { return (bytes + 7) & ~(size_t)7; }

static dn_status yolo_device_loss(dn_layer *l, dn_net *net)
{
    dn_status s = dn_yolo_loss_ready(l, net);
    if (s) return s;
    yolo_params p;
    dn_yolo_params(l, net, &p);
    const int batch = l->batch, stride = net->truth_stride, rows = stride / 5;
    const size_t hw = (size_t)l->h * l->w, cells = (size_t)p.n * hw, predictions = (size_t)batch * cells;
    /* slot 0: the truths, then the layer's arrays; slot 1: the usable rows and their counts; slot 2: the
     * predictions' states; slot 3: their class terms, then their losses */
    const size_t truth_n = (size_t)batch * stride, arrays_n = 2 * (size_t)p.n + 2 * (size_t)p.total + (size_t)p.n +
                                                              (p.class_mult ? (size_t)p.classes : 0);
    void *in0, *in1, *in2, *in3;
    const size_t terms_bytes = round8(predictions * (size_t)p.classes * sizeof(cls_term));
    if ((s = dn_gpu_buffer_bytes(l, 0, (truth_n + arrays_n) * 4, &in0)) ||
        (s = dn_gpu_buffer_bytes(l, 1, ((size_t)batch * rows + (size_t)batch) * sizeof(int), &in1)) ||
        (s = dn_gpu_buffer_bytes(l, 2, predictions * sizeof(cell_state), &in2)) ||
        (s = dn_gpu_buffer_bytes(l, 3, terms_bytes + predictions * sizeof(double), &in3)))
        return s;
    /* the truths, then the layer's arrays (the mask's ints pushed as their 4-byte units) */
    float *f = (float *)in0, *anchors = f + truth_n, *all_anchors = anchors + 2 * (size_t)p.n;
    float *mask = all_anchors + 2 * (size_t)p.total, *class_mult = p.class_mult ? mask + p.n : NULL;
    if ((s = dn_gpu_push(f, net->truth, truth_n)) || (s = dn_gpu_push(anchors, p.anchors, 2 * (size_t)p.n)) ||
        (s = dn_gpu_push(all_anchors, p.all_anchors, 2 * (size_t)p.total)) ||
        (s = dn_gpu_push(mask, (const float *)p.mask, (size_t)p.n)) ||
        (class_mult && (s = dn_gpu_push(class_mult, p.class_mult, (size_t)p.classes))))
        return s;
    p.anchors = anchors;
    p.all_anchors = all_anchors;
    p.mask = (const int *)mask;
    p.class_mult = class_mult;
    int *valid = (int *)in1, *nvalid = valid + (size_t)batch * rows;
    double *losses = (double *)((char *)in3 + terms_bytes);
    const yolo_batch d = {dn_gpu_input(net, l), l->output_gpu, f, l->delta_gpu, valid, nvalid, (cell_state *)in2,
                          (cls_term *)in3, losses, hw, l->inputs, l->outputs, stride, rows, batch};
    const size_t n = (size_t)batch * l->outputs;
    dn_gpu_fill(l->delta_gpu, n, 0.f);
    valid_rows_kernel<<<dn_grid((size_t)batch), DN_LAUNCH>>>(p, f, stride, rows, batch, valid, nvalid);
    prediction_kernel<<<dn_grid(predictions), DN_LAUNCH>>>(p, d, 0);
    truths_kernel<<<dn_grid((size_t)batch), DN_LAUNCH>>>(p, d);
    if (p.iou_thresh < 1.f) prediction_kernel<<<dn_grid(predictions), DN_LAUNCH>>>(p, d, 1);
    prediction_kernel<<<dn_grid(predictions), DN_LAUNCH>>>(p, d, 2);
    if (p.delta_normalizer != 1.f) scale_kernel<<<dn_grid(n), DN_LAUNCH>>>(l->delta_gpu, n, p.delta_normalizer);
    /* summed as yolo.c sums them: per image in prediction order, times delta_normalizer, then the images */
    double total;
    if ((s = dn_gpu_loss_total(net, losses, (size_t)batch, cells, p.delta_normalizer, &total))) return s;
    net->loss += total;
    return DN_OK;
}

static dn_status yolo_forward_gpu(dn_layer *l, dn_net *net)
{
    yolo_shape q;
    dn_status s = read_shape(l, &q);
    if (s) return s;
    const size_t n = (size_t)l->batch * l->outputs;
    yolo_kernel<<<dn_grid(n), DN_LAUNCH>>>(dn_gpu_input(net, l), n, l->out_c, q, l->output_gpu);
    if (!net->train) return DN_OK;
    /* without truths: no loss (has_loss cleared) */
    if (!net->truth) return dn_yolo_train_loss(l, net);
    if (!dn_gpu_loss_on_device()) return dn_gpu_host_loss(net, l);
    l->has_loss = 1;
    return yolo_device_loss(l, net);
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
    else yolo_back_kernel<<<dn_grid(n), DN_LAUNCH>>>(dn_gpu_input(net, l), l->delta_gpu, n, l->out_c, q, d);
    return DN_OK;
}

extern "C" {
dn_status dn_yolo_forward_gpu(dn_layer *l, dn_net *net) { return yolo_forward_gpu(l, net); }
dn_status dn_yolo_backward_gpu(dn_layer *l, dn_net *net) { return yolo_backward_gpu(l, net); }
}

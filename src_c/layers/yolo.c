/* yolo.c - [yolo] detection head (yolov3/v4/v7)
 *
 * Input and output [B][n*(5+classes)][H][W], n = number of anchors in `mask`;
 * for anchor a the channels are x, y, w, h, objectness, then class scores.
 * Forward (inference): output = input with, unless new_coords, the logistic
 * applied to x, y, objectness and classes; then x, y = x*s - (s-1)/2 with
 * s = scale_x_y. Decoding for cell (col, row) of anchor a (anchor sizes in
 * network-input pixels):
 *     bx = (col + x) / W,  by = (row + y) / H,
 *     bw = exp(w) * anchor_w / net_w   (new_coords: 4 * w^2 * anchor_w / net_w), bh likewise,
 *     confidence of class k = objectness * class_k, kept when both exceed thresh.
 *
 * Training loss (a training pass with truths), following darknet's
 * forward_yolo_layer. z is the layer's input; a "probability" p is sigma(z)
 * for objectness and classes (new_coords: z itself, the layer before applied
 * the logistic). An image has truth_stride / 5 truth rows (x, y, w, h, class);
 * a row is skipped when w <= 0 or h <= 0 (zero padding rows), a value is not
 * finite or the class is outside 0..classes-1 (darknet stops at the first row
 * with x == 0 instead); a truth's cell is (int)(x*W), (int)(y*H), clamped to
 * the grid.
 * For each image:
 *  1. Every prediction gets the no-object term (target 0, weight
 *     obj_normalizer). Its decoded box has best IoU m with the truths (counted
 *     only when one of its class scores exceeds .25) and best IoU M with any:
 *     m > ignore_thresh removes the objectness term (objectness_smooth: target
 *     m instead); M > truth_thresh gives it that truth's object term (target 1;
 *     objectness_smooth: M^2, and class k's target M^2 with weight cm[k]),
 *     class terms and box term.
 *  2. Each truth goes to its cell and to the anchor, among all `num`, whose
 *     shape has the best IoU with it (centres together); when that anchor is
 *     in `mask`: box term, object term (target 1, weight cm*obj_normalizer;
 *     with objectness_smooth only where the objectness gap is still zero) and
 *     class terms. With iou_thresh < 1 also each other masked anchor whose
 *     shape measure (iou_thresh_kind) with the truth exceeds iou_thresh.
 *  3. With iou_thresh < 1, a prediction with a non-zero objectness gap has its
 *     box terms divided by the number of classes whose gap w*(t - p) is > 0.
 * cm[k] = max(counters_per_class) / counters_per_class[k] capped at max_delta
 * (1 without counters_per_class). The terms:
 *  - probability term (target t, weight w): w * BCE(sigma(z), t) =
 *    w * (softplus(z) - t*z), gradient w * (sigma(z) - t); new_coords:
 *    w/2 * (z - t)^2, gradient w * (z - t). Both gradients are exactly minus
 *    darknet's step w * (t - p).
 *  - class terms of a truth of class k, the first on a prediction: every class
 *    c gets a probability term, target [c == k] label-smoothed
 *    (t*(1 - eps) + eps/2), weight 1 (class k: cm[k]*cls_normalizer when
 *    counters_per_class is given, as darknet). A later truth of class k' on the
 *    same prediction resets only class k' (target smoothed 1, weight cm[k']).
 *  - focal_loss (alpha = .5, gamma = 2), pt = p of class k:
 *    class k: alpha * FL(pt), FL = -(1 - pt)^2 log(pt) (new_coords: the
 *    function of pt with the same derivative, zero at pt = 1); class c != k:
 *    alpha * g(pt) * BCE(sigma(z_c), 0) (new_coords: alpha*g(pt) * z_c^2/2)
 *    with g(pt) = (1 - pt)(1 - pt - 2 pt log pt). Darknet's focal step is not
 *    the gradient of any function (the weight g(pt) of the other classes
 *    depends on z_k); it is minus the gradient of this loss in every logit,
 *    except that z_k here also gets alpha * g'(pt) * dpt/dz_k * sum_c BCE_c.
 *  - box term, iou_loss=mse, truth in cell (col, row) with anchor (aw, ah),
 *    k = (2 - truth.w*truth.h) * iou_normalizer * cm: targets tx = truth.x*W - col,
 *    ty likewise, tw = log(truth.w * net_w / aw) (new_coords:
 *    sqrt(truth.w * net_w / (4 aw))), th likewise; with
 *    ox = s*sigma(z_x) - (s-1)/2 the output (a soft-target cross-entropy for x):
 *        x: k * s * BCE(sigma(z_x), (tx + (s-1)/2) / s), gradient k * (ox - tx)
 *           (new_coords: ox = s*z_x - (s-1)/2, k/(2s) * (ox - tx)^2, same gradient)
 *        w: k/2 * (z_w - tw)^2, gradient k * (z_w - tw); y, h likewise.
 *    These gradients are exactly minus darknet's steps.
 *  - box term, iou_loss=iou/giou/diou/ciou: iou_normalizer * cm *
 *    (1 - measure(pred, truth)) (core/box.c) with pred decoded as above; its
 *    gradient is the exact one through the decoding (dbx/dz_x =
 *    s*sigma'(z_x)/W, new_coords s/W; dbw/dz_w = bw, new_coords
 *    8*z_w*aw/net_w). Here we differ from darknet on purpose: darknet's step
 *    omits sigma' and 1/W, treats CIoU's alpha as a constant and drops
 *    1/(w^2 + h^2) from the aspect term, so it is not the gradient of any
 *    scalar; we return the true gradient of the loss, which a finite-difference
 *    check confirms. max_delta clips each component of these box gradients as
 *    darknet clips its step (the gradient is then no longer exact).
 *  - objectness_smooth targets m, M^2 depend on the predicted box; their
 *    gradient through the IoU is included (darknet leaves it out).
 * Loss = delta_normalizer * sum of the terms over the images, added to
 * net->loss; l->delta = its gradient with respect to z (delta_normalizer
 * scales the step as in darknet's GPU path).
 * Backward: input delta += l->delta. In a training pass without truths there
 * is no loss: l->delta is dLoss/d(output) and backward applies the forward's
 * Jacobian: s*sigma'(z) for x, y (new_coords: s), sigma'(z) for objectness
 * and classes (new_coords: 1), 1 for w, h. */
#include "../ops/ops.h"
#include "cuda.h"
#include "yolo_loss.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    int classes, n, total, new_coords;
    float scale_x_y;
    float *anchors; /* 2*n: the masked anchors, in order */
    float *all_anchors;
    int *mask;
    /* training */
    int iou_loss, iou_thresh_kind, focal_loss, objectness_smooth;
    float ignore_thresh, truth_thresh, iou_thresh, label_smooth_eps, max_delta;
    float iou_normalizer, obj_normalizer, cls_normalizer, delta_normalizer;
    float *class_mult; /* classes values, or NULL */
    cell_state *cells;
    size_t cells_cap;
    cls_term *terms;
    size_t terms_cap;
    double *image_loss; /* per image of the batch */
    size_t image_loss_cap;
    int *valid; /* per worker: the image's usable truth rows, in order */
    size_t valid_cap;
} yolo_state;

static dn_status iou_kind(const dn_layer *l, const char *key, int allow_mse, int *out)
{
    static const char *names[] = {"iou", "giou", "diou", "ciou"};
    const char *name;
    dn_status st = dn_attr_string(l, key, &name);
    if (st) return st;
    if (allow_mse && !strcmp(name, "mse")) {
        *out = YOLO_BOX_MSE;
        return DN_OK;
    }
    for (int i = 0; i < 4; ++i)
        if (!strcmp(name, names[i])) {
            *out = i;
            return DN_OK;
        }
    return dn_layer_fail(l, DN_ERR_ARG, "unknown %s '%s'", key, name);
}

static dn_status yolo_make_training(dn_layer *l, yolo_state *s)
{
    dn_status st;
    if ((st = dn_attr_float(l, "ignore_thresh", &s->ignore_thresh)) ||
        (st = dn_attr_float(l, "truth_thresh", &s->truth_thresh)) ||
        (st = dn_attr_float(l, "iou_thresh", &s->iou_thresh)) ||
        (st = dn_attr_float(l, "label_smooth_eps", &s->label_smooth_eps)) ||
        (st = dn_attr_float(l, "max_delta", &s->max_delta)) ||
        (st = dn_attr_float(l, "iou_normalizer", &s->iou_normalizer)) ||
        (st = dn_attr_float(l, "obj_normalizer", &s->obj_normalizer)) ||
        (st = dn_attr_float(l, "cls_normalizer", &s->cls_normalizer)) ||
        (st = dn_attr_float(l, "delta_normalizer", &s->delta_normalizer)) ||
        (st = dn_attr_int(l, "focal_loss", &s->focal_loss)) ||
        (st = dn_attr_int(l, "objectness_smooth", &s->objectness_smooth)) ||
        (st = iou_kind(l, "iou_loss", 1, &s->iou_loss)) ||
        (st = iou_kind(l, "iou_thresh_kind", 0, &s->iou_thresh_kind)))
        return st;
    if (dn_attr_has(l, "counters_per_class")) {
        const int *cpc;
        int count;
        if ((st = dn_attr_ints(l, "counters_per_class", &cpc, &count))) return st;
        if (count && count != s->classes)
            return dn_layer_fail(l, DN_ERR_ARG, "counters_per_class has %d values, classes=%d", count, s->classes);
        if (count) {
            s->class_mult = dn_calloc((size_t)count, sizeof(float));
            if (!s->class_mult) return dn_layer_fail(l, DN_ERR_NOMEM, "out of memory");
            float largest = 0;
            for (int k = 0; k < count; ++k) largest = fmaxf(largest, (float)(cpc[k] < 1 ? 1 : cpc[k]));
            for (int k = 0; k < count; ++k) s->class_mult[k] = fminf(largest / (float)(cpc[k] < 1 ? 1 : cpc[k]), s->max_delta);
        }
    }
    return DN_OK;
}

static dn_status yolo_make(dn_layer *l, dn_net *net)
{
    (void)net;
    yolo_state *s = dn_layer_priv(l, sizeof(yolo_state));
    if (!s) return DN_ERR_NOMEM;
    if (dn_layer_owns(l, &s->anchors, &s->all_anchors, &s->mask, &s->class_mult, &s->cells, &s->terms,
                      &s->image_loss, &s->valid, NULL))
        return DN_ERR_ARG;
    const int *mask;
    const float *anchors;
    int num, nmask, nanchors;
    dn_status st;
    if ((st = dn_attr_int(l, "classes", &s->classes)) || (st = dn_attr_int(l, "num", &num)) ||
        (st = dn_attr_ints(l, "mask", &mask, &nmask)) || (st = dn_attr_floats(l, "anchors", &anchors, &nanchors)) ||
        (st = dn_attr_float(l, "scale_x_y", &s->scale_x_y)) || (st = dn_attr_int(l, "new_coords", &s->new_coords)))
        return st;
    if (s->classes < 1 || num < 1 || nmask < 1)
        return dn_layer_fail(l, DN_ERR_ARG, "classes, num and mask must be non-empty");
    if (nanchors != 2 * num) return dn_layer_fail(l, DN_ERR_ARG, "%d anchor values given, num=%d needs %d", nanchors, num, 2 * num);
    s->n = nmask;
    s->total = num;
    s->anchors = dn_calloc((size_t)2 * nmask, sizeof(float));
    s->all_anchors = dn_calloc((size_t)2 * num, sizeof(float));
    s->mask = dn_calloc((size_t)nmask, sizeof(int));
    if (!s->anchors || !s->all_anchors || !s->mask) return dn_layer_fail(l, DN_ERR_NOMEM, "out of memory");
    for (int i = 0; i < 2 * num; ++i) s->all_anchors[i] = anchors[i];
    for (int i = 0; i < nmask; ++i) {
        if (mask[i] < 0 || mask[i] >= num) return dn_layer_fail(l, DN_ERR_ARG, "mask entry %d out of range 0..%d", mask[i], num - 1);
        s->mask[i] = mask[i];
        s->anchors[2 * i] = anchors[2 * mask[i]];
        s->anchors[2 * i + 1] = anchors[2 * mask[i] + 1];
    }
    l->is_loss = 1;
    return yolo_make_training(l, s);
}

static dn_status yolo_setup(dn_layer *l, dn_net *net)
{
    yolo_state *s = l->priv;
    if (l->c != s->n * (s->classes + 5))
        return dn_layer_fail(l, DN_ERR_SHAPE, "input has %d channels; %d anchors x (5 + %d classes) = %d needed", l->c,
                             s->n, s->classes, s->n * (s->classes + 5));
    return dn_setup_same_shape(l, net);
}

/* ---------------------------------------------------------------- the loss */

static dn_status grow(void **buf, size_t *cap, size_t n, size_t size)
{
    if (*buf && *cap >= n) return DN_OK;
    void *p = realloc(*buf, (n ? n : 1) * size);
    if (!p) return dn_fail(DN_ERR_NOMEM, "out of memory for the loss scratch");
    *buf = p;
    *cap = n;
    return DN_OK;
}

/* the images of a batch go to the worker threads: each worker has its own scratch of steps 1-3, each image its
 * own slice of the delta and its own loss, summed in image order afterwards (the same sum as one thread's) */
typedef struct {
    yolo_state *s;
    dn_layer *l;
    dn_net *net;
    yolo_params p;
    const float *input;
    size_t hw, cells;
} loss_job;

/* yolo_loss.h's view of the layer: its options and arrays (host memory), grid and the network's size */
void dn_yolo_params(const dn_layer *l, const dn_net *net, yolo_params *p)
{
    const yolo_state *s = l->priv;
    const yolo_params v = {s->classes, s->n, s->total, s->new_coords, s->scale_x_y, s->anchors, s->all_anchors,
                           s->mask, s->iou_loss, s->iou_thresh_kind, s->focal_loss, s->objectness_smooth,
                           s->ignore_thresh, s->truth_thresh, s->iou_thresh, s->label_smooth_eps, s->max_delta,
                           s->iou_normalizer, s->obj_normalizer, s->cls_normalizer, s->delta_normalizer,
                           s->class_mult, l->w, l->h, net->w, net->h};
    *p = v;
}

static void image_loss(void *ctx, int b, int worker)
{
    const loss_job *j = ctx;
    yolo_state *s = j->s;
    dn_layer *l = j->l;
    const size_t hw = j->hw;
    const int rows = j->net->truth_stride / 5;
    int *valid = s->valid + (size_t)worker * (size_t)rows;
    const float *truth = j->net->truth + (size_t)b * j->net->truth_stride;
    const int nvalid = yolo_valid_rows(&j->p, truth, rows, valid); /* the usable rows once, not at every prediction */
    image_ctx c = {&j->p, j->input + (size_t)b * l->inputs, l->output + (size_t)b * l->outputs,
                   l->delta + (size_t)b * l->outputs, truth, valid, nvalid, hw,
                   s->cells + (size_t)worker * j->cells, s->terms + (size_t)worker * j->cells * (size_t)s->classes};
    memset(c.delta, 0, l->outputs * sizeof(float));
    for (int a = 0; a < s->n; ++a)
        for (size_t i = 0; i < hw; ++i) judge_prediction(&c, a, i);
    yolo_assign_truths(&c);
    if (s->iou_thresh < 1.f)
        for (int a = 0; a < s->n; ++a)
            for (size_t i = 0; i < hw; ++i) yolo_divide_box_terms(&c, a, i);
    double loss = 0;
    for (int a = 0; a < s->n; ++a)
        for (size_t i = 0; i < hw; ++i) loss += cell_loss(&c, a, i);
    if (s->delta_normalizer != 1.f)
        for (size_t e = 0; e < l->outputs; ++e) c.delta[e] *= s->delta_normalizer;
    s->image_loss[b] = loss * s->delta_normalizer;
}

dn_status dn_yolo_loss_ready(const dn_layer *l, const dn_net *net)
{
    if (net->truth_stride % 5)
        return dn_layer_fail(l, DN_ERR_SHAPE, "%d truth values per image are not rows of 5 (x, y, w, h, class)",
                             net->truth_stride);
    if (dn_attr_has(l, "map")) {
        const char *map;
        dn_status st = dn_attr_string(l, "map", &map);
        if (st) return st;
        if (map[0]) return dn_layer_fail(l, DN_ERR_UNSUPPORTED, "training with a class map is not supported");
    }
    return DN_OK;
}

static dn_status yolo_loss(dn_layer *l, dn_net *net)
{
    yolo_state *s = l->priv;
    const size_t hw = (size_t)l->h * l->w, cells = (size_t)s->n * hw;
    dn_status ready = dn_yolo_loss_ready(l, net);
    if (ready) return ready;
    const size_t workers = (size_t)dn_workers(net);
    dn_status st;
    if ((st = grow((void **)&s->cells, &s->cells_cap, workers * cells, sizeof(cell_state))) ||
        (st = grow((void **)&s->terms, &s->terms_cap, workers * cells * (size_t)s->classes, sizeof(cls_term))) ||
        (st = grow((void **)&s->image_loss, &s->image_loss_cap, (size_t)l->batch, sizeof(double))) ||
        (st = grow((void **)&s->valid, &s->valid_cap, workers * (size_t)(net->truth_stride / 5), sizeof(int))))
        return dn_layer_fail(l, st, "out of memory for the loss scratch");
    loss_job j = {s, l, net, {0}, dn_layer_input(net, l), hw, cells};
    dn_yolo_params(l, net, &j.p);
    dn_parallel(net, l->batch, image_loss, &j);
    double total = 0;
    for (int b = 0; b < l->batch; ++b) total += s->image_loss[b];
    net->loss += total;
    return DN_OK;
}

/* ---------------------------------------------------------------- passes */

/* the activations of anchor entries [e0, e1) (entry = b * n + anchor) */
typedef struct {
    dn_layer *l;
    const yolo_state *s;
    const float *in;
} yolo_job;

static void yolo_range(void *ctx, size_t e0, size_t e1)
{
    const yolo_job *j = ctx;
    dn_layer *l = j->l;
    const yolo_state *s = j->s;
    const size_t hw = (size_t)l->h * l->w, per = (size_t)(s->classes + 5) * hw;
    const float a = s->scale_x_y, c = -0.5f * (s->scale_x_y - 1.f);
    for (size_t e = e0; e < e1; ++e) {
        const int b = (int)(e / (size_t)s->n), n = (int)(e % (size_t)s->n);
        const size_t off = (size_t)b * l->outputs + (size_t)n * per;
        float *p = l->output + off;
        memcpy(p, j->in + off, per * sizeof(float));
        if (!s->new_coords) {
            dn_logistic_vec(p, 2 * hw);
            dn_logistic_vec(p + 4 * hw, per - 4 * hw);
        }
        for (size_t i = 0; i < 2 * hw; ++i) p[i] = p[i] * a + c;
    }
}

static dn_status yolo_forward(dn_layer *l, dn_net *net)
{
    yolo_state *s = l->priv;
    const size_t hw = (size_t)l->h * l->w;
    const float a = s->scale_x_y, c = -0.5f * (s->scale_x_y - 1.f);
    if ((net->speed & DN_SPEED_THREADS) && (size_t)s->n * (s->classes + 5) * hw == l->outputs) {
        yolo_job j = {l, s, dn_layer_input(net, l)};
        dn_parallel_range(net, (size_t)l->batch * s->n, 1, yolo_range, &j);
    } else {
    dn_forward_copy(l, net);
    for (int b = 0; b < l->batch; ++b)
        for (int n = 0; n < s->n; ++n) {
            float *p = l->output + (size_t)b * l->outputs + (size_t)n * (s->classes + 5) * hw;
            if (!s->new_coords) {
                for (size_t i = 0; i < 2 * hw; ++i) p[i] = dn_logistic(p[i]);
                for (size_t i = 4 * hw; i < (5 + (size_t)s->classes) * hw; ++i) p[i] = dn_logistic(p[i]);
            }
            for (size_t i = 0; i < 2 * hw; ++i) p[i] = p[i] * a + c;
        }
    }
    return dn_yolo_train_loss(l, net);
}

dn_status dn_yolo_train_loss(dn_layer *l, dn_net *net) { return dn_head_train_loss(l, net, yolo_loss); }

static dn_status yolo_backward(dn_layer *l, dn_net *net)
{
    yolo_state *s = l->priv;
    float *d = dn_layer_input_delta(net, l);
    if (!d) return DN_OK;
    if (l->has_loss) {
        dn_head_pass_delta(l, d);
        return DN_OK;
    }
    const size_t total = (size_t)l->batch * l->outputs;
    const float *in = dn_layer_input(net, l);
    const size_t hw = (size_t)l->h * l->w, per = (size_t)(s->classes + 5) * hw;
    for (size_t e = 0; e < total; ++e) {
        const size_t k = (e % per) / hw; /* entry within the anchor: x, y, w, h, objectness, classes */
        float g = l->delta[e];
        if (k < 2) {
            g *= s->scale_x_y;
            if (!s->new_coords) {
                const float sg = dn_logistic(in[e]);
                g *= sg * (1.f - sg);
            }
        } else if (k >= 4 && !s->new_coords) {
            const float sg = dn_logistic(in[e]);
            g *= sg * (1.f - sg);
        }
        d[e] += g;
    }
    return DN_OK;
}

static dn_status yolo_detections(const dn_layer *l, const dn_net *net, int b, float thresh, dn_candidates *out)
{
    const yolo_state *s = l->priv;
    const size_t hw = (size_t)l->h * l->w;
    for (int n = 0; n < s->n; ++n) {
        const float *p = l->output + (size_t)b * l->outputs + (size_t)n * (s->classes + 5) * hw;
        for (size_t i = 0; i < hw; ++i) {
            const float obj = p[4 * hw + i];
            if (!(obj > thresh)) continue;
            const int col = (int)(i % l->w), row = (int)(i / l->w);
            dn_detection d = {0};
            d.x = (col + p[i]) / l->w;
            d.y = (row + p[hw + i]) / l->h;
            if (s->new_coords) {
                d.w = p[2 * hw + i] * p[2 * hw + i] * 4.f * s->anchors[2 * n] / net->w;
                d.h = p[3 * hw + i] * p[3 * hw + i] * 4.f * s->anchors[2 * n + 1] / net->h;
            } else {
                d.w = expf(p[2 * hw + i]) * s->anchors[2 * n] / net->w;
                d.h = expf(p[3 * hw + i]) * s->anchors[2 * n + 1] / net->h;
            }
            d.objectness = obj;
            d.batch_index = b;
            dn_status st = dn_push_box_classes(out, d, p + 5 * hw + i, hw, s->classes, thresh);
            if (st) return st;
        }
    }
    return DN_OK;
}

const dn_layer_ops dn_yolo_ops = {
    .type = "yolo",
    .make = yolo_make,
    .setup = yolo_setup,
    .forward = yolo_forward,
    .backward = yolo_backward,
    .detections = yolo_detections,
    DN_GPU_OPS(dn_yolo_forward_gpu, dn_yolo_backward_gpu),
};

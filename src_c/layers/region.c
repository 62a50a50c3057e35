/* region.c - [region] detection head (yolov2)
 *
 * Input [B][num*per][H][W] (NCHW, per = coords+1+classes); for anchor a the
 * channels a*per .. are x, y, w, h (coords=4), objectness, then class scores.
 * Output, as darknet lays it out (its forward_region_layer flattens the
 * input): cell-major [B][H*W][num][per], i.e. output[b][(i*num + a)*per + k] =
 * f_k(input[b][a*per + k][i]) for cell i = row*W + col, where f is the
 * identity for x, y, w, h, the logistic for objectness, and, with softmax=1,
 * the softmax over the classes of that cell and anchor (raw otherwise).
 * Decoding (darknet's get_region_box; anchor sizes in grid cells):
 *     bx = (col + sigma(x)) / W,  by = (row + sigma(y)) / H,  bw = exp(w) * anchor_w / W,  bh likewise,
 *     confidence of class k = objectness * class_k, kept when it exceeds thresh.
 *
 * Training loss (a training pass with truths), following darknet's
 * forward_region_layer; z is the input, sigma the logistic. An image has
 * truth_stride / 5 truth rows (x, y, w, h, class); a row is skipped when
 * w <= 0 or h <= 0 (zero padding rows), a value is not finite or the class is
 * outside 0..classes-1 (darknet stops at the first row with x == 0 instead);
 * a truth's cell is (int)(x*W), (int)(y*H), clamped to the grid. For each
 * image:
 *  1. every prediction gets the no-object term 0.5*noobject_scale*sigma(z_o)^2,
 *     removed when its decoded box has IoU > thresh with a truth; while
 *     net->seen < 12800 images, also the prior box term (targets
 *     x = y = .5, w = h = 0, scale .01).
 *  2. each truth goes to the anchor of its cell whose predicted box (its
 *     anchor with bias_match) has the best IoU with the truth's shape (centres together);
 *     that prediction's box term becomes the truth's (scale coord_scale), its
 *     objectness term 0.5*object_scale*(sigma(z_o) - 1)^2 (rescore: target
 *     the IoU of the predicted box with the truth), its class terms the
 *     truth's. A later truth on the same prediction replaces the earlier one.
 * The terms (gradients are with respect to z):
 *  - box term with targets tx = truth.x*W - col, ty likewise,
 *    tw = log(truth.w*W/anchor_w), th likewise, scale k:
 *    k/2 * ((sigma(z_x) - tx)^2 + (sigma(z_y) - ty)^2 + (z_w - tw)^2 + (z_h - th)^2)
 *  - class terms, softmax: class_scale * -log(p_k), gradient
 *    class_scale * (p - onehot); with focal_loss (alpha = .5, gamma = 2):
 *    class_scale * alpha * -(1 - p_k)^2 log(p_k); without softmax:
 *    class_scale/2 * sum_c (z_c - [c == k])^2.
 * These gradients are exactly minus darknet's steps, except with rescore, where the
 * target depends on the predicted box and its gradient through the IoU
 * (core/box.c) is included (darknet leaves it out). classfix, tree and map
 * are not supported in training; focal_loss needs softmax.
 * Loss = the sum of the terms over the images, added to net->loss; l->delta =
 * its gradient with respect to the input, in the input's layout (as darknet's
 * delta after it flattens it back).
 * Backward: input delta += l->delta. In a training pass without truths there
 * is no loss: l->delta is dLoss/d(output) in the output's layout and backward
 * applies the forward's Jacobian (sigma' for objectness, the softmax's for
 * the classes, 1 for the rest) and the layout change. */
#include "../ops/ops.h"
#include "cuda.h"
#include "../ops/layer_math.h"
#include "region_loss.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    int classes, coords, num, softmax;
    const float *anchors;
    /* training */
    float coord_scale, object_scale, noobject_scale, class_scale, thresh;
    int rescore, bias_match, focal_loss;
    region_cell *cells;
    size_t cells_cap;
} region_state;

static dn_status region_make(dn_layer *l, dn_net *net)
{
    (void)net;
    region_state *s = dn_layer_priv(l, sizeof(region_state));
    if (!s) return DN_ERR_NOMEM;
    if (dn_layer_owns(l, &s->cells, NULL)) return DN_ERR_ARG;
    int nanchors;
    dn_status st;
    if ((st = dn_attr_int(l, "classes", &s->classes)) || (st = dn_attr_int(l, "coords", &s->coords)) ||
        (st = dn_attr_int(l, "num", &s->num)) || (st = dn_attr_int(l, "softmax", &s->softmax)) ||
        (st = dn_attr_floats(l, "anchors", &s->anchors, &nanchors)))
        return st;
    if (s->classes < 1 || s->num < 1 || s->coords != 4)
        return dn_layer_fail(l, DN_ERR_ARG, "need classes >= 1, num >= 1 and coords = 4 (got %d, %d, %d)", s->classes,
                             s->num, s->coords);
    if (nanchors != 2 * s->num)
        return dn_layer_fail(l, DN_ERR_ARG, "%d anchor values given, num=%d needs %d", nanchors, s->num, 2 * s->num);
    if ((st = dn_attr_float(l, "coord_scale", &s->coord_scale)) ||
        (st = dn_attr_float(l, "object_scale", &s->object_scale)) ||
        (st = dn_attr_float(l, "noobject_scale", &s->noobject_scale)) ||
        (st = dn_attr_float(l, "class_scale", &s->class_scale)) || (st = dn_attr_float(l, "thresh", &s->thresh)) ||
        (st = dn_attr_int(l, "rescore", &s->rescore)) || (st = dn_attr_int(l, "bias_match", &s->bias_match)) ||
        (st = dn_attr_int(l, "focal_loss", &s->focal_loss)))
        return st;
    l->is_loss = 1;
    return DN_OK;
}

static dn_status region_setup(dn_layer *l, dn_net *net)
{
    region_state *s = l->priv;
    const int per = s->coords + 1 + s->classes;
    if (l->c != s->num * per)
        return dn_layer_fail(l, DN_ERR_SHAPE, "input has %d channels; num=%d x (%d + 1 + %d classes) = %d needed", l->c,
                             s->num, s->coords, s->classes, s->num * per);
    return dn_setup_same_shape(l, net);
}

/* ---------------------------------------------------------------- the loss */

static dn_status grow_cells(region_state *s, size_t n)
{
    if (s->cells && s->cells_cap >= n) return DN_OK;
    region_cell *p = realloc(s->cells, (n ? n : 1) * sizeof(region_cell));
    if (!p) return DN_ERR_NOMEM;
    s->cells = p;
    s->cells_cap = n;
    return DN_OK;
}

static dn_status check_training_options(const dn_layer *l)
{
    const region_state *s = l->priv;
    static const char *strings[] = {"tree", "map"};
    for (int i = 0; i < 2; ++i)
        if (dn_attr_has(l, strings[i])) {
            const char *v;
            dn_status st = dn_attr_string(l, strings[i], &v);
            if (st) return st;
            if (v[0]) return dn_layer_fail(l, DN_ERR_UNSUPPORTED, "training with '%s' is not supported", strings[i]);
        }
    if (dn_attr_has(l, "classfix")) {
        int classfix;
        dn_status st = dn_attr_int(l, "classfix", &classfix);
        if (st) return st;
        if (classfix) return dn_layer_fail(l, DN_ERR_UNSUPPORTED, "training with classfix is not supported");
    }
    if (s->focal_loss && !s->softmax)
        return dn_layer_fail(l, DN_ERR_UNSUPPORTED, "focal_loss needs softmax=1 in training");
    return DN_OK;
}

void dn_region_params(const dn_layer *l, const dn_net *net, region_params *p)
{
    const region_state *s = l->priv;
    const region_params v = {s->classes, s->coords, s->num, s->softmax, s->anchors, s->coord_scale, s->object_scale,
                             s->noobject_scale, s->class_scale, s->thresh, s->rescore, s->bias_match, s->focal_loss,
                             l->w, l->h, net->seen < 12800};
    *p = v;
}

dn_status dn_region_loss_ready(const dn_layer *l, const dn_net *net)
{
    if (net->truth_stride % 5)
        return dn_layer_fail(l, DN_ERR_SHAPE, "%d truth values per image are not rows of 5 (x, y, w, h, class)",
                             net->truth_stride);
    return check_training_options(l);
}

static dn_status region_loss(dn_layer *l, dn_net *net)
{
    region_state *s = l->priv;
    const size_t hw = (size_t)l->h * l->w;
    dn_status st;
    if ((st = dn_region_loss_ready(l, net))) return st;
    if (grow_cells(s, (size_t)s->num * hw)) return dn_layer_fail(l, DN_ERR_NOMEM, "out of memory for the loss scratch");
    region_params p;
    dn_region_params(l, net, &p);
    const float *input = dn_layer_input(net, l);
    memset(l->delta, 0, (size_t)l->batch * l->outputs * sizeof(float));
    double total = 0;
    for (int b = 0; b < l->batch; ++b) {
        region_image c = {&p, input + (size_t)b * l->inputs, l->output + (size_t)b * l->outputs,
                          l->delta + (size_t)b * l->outputs, net->truth + (size_t)b * net->truth_stride,
                          net->truth_stride / 5, hw, s->cells};
        for (int a = 0; a < s->num; ++a)
            for (size_t i = 0; i < hw; ++i) region_judge(&c, a, i);
        region_assign_truths(&c);
        double loss = 0;
        for (int a = 0; a < s->num; ++a)
            for (size_t i = 0; i < hw; ++i) loss += region_cell_loss(&c, a, i);
        total += loss;
    }
    net->loss += total;
    return DN_OK;
}

/* ---------------------------------------------------------------- passes */

static dn_status region_forward(dn_layer *l, dn_net *net)
{
    region_state *s = l->priv;
    const float *input = dn_layer_input(net, l);
    const size_t hw = (size_t)l->h * l->w;
    const int per = s->coords + 1 + s->classes;
    for (int b = 0; b < l->batch; ++b)
        for (size_t i = 0; i < hw; ++i)
            for (int a = 0; a < s->num; ++a)
                dn_region_cell_forward(input + (size_t)b * l->inputs + (size_t)a * per * hw + i, hw, per, s->coords,
                                       s->softmax, l->output + (size_t)b * l->outputs + (i * s->num + a) * per);
    return dn_region_train_loss(l, net);
}

dn_status dn_region_train_loss(dn_layer *l, dn_net *net) { return dn_head_train_loss(l, net, region_loss); }

static dn_status region_backward(dn_layer *l, dn_net *net)
{
    region_state *s = l->priv;
    float *d = dn_layer_input_delta(net, l);
    if (!d) return DN_OK;
    if (l->has_loss) {
        dn_head_pass_delta(l, d);
        return DN_OK;
    }
    const size_t hw = (size_t)l->h * l->w;
    const int per = s->coords + 1 + s->classes;
    for (int b = 0; b < l->batch; ++b)
        for (size_t i = 0; i < hw; ++i)
            for (int a = 0; a < s->num; ++a) {
                const size_t o = (size_t)b * l->outputs + (i * s->num + a) * per;
                dn_region_cell_backward(l->output + o, l->delta + o, hw, per, s->coords, s->softmax,
                                        d + (size_t)b * l->inputs + (size_t)a * per * hw + i);
            }
    return DN_OK;
}

static dn_status region_detections(const dn_layer *l, const dn_net *net, int b, float thresh, dn_candidates *out)
{
    (void)net;
    const region_state *s = l->priv;
    const size_t hw = (size_t)l->h * l->w;
    const int per = s->coords + 1 + s->classes;
    for (int n = 0; n < s->num; ++n) /* darknet's order of candidates: anchor by anchor */
        for (size_t i = 0; i < hw; ++i) {
            const float *p = l->output + (size_t)b * l->outputs + (i * s->num + n) * per;
            const int col = (int)(i % l->w), row = (int)(i / l->w);
            dn_detection d = {0};
            d.x = (col + dn_logistic1(p[0])) / l->w;
            d.y = (row + dn_logistic1(p[1])) / l->h;
            d.w = expf(p[2]) * s->anchors[2 * n] / l->w;
            d.h = expf(p[3]) * s->anchors[2 * n + 1] / l->h;
            d.objectness = p[s->coords];
            d.batch_index = b;
            dn_status st = dn_push_box_classes(out, d, p + s->coords + 1, 1, s->classes, thresh);
            if (st) return st;
        }
    return DN_OK;
}

const dn_layer_ops dn_region_ops = {
    .type = "region",
    .make = region_make,
    .setup = region_setup,
    .forward = region_forward,
    .backward = region_backward,
    .detections = region_detections,
    DN_GPU_OPS(dn_region_forward_gpu, dn_region_backward_gpu),
};

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

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define FOCAL_ALPHA 0.5f
#define BOX_MSE (-1)

enum { OBJ_NONE, OBJ_CONST, OBJ_IOU };
enum { CLS_NONE, CLS_CONST, CLS_IOU, CLS_FOCAL_POS, CLS_FOCAL_NEG };

typedef struct {
    unsigned char kind;
    float t, w;
} cls_term;

/* what steps 1-3 decided for one prediction of the current image */
typedef struct {
    int obj, obj_truth, obj_square; /* OBJ_IOU: target IoU (squared) with truth row obj_truth */
    float obj_t, obj_w;
    int classes_set, focal, iou_truth; /* CLS_IOU targets: IoU^2 with truth row iou_truth */
    double box_loss;
} cell_state;

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
        *out = BOX_MSE;
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

/* one image of a training pass */
typedef struct {
    yolo_state *s;
    const dn_layer *l;
    const dn_net *net;
    const float *in, *out; /* the image's input (z) and output */
    float *delta;          /* the image's gradient */
    const float *truth;    /* its truth rows */
    const int *valid;      /* the rows that hold a truth (dn_truth_class >= 0), in order */
    int nvalid;
    size_t hw;
    cell_state *cells; /* the worker's scratch of steps 1-3 */
    cls_term *terms;
} image_ctx;

static size_t entry(const image_ctx *c, int a, int k, size_t i)
{
    return ((size_t)a * (c->s->classes + 5) + (size_t)k) * c->hw + i;
}

static double softplus(double z) { return (z > 0 ? z : 0) + log1p(exp(-fabs(z))); }

static int truth_class(const image_ctx *c, int r) { return dn_truth_class(c->truth + 5 * (size_t)r, c->s->classes); }

static dn_box truth_box(const image_ctx *c, int r)
{
    const float *t = c->truth + 5 * (size_t)r;
    dn_box b = {t[0], t[1], t[2], t[3]};
    return b;
}

static dn_box pred_box(const image_ctx *c, int a, size_t i)
{
    const yolo_state *s = c->s;
    const dn_layer *l = c->l;
    const float aw = s->anchors[2 * a], ah = s->anchors[2 * a + 1];
    const float zw = c->in[entry(c, a, 2, i)], zh = c->in[entry(c, a, 3, i)];
    dn_box b;
    b.x = ((float)(i % l->w) + c->out[entry(c, a, 0, i)]) / l->w;
    b.y = ((float)(i / l->w) + c->out[entry(c, a, 1, i)]) / l->h;
    if (s->new_coords) {
        b.w = zw * zw * 4.f * aw / c->net->w;
        b.h = zh * zh * 4.f * ah / c->net->h;
    } else {
        b.w = expf(zw) * aw / c->net->w;
        b.h = expf(zh) * ah / c->net->h;
    }
    return b;
}

/* d(bx, by, bw, bh) / d(z_x, z_y, z_w, z_h) */
static void box_jacobian(const image_ctx *c, int a, size_t i, float jac[4])
{
    const yolo_state *s = c->s;
    const float aw = s->anchors[2 * a], ah = s->anchors[2 * a + 1];
    const float *z = c->in;
    const float zw = z[entry(c, a, 2, i)], zh = z[entry(c, a, 3, i)];
    if (s->new_coords) {
        jac[0] = s->scale_x_y / c->l->w;
        jac[1] = s->scale_x_y / c->l->h;
        jac[2] = 8.f * zw * aw / c->net->w;
        jac[3] = 8.f * zh * ah / c->net->h;
    } else {
        const float sx = dn_logistic(z[entry(c, a, 0, i)]), sy = dn_logistic(z[entry(c, a, 1, i)]);
        jac[0] = s->scale_x_y * sx * (1.f - sx) / c->l->w;
        jac[1] = s->scale_x_y * sy * (1.f - sy) / c->l->h;
        jac[2] = expf(zw) * aw / c->net->w;
        jac[3] = expf(zh) * ah / c->net->h;
    }
}

static float finite_or_zero(float v) { return isfinite(v) ? v : 0.f; }

/* adds d(term)/d(target) * d(target)/d(box) into the box gradient of (a, i)
 * for a target iou (squared when `square`) whose gradient is g */
static void add_iou_target_grad(image_ctx *c, int a, size_t i, int square, float iou, const float g[4], float dloss_dt)
{
    float jac[4];
    box_jacobian(c, a, i, jac);
    const float dt = square ? 2.f * iou : 1.f;
    for (int q = 0; q < 4; ++q) c->delta[entry(c, a, q, i)] += finite_or_zero(dloss_dt * dt * g[q] * jac[q]);
}

/* probability term w * BCE(sigma(z), t) (new_coords: w/2 (z - t)^2); adds
 * its gradient to *g, returns its value; *dt = d(term)/d(t) when asked */
static double prob_term(int new_coords, float z, float t, float w, float *g, float *dt)
{
    if (new_coords) {
        const float e = z - t;
        *g += w * e;
        if (dt) *dt = -w * e;
        return 0.5 * w * (double)e * e;
    }
    *g += w * (dn_logistic(z) - t);
    if (dt) *dt = -w * z;
    return w * (softplus(z) - (double)t * z);
}

/* ---- focal loss pieces: pt, log(pt) and d(pt)/dz of the positive class */
typedef struct {
    double pt, lp, dpt, g, dg;
} focal_pt;

static focal_pt focal_at(int new_coords, float z)
{
    focal_pt f;
    if (new_coords) {
        f.pt = z > 1e-15f ? z : 1e-15;
        f.lp = log(f.pt);
        f.dpt = 1;
    } else {
        f.pt = 1 / (1 + exp(-(double)z));
        f.lp = -softplus(-(double)z);
        f.dpt = f.pt * (1 - f.pt);
    }
    const double p = f.pt, lp = f.lp;
    f.g = (1 - p) * (1 - p - 2 * p * lp);
    f.dg = -(1 - p - 2 * p * lp) - (1 - p) * (3 + 2 * lp);
    return f;
}

/* alpha * FL(pt); gradient with respect to z_k added to *g. For the logistic,
 * d(FL)/dz = (1 - pt)^2 (2 pt log pt + pt - 1); new_coords takes the function
 * H of pt with that derivative (with respect to pt = z), H(1) = 0. */
static double focal_pos(int new_coords, const focal_pt *f, float *g)
{
    const double p = f->pt, lp = f->lp;
    *g += (float)(FOCAL_ALPHA * (1 - p) * (1 - p) * (2 * p * lp + p - 1));
    if (new_coords) {
        const double H = (1 - p) * (1 - p) * (1 - p) * (1 - p) / 4 +
                         2 * ((p * p / 2 - 2 * p * p * p / 3 + p * p * p * p / 4) * lp - p * p / 4 +
                              2 * p * p * p / 9 - p * p * p * p / 16);
        return FOCAL_ALPHA * (H + 13.0 / 72.0);
    }
    return FOCAL_ALPHA * (1 - p) * (1 - p) * (-lp);
}

/* alpha * g(pt) * BCE(sigma(z_c), 0) (new_coords alpha*g(pt)*z_c^2/2);
 * gradients added to *gc (z_c) and *gk (z_k) */
static double focal_neg(int new_coords, const focal_pt *f, float zc, float *gc, float *gk)
{
    double base, dbase;
    if (new_coords) {
        base = 0.5 * (double)zc * zc;
        dbase = zc;
    } else {
        base = softplus(zc);
        dbase = dn_logistic(zc);
    }
    *gc += (float)(FOCAL_ALPHA * f->g * dbase);
    *gk += (float)(FOCAL_ALPHA * f->dg * f->dpt * base);
    return FOCAL_ALPHA * f->g * base;
}

/* ---- the state machine of steps 1-3 */
static float class_mult(const image_ctx *c, int k) { return c->s->class_mult ? c->s->class_mult[k] : 1.f; }

static cell_state *cell_at(image_ctx *c, int a, size_t i) { return &c->cells[(size_t)a * c->hw + i]; }

static cls_term *terms_at(image_ctx *c, int a, size_t i)
{
    return &c->terms[((size_t)a * c->hw + i) * (size_t)c->s->classes];
}

static float measure_with(const image_ctx *c, int a, size_t i, int r, float grad[4])
{
    return dn_box_measure(pred_box(c, a, i), truth_box(c, r), DN_IOU_PLAIN, grad);
}

/* darknet's objectness delta w*(t - p) for the current state (zero: no term) */
static float obj_gap(image_ctx *c, int a, size_t i)
{
    const cell_state *cs = cell_at(c, a, i);
    const float p = c->out[entry(c, a, 4, i)];
    if (cs->obj == OBJ_CONST) return cs->obj_w * (cs->obj_t - p);
    if (cs->obj == OBJ_IOU) {
        float m = measure_with(c, a, i, cs->obj_truth, NULL);
        return cs->obj_w * ((cs->obj_square ? m * m : m) - p);
    }
    return 0.f;
}

/* darknet's class delta for entry k, as decided so far */
static float class_gap(image_ctx *c, int a, size_t i, int k)
{
    const cell_state *cs = cell_at(c, a, i);
    const cls_term *t = terms_at(c, a, i) + k;
    const float p = c->out[entry(c, a, 5 + k, i)];
    switch (t->kind) {
    case CLS_CONST: return t->w * (t->t - p);
    case CLS_IOU: {
        const float m = measure_with(c, a, i, cs->iou_truth, NULL);
        return t->w * (m * m - p);
    }
    case CLS_FOCAL_POS:
    case CLS_FOCAL_NEG: {
        const focal_pt f = focal_at(c->s->new_coords, c->in[entry(c, a, 5 + cs->focal, i)]);
        return (float)(((t->kind == CLS_FOCAL_POS ? 1.f : 0.f) - p) * FOCAL_ALPHA * f.g);
    }
    default: return 0.f;
    }
}

/* darknet's delta_yolo_class */
static void set_classes(image_ctx *c, int a, size_t i, int k)
{
    const yolo_state *s = c->s;
    cell_state *cs = cell_at(c, a, i);
    cls_term *t = terms_at(c, a, i);
    const float eps = s->label_smooth_eps;
    const float one = 1.f * (1.f - eps) + .5f * eps, zero = .5f * eps;
    if (cs->classes_set) {
        t[k].kind = CLS_CONST;
        t[k].t = one;
        t[k].w = class_mult(c, k);
        return;
    }
    cs->classes_set = 1;
    if (s->focal_loss) {
        cs->focal = k;
        for (int n = 0; n < s->classes; ++n) t[n].kind = n == k ? CLS_FOCAL_POS : CLS_FOCAL_NEG;
        return;
    }
    for (int n = 0; n < s->classes; ++n) {
        t[n].kind = CLS_CONST;
        t[n].t = n == k ? one : zero;
        t[n].w = (n == k && s->class_mult) ? s->class_mult[k] * s->cls_normalizer : 1.f;
    }
}

/* darknet's delta_yolo_box: the box term of truth row r on prediction (a, i) */
static void add_box_term(image_ctx *c, int a, size_t i, int r, float norm)
{
    const yolo_state *s = c->s;
    const dn_layer *l = c->l;
    cell_state *cs = cell_at(c, a, i);
    const dn_box tb = truth_box(c, r);
    const float aw = s->anchors[2 * a], ah = s->anchors[2 * a + 1], sxy = s->scale_x_y;
    if (s->iou_loss == BOX_MSE) {
        const float k = (2.f - tb.w * tb.h) * norm;
        const float tgt[4] = {
            tb.x * l->w - (float)(i % l->w), tb.y * l->h - (float)(i / l->w),
            s->new_coords ? sqrtf(tb.w * c->net->w / (4.f * aw)) : logf(tb.w * c->net->w / aw),
            s->new_coords ? sqrtf(tb.h * c->net->h / (4.f * ah)) : logf(tb.h * c->net->h / ah)};
        for (int q = 0; q < 2; ++q) {
            const size_t e = entry(c, a, q, i);
            const float z = c->in[e], o = c->out[e];
            c->delta[e] += k * (o - tgt[q]);
            if (s->new_coords)
                cs->box_loss += k / (2.0 * sxy) * (double)(o - tgt[q]) * (o - tgt[q]);
            else
                cs->box_loss += (double)k * sxy * (softplus(z) - (tgt[q] + (sxy - 1) / 2) / sxy * (double)z);
        }
        for (int q = 2; q < 4; ++q) {
            const size_t e = entry(c, a, q, i);
            const float d = c->in[e] - tgt[q];
            c->delta[e] += k * d;
            cs->box_loss += 0.5 * k * (double)d * d;
        }
        return;
    }
    float g[4], jac[4];
    const float m = dn_box_measure(pred_box(c, a, i), tb, (dn_iou_kind)s->iou_loss, g);
    box_jacobian(c, a, i, jac);
    cs->box_loss += (double)norm * (1.0 - m);
    for (int q = 0; q < 4; ++q) {
        float v = finite_or_zero(-norm * g[q] * jac[q]);
        if (s->max_delta < FLT_MAX) v = fminf(fmaxf(v, -s->max_delta), s->max_delta);
        c->delta[entry(c, a, q, i)] += v;
    }
}

/* step 2 for one (truth, anchor) pair */
static void assign_truth(image_ctx *c, int a, size_t i, int r, int k)
{
    const yolo_state *s = c->s;
    cell_state *cs = cell_at(c, a, i);
    const float cm = class_mult(c, k);
    add_box_term(c, a, i, r, s->iou_normalizer * cm);
    if (!s->objectness_smooth || obj_gap(c, a, i) == 0.f) {
        cs->obj = OBJ_CONST;
        cs->obj_t = 1.f;
        cs->obj_w = cm * s->obj_normalizer;
    }
    set_classes(c, a, i, k);
}

static int mask_index(const yolo_state *s, int anchor)
{
    for (int i = 0; i < s->n; ++i)
        if (s->mask[i] == anchor) return i;
    return -1;
}

/* step 1 for prediction (a, i) */
static void judge_prediction(image_ctx *c, int a, size_t i)
{
    const yolo_state *s = c->s;
    cell_state *cs = cell_at(c, a, i);
    memset(cs, 0, sizeof(*cs));
    cs->focal = -1;
    cs->obj = OBJ_CONST;
    cs->obj_t = 0.f;
    cs->obj_w = s->obj_normalizer;
    memset(terms_at(c, a, i), 0, sizeof(cls_term) * (size_t)s->classes);

    const dn_box pred = pred_box(c, a, i);
    int class_match = 0;
    for (int k = 0; k < s->classes && !class_match; ++k) class_match = c->out[entry(c, a, 5 + k, i)] > .25f;
    float best_match = 0.f, best = 0.f;
    int best_match_r = 0, best_r = 0;
    for (int v = 0; v < c->nvalid; ++v) {
        const int r = c->valid[v];
        const float m = dn_box_measure(pred, truth_box(c, r), DN_IOU_PLAIN, NULL);
        if (m > best_match && class_match) {
            best_match = m;
            best_match_r = r;
        }
        if (m > best) {
            best = m;
            best_r = r;
        }
    }
    const float p = c->out[entry(c, a, 4, i)];
    if (best_match > s->ignore_thresh) {
        if (!s->objectness_smooth)
            cs->obj = OBJ_NONE;
        else if (s->obj_normalizer * (best_match - p) > s->obj_normalizer * (0.f - p)) {
            cs->obj = OBJ_IOU;
            cs->obj_truth = best_match_r;
            cs->obj_square = 0;
        }
    }
    if (best > s->truth_thresh) {
        const int k = truth_class(c, best_r);
        const float cm = class_mult(c, k);
        if (s->objectness_smooth) {
            cs->obj = OBJ_IOU;
            cs->obj_truth = best_r;
            cs->obj_square = 1;
            cs->obj_w = s->obj_normalizer;
        } else {
            cs->obj = OBJ_CONST;
            cs->obj_t = 1.f;
            cs->obj_w = s->obj_normalizer;
        }
        set_classes(c, a, i, k);
        if (s->objectness_smooth) {
            cls_term *t = terms_at(c, a, i) + k;
            t->kind = CLS_IOU;
            t->w = cm;
            cs->iou_truth = best_r;
        }
        add_box_term(c, a, i, best_r, s->iou_normalizer * cm);
    }
}

/* the terms of prediction (a, i) as decided: value, gradients into delta */
static double cell_loss(image_ctx *c, int a, size_t i)
{
    const yolo_state *s = c->s;
    const int nc = s->new_coords;
    cell_state *cs = cell_at(c, a, i);
    double loss = cs->box_loss;
    const size_t eo = entry(c, a, 4, i);
    if (cs->obj == OBJ_CONST) {
        loss += prob_term(nc, c->in[eo], cs->obj_t, cs->obj_w, &c->delta[eo], NULL);
    } else if (cs->obj == OBJ_IOU) {
        float g[4], dt;
        const float m = measure_with(c, a, i, cs->obj_truth, g);
        loss += prob_term(nc, c->in[eo], cs->obj_square ? m * m : m, cs->obj_w, &c->delta[eo], &dt);
        add_iou_target_grad(c, a, i, cs->obj_square, m, g, dt);
    }
    if (!cs->classes_set) return loss;
    const cls_term *t = terms_at(c, a, i);
    focal_pt f = {0, 0, 0, 0, 0};
    size_t ek = 0;
    if (cs->focal >= 0) {
        ek = entry(c, a, 5 + cs->focal, i);
        f = focal_at(nc, c->in[ek]);
    }
    for (int k = 0; k < s->classes; ++k) {
        const size_t e = entry(c, a, 5 + k, i);
        switch (t[k].kind) {
        case CLS_CONST: loss += prob_term(nc, c->in[e], t[k].t, t[k].w, &c->delta[e], NULL); break;
        case CLS_IOU: {
            float g[4], dt;
            const float m = measure_with(c, a, i, cs->iou_truth, g);
            loss += prob_term(nc, c->in[e], m * m, t[k].w, &c->delta[e], &dt);
            add_iou_target_grad(c, a, i, 1, m, g, dt);
            break;
        }
        case CLS_FOCAL_POS: loss += focal_pos(nc, &f, &c->delta[e]); break;
        case CLS_FOCAL_NEG: loss += focal_neg(nc, &f, c->in[e], &c->delta[e], &c->delta[ek]); break;
        default: break;
        }
    }
    return loss;
}

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
    const float *input;
    size_t hw, cells;
} loss_job;

static void image_loss(void *ctx, int b, int worker)
{
    const loss_job *j = ctx;
    yolo_state *s = j->s;
    dn_layer *l = j->l;
    const size_t hw = j->hw;
    const int rows = j->net->truth_stride / 5;
    int *valid = s->valid + (size_t)worker * (size_t)rows, nvalid = 0;
    const float *truth = j->net->truth + (size_t)b * j->net->truth_stride;
    for (int r = 0; r < rows; ++r) /* the usable rows once, not at every prediction */
        if (dn_truth_class(truth + 5 * (size_t)r, s->classes) >= 0) valid[nvalid++] = r;
    image_ctx c = {s, l, j->net, j->input + (size_t)b * l->inputs, l->output + (size_t)b * l->outputs,
                   l->delta + (size_t)b * l->outputs, truth, valid, nvalid, hw,
                   s->cells + (size_t)worker * j->cells, s->terms + (size_t)worker * j->cells * (size_t)s->classes};
    memset(c.delta, 0, l->outputs * sizeof(float));
    for (int a = 0; a < s->n; ++a)
        for (size_t i = 0; i < hw; ++i) judge_prediction(&c, a, i);
    for (int v = 0; v < c.nvalid; ++v) {
        const int r = c.valid[v], k = truth_class(&c, r);
        const dn_box tb = truth_box(&c, r);
        int col = (int)(tb.x * l->w), row = (int)(tb.y * l->h);
        col = col < 0 ? 0 : col >= l->w ? l->w - 1 : col;
        row = row < 0 ? 0 : row >= l->h ? l->h - 1 : row;
        const size_t i = (size_t)row * l->w + col;
        const dn_box shape = {0, 0, tb.w, tb.h};
        float best = 0.f;
        int best_n = 0;
        for (int n = 0; n < s->total; ++n) {
            const dn_box anchor = {0, 0, s->all_anchors[2 * n] / j->net->w, s->all_anchors[2 * n + 1] / j->net->h};
            const float m = dn_box_measure(anchor, shape, DN_IOU_PLAIN, NULL);
            if (m > best) {
                best = m;
                best_n = n;
            }
        }
        const int a = mask_index(s, best_n);
        if (a >= 0) assign_truth(&c, a, i, r, k);
        if (s->iou_thresh < 1.f)
            for (int n = 0; n < s->total; ++n) {
                const int an = mask_index(s, n);
                if (an < 0 || n == best_n) continue;
                const dn_box anchor = {0, 0, s->all_anchors[2 * n] / j->net->w, s->all_anchors[2 * n + 1] / j->net->h};
                if (dn_box_measure(anchor, shape, (dn_iou_kind)s->iou_thresh_kind, NULL) > s->iou_thresh)
                    assign_truth(&c, an, i, r, k);
            }
    }
    if (s->iou_thresh < 1.f)
        for (int a = 0; a < s->n; ++a)
            for (size_t i = 0; i < hw; ++i) {
                if (obj_gap(&c, a, i) == 0.f) continue;
                int positive = 0;
                if (cell_at(&c, a, i)->classes_set)
                    for (int k = 0; k < s->classes; ++k) positive += class_gap(&c, a, i, k) > 0.f;
                if (!positive) continue;
                cell_at(&c, a, i)->box_loss /= positive;
                for (int q = 0; q < 4; ++q) c.delta[entry(&c, a, q, i)] /= (float)positive;
            }
    double loss = 0;
    for (int a = 0; a < s->n; ++a)
        for (size_t i = 0; i < hw; ++i) loss += cell_loss(&c, a, i);
    if (s->delta_normalizer != 1.f)
        for (size_t e = 0; e < l->outputs; ++e) c.delta[e] *= s->delta_normalizer;
    s->image_loss[b] = loss * s->delta_normalizer;
}

static dn_status yolo_loss(dn_layer *l, dn_net *net)
{
    yolo_state *s = l->priv;
    const size_t hw = (size_t)l->h * l->w, cells = (size_t)s->n * hw;
    if (net->truth_stride % 5)
        return dn_layer_fail(l, DN_ERR_SHAPE, "%d truth values per image are not rows of 5 (x, y, w, h, class)",
                             net->truth_stride);
    if (dn_attr_has(l, "map")) {
        const char *map;
        dn_status st = dn_attr_string(l, "map", &map);
        if (st) return st;
        if (map[0]) return dn_layer_fail(l, DN_ERR_UNSUPPORTED, "training with a class map is not supported");
    }
    const size_t workers = (size_t)dn_workers(net);
    dn_status st;
    if ((st = grow((void **)&s->cells, &s->cells_cap, workers * cells, sizeof(cell_state))) ||
        (st = grow((void **)&s->terms, &s->terms_cap, workers * cells * (size_t)s->classes, sizeof(cls_term))) ||
        (st = grow((void **)&s->image_loss, &s->image_loss_cap, (size_t)l->batch, sizeof(double))) ||
        (st = grow((void **)&s->valid, &s->valid_cap, workers * (size_t)(net->truth_stride / 5), sizeof(int))))
        return dn_layer_fail(l, st, "out of memory for the loss scratch");
    loss_job j = {s, l, net, dn_layer_input(net, l), hw, cells};
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

/* yolo_loss.h - the [yolo] training loss of yolo.c (its comment has the
 * maths), written once for the host and the device: the functions of one
 * prediction (steps 1 and 3, the terms) and of one image (step 2), over
 * yolo_params and image_ctx, which hold plain values and pointers valid where
 * the code runs. yolo.c runs an image on a worker thread; yolo.cu runs step 1
 * and the terms a thread per prediction and step 2 a thread per image. */
#ifndef DN_YOLO_LOSS_H
#define DN_YOLO_LOSS_H

#include "box_math.h"
#include "hd.h"
#include "layer.h"
#include "../ops/layer_math.h"

#include <float.h>
#include <math.h>
#include <string.h>

#define YOLO_FOCAL_ALPHA 0.5f
#define YOLO_BOX_MSE (-1) /* iou_loss=mse */

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


/* everything the loss reads besides the image: the layer's options, its grid (w x h) and the network's input
 * size; the arrays where the code runs (host or device memory) */
typedef struct {
    int classes, n, total, new_coords;
    float scale_x_y;
    const float *anchors;     /* 2*n: the masked anchors, in order */
    const float *all_anchors; /* 2*total */
    const int *mask;
    int iou_loss, iou_thresh_kind, focal_loss, objectness_smooth;
    float ignore_thresh, truth_thresh, iou_thresh, label_smooth_eps, max_delta;
    float iou_normalizer, obj_normalizer, cls_normalizer, delta_normalizer;
    const float *class_mult;  /* classes values, or NULL */
    int w, h, net_w, net_h;
} yolo_params;

/* one image of a training pass */
typedef struct {
    const yolo_params *p;
    const float *in, *out; /* the image's input (z) and output */
    float *delta;          /* the image's gradient */
    const float *truth;    /* its truth rows */
    const int *valid;      /* the rows that hold a truth (dn_truth_class >= 0), in order */
    int nvalid;
    size_t hw;
    cell_state *cells; /* the image's scratch of steps 1-3 (n * hw cells) */
    cls_term *terms;   /* n * hw * classes */
} image_ctx;

static inline DN_HD size_t entry(const image_ctx *c, int a, int k, size_t i)
{
    return ((size_t)a * (c->p->classes + 5) + (size_t)k) * c->hw + i;
}

static inline DN_HD double yolo_softplus(double z) { return (z > 0 ? z : 0) + log1p(exp(-fabs(z))); }

static inline DN_HD int truth_class(const image_ctx *c, int r) { return dn_truth_class_hd(c->truth + 5 * (size_t)r, c->p->classes); }

static inline DN_HD dn_box truth_box(const image_ctx *c, int r) { return dn_truth_box_hd(c->truth + 5 * (size_t)r); }

static inline DN_HD dn_box pred_box(const image_ctx *c, int a, size_t i)
{
    const yolo_params *s = c->p;
    const yolo_params *l = c->p;
    const float aw = s->anchors[2 * a], ah = s->anchors[2 * a + 1];
    const float zw = c->in[entry(c, a, 2, i)], zh = c->in[entry(c, a, 3, i)];
    dn_box b;
    b.x = ((float)(i % l->w) + c->out[entry(c, a, 0, i)]) / l->w;
    b.y = ((float)(i / l->w) + c->out[entry(c, a, 1, i)]) / l->h;
    if (s->new_coords) {
        b.w = zw * zw * 4.f * aw / c->p->net_w;
        b.h = zh * zh * 4.f * ah / c->p->net_h;
    } else {
        b.w = expf(zw) * aw / c->p->net_w;
        b.h = expf(zh) * ah / c->p->net_h;
    }
    return b;
}

/* d(bx, by, bw, bh) / d(z_x, z_y, z_w, z_h) */
static inline DN_HD void box_jacobian(const image_ctx *c, int a, size_t i, float jac[4])
{
    const yolo_params *s = c->p;
    const float aw = s->anchors[2 * a], ah = s->anchors[2 * a + 1];
    const float *z = c->in;
    const float zw = z[entry(c, a, 2, i)], zh = z[entry(c, a, 3, i)];
    if (s->new_coords) {
        jac[0] = s->scale_x_y / c->p->w;
        jac[1] = s->scale_x_y / c->p->h;
        jac[2] = 8.f * zw * aw / c->p->net_w;
        jac[3] = 8.f * zh * ah / c->p->net_h;
    } else {
        const float sx = dn_logistic1(z[entry(c, a, 0, i)]), sy = dn_logistic1(z[entry(c, a, 1, i)]);
        jac[0] = s->scale_x_y * sx * (1.f - sx) / c->p->w;
        jac[1] = s->scale_x_y * sy * (1.f - sy) / c->p->h;
        jac[2] = expf(zw) * aw / c->p->net_w;
        jac[3] = expf(zh) * ah / c->p->net_h;
    }
}

static inline DN_HD float finite_or_zero(float v) { return isfinite(v) ? v : 0.f; }

/* adds d(term)/d(target) * d(target)/d(box) into the box gradient of (a, i)
 * for a target iou (squared when `square`) whose gradient is g */
static inline DN_HD void add_iou_target_grad(image_ctx *c, int a, size_t i, int square, float iou, const float g[4], float dloss_dt)
{
    float jac[4];
    box_jacobian(c, a, i, jac);
    const float dt = square ? 2.f * iou : 1.f;
    for (int q = 0; q < 4; ++q) c->delta[entry(c, a, q, i)] += finite_or_zero(dloss_dt * dt * g[q] * jac[q]);
}

/* probability term w * BCE(sigma(z), t) (new_coords: w/2 (z - t)^2); adds
 * its gradient to *g, returns its value; *dt = d(term)/d(t) when asked */
static inline DN_HD double prob_term(int new_coords, float z, float t, float w, float *g, float *dt)
{
    if (new_coords) {
        const float e = z - t;
        *g += w * e;
        if (dt) *dt = -w * e;
        return 0.5 * w * (double)e * e;
    }
    *g += w * (dn_logistic1(z) - t);
    if (dt) *dt = -w * z;
    return w * (yolo_softplus(z) - (double)t * z);
}

/* ---- focal loss pieces: pt, log(pt) and d(pt)/dz of the positive class */
typedef struct {
    double pt, lp, dpt, g, dg;
} focal_pt;

static inline DN_HD focal_pt focal_at(int new_coords, float z)
{
    focal_pt f;
    if (new_coords) {
        f.pt = z > 1e-15f ? z : 1e-15;
        f.lp = log(f.pt);
        f.dpt = 1;
    } else {
        f.pt = 1 / (1 + exp(-(double)z));
        f.lp = -yolo_softplus(-(double)z);
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
static inline DN_HD double focal_pos(int new_coords, const focal_pt *f, float *g)
{
    const double p = f->pt, lp = f->lp;
    *g += (float)(YOLO_FOCAL_ALPHA * (1 - p) * (1 - p) * (2 * p * lp + p - 1));
    if (new_coords) {
        const double H = (1 - p) * (1 - p) * (1 - p) * (1 - p) / 4 +
                         2 * ((p * p / 2 - 2 * p * p * p / 3 + p * p * p * p / 4) * lp - p * p / 4 +
                              2 * p * p * p / 9 - p * p * p * p / 16);
        return YOLO_FOCAL_ALPHA * (H + 13.0 / 72.0);
    }
    return YOLO_FOCAL_ALPHA * (1 - p) * (1 - p) * (-lp);
}

/* alpha * g(pt) * BCE(sigma(z_c), 0) (new_coords alpha*g(pt)*z_c^2/2);
 * gradients added to *gc (z_c) and *gk (z_k) */
static inline DN_HD double focal_neg(int new_coords, const focal_pt *f, float zc, float *gc, float *gk)
{
    double base, dbase;
    if (new_coords) {
        base = 0.5 * (double)zc * zc;
        dbase = zc;
    } else {
        base = yolo_softplus(zc);
        dbase = dn_logistic1(zc);
    }
    *gc += (float)(YOLO_FOCAL_ALPHA * f->g * dbase);
    *gk += (float)(YOLO_FOCAL_ALPHA * f->dg * f->dpt * base);
    return YOLO_FOCAL_ALPHA * f->g * base;
}

/* ---- the state machine of steps 1-3 */
static inline DN_HD float class_mult(const image_ctx *c, int k) { return c->p->class_mult ? c->p->class_mult[k] : 1.f; }

static inline DN_HD cell_state *cell_at(image_ctx *c, int a, size_t i) { return &c->cells[(size_t)a * c->hw + i]; }

static inline DN_HD cls_term *terms_at(image_ctx *c, int a, size_t i)
{
    return &c->terms[((size_t)a * c->hw + i) * (size_t)c->p->classes];
}

static inline DN_HD float measure_with(const image_ctx *c, int a, size_t i, int r, float grad[4])
{
    return dn_box_measure_hd(pred_box(c, a, i), truth_box(c, r), DN_IOU_PLAIN, grad);
}

/* darknet's objectness delta w*(t - p) for the current state (zero: no term) */
static inline DN_HD float obj_gap(image_ctx *c, int a, size_t i)
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
static inline DN_HD float class_gap(image_ctx *c, int a, size_t i, int k)
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
        const focal_pt f = focal_at(c->p->new_coords, c->in[entry(c, a, 5 + cs->focal, i)]);
        return (float)(((t->kind == CLS_FOCAL_POS ? 1.f : 0.f) - p) * YOLO_FOCAL_ALPHA * f.g);
    }
    default: return 0.f;
    }
}

/* darknet's delta_yolo_class */
static inline DN_HD void set_classes(image_ctx *c, int a, size_t i, int k)
{
    const yolo_params *s = c->p;
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
static inline DN_HD void add_box_term(image_ctx *c, int a, size_t i, int r, float norm)
{
    const yolo_params *s = c->p;
    const yolo_params *l = c->p;
    cell_state *cs = cell_at(c, a, i);
    const dn_box tb = truth_box(c, r);
    const float aw = s->anchors[2 * a], ah = s->anchors[2 * a + 1], sxy = s->scale_x_y;
    if (s->iou_loss == YOLO_BOX_MSE) {
        const float k = (2.f - tb.w * tb.h) * norm;
        const float tgt[4] = {
            tb.x * l->w - (float)(i % l->w), tb.y * l->h - (float)(i / l->w),
            s->new_coords ? sqrtf(tb.w * c->p->net_w / (4.f * aw)) : logf(tb.w * c->p->net_w / aw),
            s->new_coords ? sqrtf(tb.h * c->p->net_h / (4.f * ah)) : logf(tb.h * c->p->net_h / ah)};
        for (int q = 0; q < 2; ++q) {
            const size_t e = entry(c, a, q, i);
            const float z = c->in[e], o = c->out[e];
            c->delta[e] += k * (o - tgt[q]);
            if (s->new_coords)
                cs->box_loss += k / (2.0 * sxy) * (double)(o - tgt[q]) * (o - tgt[q]);
            else
                cs->box_loss += (double)k * sxy * (yolo_softplus(z) - (tgt[q] + (sxy - 1) / 2) / sxy * (double)z);
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
    const float m = dn_box_measure_hd(pred_box(c, a, i), tb, (dn_iou_kind)s->iou_loss, g);
    box_jacobian(c, a, i, jac);
    cs->box_loss += (double)norm * (1.0 - m);
    for (int q = 0; q < 4; ++q) {
        float v = finite_or_zero(-norm * g[q] * jac[q]);
        if (s->max_delta < FLT_MAX) v = fminf(fmaxf(v, -s->max_delta), s->max_delta);
        c->delta[entry(c, a, q, i)] += v;
    }
}

/* step 2 for one (truth, anchor) pair */
static inline DN_HD void assign_truth(image_ctx *c, int a, size_t i, int r, int k)
{
    const yolo_params *s = c->p;
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

static inline DN_HD int mask_index(const yolo_params *s, int anchor)
{
    for (int i = 0; i < s->n; ++i)
        if (s->mask[i] == anchor) return i;
    return -1;
}

/* step 1 for prediction (a, i) */
static inline DN_HD void judge_prediction(image_ctx *c, int a, size_t i)
{
    const yolo_params *s = c->p;
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
        const float m = dn_box_measure_hd(pred, truth_box(c, r), DN_IOU_PLAIN, NULL);
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
static inline DN_HD double cell_loss(image_ctx *c, int a, size_t i)
{
    const yolo_params *s = c->p;
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

/* ---- an image's steps, as image_loss runs them (yolo.c) ---- */
/* the truth rows of an image that hold a truth, in order, into valid; their count */
static inline DN_HD int yolo_valid_rows(const yolo_params *p, const float *truth, int rows, int *valid)
{
    int nvalid = 0;
    for (int r = 0; r < rows; ++r)
        if (dn_truth_class_hd(truth + 5 * (size_t)r, p->classes) >= 0) valid[nvalid++] = r;
    return nvalid;
}

/* step 2: every truth to its cell and best anchor (and, with iou_thresh < 1, the other masked anchors whose shape
 * measure passes it), in row order */
static inline DN_HD void yolo_assign_truths(image_ctx *c)
{
    const yolo_params *s = c->p;
    for (int v = 0; v < c->nvalid; ++v) {
        const int r = c->valid[v], k = truth_class(c, r);
        const dn_box tb = truth_box(c, r);
        const size_t i = dn_box_cell_hd(tb, s->w, s->h);
        const dn_box shape = {0, 0, tb.w, tb.h};
        float best = 0.f;
        int best_n = 0;
        for (int n = 0; n < s->total; ++n) {
            const dn_box anchor = {0, 0, s->all_anchors[2 * n] / s->net_w, s->all_anchors[2 * n + 1] / s->net_h};
            const float m = dn_box_measure_hd(anchor, shape, DN_IOU_PLAIN, NULL);
            if (m > best) {
                best = m;
                best_n = n;
            }
        }
        const int a = mask_index(s, best_n);
        if (a >= 0) assign_truth(c, a, i, r, k);
        if (s->iou_thresh < 1.f)
            for (int n = 0; n < s->total; ++n) {
                const int an = mask_index(s, n);
                if (an < 0 || n == best_n) continue;
                const dn_box anchor = {0, 0, s->all_anchors[2 * n] / s->net_w, s->all_anchors[2 * n + 1] / s->net_h};
                if (dn_box_measure_hd(anchor, shape, (dn_iou_kind)s->iou_thresh_kind, NULL) > s->iou_thresh)
                    assign_truth(c, an, i, r, k);
            }
    }
}

/* step 3 for prediction (a, i) (iou_thresh < 1): its box terms divided by the classes with a positive gap */
static inline DN_HD void yolo_divide_box_terms(image_ctx *c, int a, size_t i)
{
    const yolo_params *s = c->p;
    if (obj_gap(c, a, i) == 0.f) return;
    int positive = 0;
    if (cell_at(c, a, i)->classes_set)
        for (int k = 0; k < s->classes; ++k) positive += class_gap(c, a, i, k) > 0.f;
    if (!positive) return;
    cell_at(c, a, i)->box_loss /= positive;
    for (int q = 0; q < 4; ++q) c->delta[entry(c, a, q, i)] /= (float)positive;
}

#ifdef __cplusplus
extern "C" {
#endif
/* (yolo.c) the layer's options and host arrays, its grid and the network's input size */
void dn_yolo_params(const dn_layer *l, const dn_net *net, yolo_params *p);
/* (yolo.c) the checks a training pass with truths makes first: whole truth rows, no class map */
dn_status dn_yolo_loss_ready(const dn_layer *l, const dn_net *net);
#ifdef __cplusplus
}
#endif

#endif

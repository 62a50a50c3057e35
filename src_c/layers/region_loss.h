/* region_loss.h - the [region] training loss of region.c (its comment has
 * the maths), written once for the host and the device: step 1 and the terms
 * per anchor and cell, step 2 per image, over region_params and
 * region_image, which hold plain values and pointers valid where the code
 * runs. region.c runs the images one after the other; region.cu runs step 1
 * and the terms a thread per anchor and cell, step 2 a thread per image. */
#ifndef DN_REGION_LOSS_H
#define DN_REGION_LOSS_H

#include "box_math.h"
#include "hd.h"
#include "layer.h"
#include "../ops/layer_math.h"

#include <math.h>

#define REGION_FOCAL_ALPHA 0.5f

enum { RBOX_NONE, RBOX_PRIOR, RBOX_TRUTH };
enum { ROBJ_NONE, ROBJ_NEG, ROBJ_POS, ROBJ_RESCORE };

typedef struct {
    int box, box_truth; /* RBOX_TRUTH: truth row */
    int obj;
    int cls;            /* class of the class terms, -1: none */
} region_cell;


/* everything the loss reads besides the image: the layer's options, grid (w x h), anchors (where the code
 * runs), and whether the early prior box terms apply (fewer than 12800 images seen) */
typedef struct {
    int classes, coords, num, softmax;
    const float *anchors;
    float coord_scale, object_scale, noobject_scale, class_scale, thresh;
    int rescore, bias_match, focal_loss;
    int w, h, prior;
} region_params;

/* one image of a training pass */
typedef struct {
    const region_params *p;
    const float *in, *out;
    float *delta;
    const float *truth;
    int rows;
    size_t hw;
    region_cell *cells; /* the image's scratch: num * hw cells */
} region_image;

/* input and delta: value k of anchor a at cell i, NCHW */
static inline DN_HD size_t entry(const region_image *c, int a, int k, size_t i)
{
    return ((size_t)a * (c->p->coords + 1 + c->p->classes) + (size_t)k) * c->hw + i;
}

/* output: value k of anchor a at cell i, cell-major */
static inline DN_HD float out_at(const region_image *c, int a, int k, size_t i)
{
    return c->out[((i * c->p->num + (size_t)a) * (c->p->coords + 1 + c->p->classes)) + (size_t)k];
}

/* sigma(z) of the x (k=0) or y (k=1) input of anchor a at cell i */
static inline DN_HD float xy_at(const region_image *c, int a, int k, size_t i) { return dn_logistic1(c->in[entry(c, a, k, i)]); }

static inline DN_HD int truth_class(const region_image *c, int r) { return dn_truth_class_hd(c->truth + 5 * (size_t)r, c->p->classes); }

static inline DN_HD dn_box truth_box(const region_image *c, int r) { return dn_truth_box_hd(c->truth + 5 * (size_t)r); }

static inline DN_HD dn_box pred_box(const region_image *c, int a, size_t i)
{
    const region_params *l = c->p;
    dn_box b;
    b.x = ((float)(i % l->w) + xy_at(c, a, 0, i)) / l->w;
    b.y = ((float)(i / l->w) + xy_at(c, a, 1, i)) / l->h;
    b.w = expf(c->in[entry(c, a, 2, i)]) * c->p->anchors[2 * a] / l->w;
    b.h = expf(c->in[entry(c, a, 3, i)]) * c->p->anchors[2 * a + 1] / l->h;
    return b;
}

/* k/2 * ((sigma(z_x) - tx)^2 + (sigma(z_y) - ty)^2 + (z_w - tw)^2 + (z_h - th)^2) */
static inline DN_HD double box_term(region_image *c, int a, size_t i, const float t[4], float k)
{
    double loss = 0;
    for (int q = 0; q < 4; ++q) {
        const size_t e = entry(c, a, q, i);
        if (q < 2) {
            const float p = xy_at(c, a, q, i), d = p - t[q];
            c->delta[e] += k * d * p * (1.f - p);
            loss += 0.5 * k * (double)d * d;
        } else {
            const float d = c->in[e] - t[q];
            c->delta[e] += k * d;
            loss += 0.5 * k * (double)d * d;
        }
    }
    return loss;
}

/* 0.5*scale*(sigma(z_o) - t)^2; its gradient with respect to t in *dt */
static inline DN_HD double obj_term(region_image *c, int a, size_t i, float t, float scale, float *dt)
{
    const size_t e = entry(c, a, c->p->coords, i);
    const float p = out_at(c, a, c->p->coords, i), d = p - t;
    c->delta[e] += scale * d * p * (1.f - p);
    if (dt) *dt = -scale * d;
    return 0.5 * scale * (double)d * d;
}

static inline DN_HD double class_terms(region_image *c, int a, size_t i, int k)
{
    const region_params *s = c->p;
    const float scale = s->class_scale;
    const size_t e0 = entry(c, a, s->coords + 1, i);
    float *d = c->delta + e0;
    const float *z = c->in + e0; /* z and d: hw apart; p: side by side */
    const float *p = c->out + (i * s->num + (size_t)a) * (s->coords + 1 + s->classes) + s->coords + 1;
    const size_t hw = c->hw;
    if (!s->softmax) {
        double loss = 0;
        for (int n = 0; n < s->classes; ++n) {
            const float diff = z[n * hw] - (n == k ? 1.f : 0.f);
            d[n * hw] += scale * diff;
            loss += 0.5 * scale * (double)diff * diff;
        }
        return loss;
    }
    /* log p_k = z_k - logsumexp(z), computed stably */
    double largest = -INFINITY, sum = 0;
    for (int n = 0; n < s->classes; ++n) largest = fmax(largest, (double)z[n * hw]);
    for (int n = 0; n < s->classes; ++n) sum += exp(z[n * hw] - largest);
    const double lp = z[k * hw] - largest - log(sum), pt = exp(lp);
    if (!s->focal_loss) {
        for (int n = 0; n < s->classes; ++n) d[n * hw] += scale * (p[n] - (n == k ? 1.f : 0.f));
        return -scale * lp;
    }
    /* d(-(1-pt)^2 log pt)/dz_n = g(pt) (p_n - [n == k]), g = (1-pt)(1 - pt - 2 pt log pt) */
    const double g = (1 - pt) * (1 - pt - 2 * pt * lp);
    for (int n = 0; n < s->classes; ++n)
        d[n * hw] += (float)(scale * REGION_FOCAL_ALPHA * g * (p[n] - (n == k ? 1.f : 0.f)));
    return -scale * REGION_FOCAL_ALPHA * (1 - pt) * (1 - pt) * lp;
}

/* ---- an image's steps, as region.c's loss runs them ---- */
/* step 1 for anchor a at cell i: no objectness term when its box overlaps a truth by more than thresh */
static inline DN_HD void region_judge(region_image *c, int a, size_t i)
{
    const region_params *s = c->p;
    region_cell *cs = &c->cells[(size_t)a * c->hw + i];
    const dn_box pred = pred_box(c, a, i);
    float best = 0.f;
    for (int r = 0; r < c->rows; ++r) {
        if (truth_class(c, r) < 0) continue;
        best = fmaxf(best, dn_box_measure_hd(pred, truth_box(c, r), DN_IOU_PLAIN, NULL));
    }
    cs->obj = best > s->thresh ? ROBJ_NONE : ROBJ_NEG;
    cs->box = s->prior ? RBOX_PRIOR : RBOX_NONE;
    cs->cls = -1;
}

/* step 2: every truth to the anchor of its cell whose shape fits it best, in row order */
static inline DN_HD void region_assign_truths(region_image *c)
{
    const region_params *s = c->p;
    const region_params *l = c->p;
    for (int r = 0; r < c->rows; ++r) {
        const int k = truth_class(c, r);
        if (k < 0) continue;
        const dn_box tb = truth_box(c, r), shape = {0, 0, tb.w, tb.h};
        const size_t i = dn_box_cell_hd(tb, l->w, l->h);
        float best = 0.f;
        int best_n = 0;
        for (int a = 0; a < s->num; ++a) {
            dn_box p = pred_box(c, a, i);
            if (s->bias_match) {
                p.w = s->anchors[2 * a] / l->w;
                p.h = s->anchors[2 * a + 1] / l->h;
            }
            p.x = p.y = 0;
            const float m = dn_box_measure_hd(p, shape, DN_IOU_PLAIN, NULL);
            if (m > best) {
                best = m;
                best_n = a;
            }
        }
        region_cell *cs = &c->cells[(size_t)best_n * c->hw + i];
        cs->box = RBOX_TRUTH;
        cs->box_truth = r;
        cs->obj = s->rescore ? ROBJ_RESCORE : ROBJ_POS;
        cs->cls = k;
    }
}

/* the terms of anchor a at cell i as decided: their value, gradients into delta */
static inline DN_HD double region_cell_loss(region_image *c, int a, size_t i)
{
    const region_params *s = c->p;
    const region_params *l = c->p;
    const region_cell *cs = &c->cells[(size_t)a * c->hw + i];
    double loss = 0;
    if (cs->box == RBOX_PRIOR) {
        const float t[4] = {.5f, .5f, 0.f, 0.f};
        loss += box_term(c, a, i, t, .01f);
    } else if (cs->box == RBOX_TRUTH) {
        const dn_box tb = truth_box(c, cs->box_truth);
        const float t[4] = {tb.x * l->w - (float)(i % l->w), tb.y * l->h - (float)(i / l->w),
                            logf(tb.w * l->w / s->anchors[2 * a]), logf(tb.h * l->h / s->anchors[2 * a + 1])};
        loss += box_term(c, a, i, t, s->coord_scale);
    }
    if (cs->obj == ROBJ_NEG) {
        loss += obj_term(c, a, i, 0.f, s->noobject_scale, NULL);
    } else if (cs->obj == ROBJ_POS) {
        loss += obj_term(c, a, i, 1.f, s->object_scale, NULL);
    } else if (cs->obj == ROBJ_RESCORE) {
        float g[4], dt;
        const float m = dn_box_measure_hd(pred_box(c, a, i), truth_box(c, cs->box_truth), DN_IOU_PLAIN, g);
        loss += obj_term(c, a, i, m, s->object_scale, &dt);
        /* d(bx)/d(z_x) = sigma'/W, d(bw)/d(z_w) = bw */
        const dn_box p = pred_box(c, a, i);
        const float px = xy_at(c, a, 0, i), py = xy_at(c, a, 1, i);
        const float jac[4] = {px * (1.f - px) / l->w, py * (1.f - py) / l->h, p.w, p.h};
        for (int q = 0; q < 4; ++q) {
            const float v = dt * g[q] * jac[q];
            if (isfinite(v)) c->delta[entry(c, a, q, i)] += v;
        }
    }
    if (cs->cls >= 0) loss += class_terms(c, a, i, cs->cls);
    return loss;
}

#ifdef __cplusplus
extern "C" {
#endif
/* (region.c) the layer's options and host anchors, its grid, and whether the prior terms apply now */
void dn_region_params(const dn_layer *l, const dn_net *net, region_params *p);
/* (region.c) the checks a training pass with truths makes first: whole truth rows, options training takes */
dn_status dn_region_loss_ready(const dn_layer *l, const dn_net *net);
#ifdef __cplusplus
}
#endif

#endif

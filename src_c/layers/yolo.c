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
 *     confidence of class k = objectness * class_k, kept when both exceed thresh. */
#include "internal.h"

#include <math.h>
#include <stdlib.h>

typedef struct {
    int classes, n, new_coords;
    float scale_x_y;
    float *anchors; /* 2*n: the masked anchors, in order */
} yolo_state;

static dn_status yolo_make(dn_layer *l, dn_net *net)
{
    (void)net;
    yolo_state *s = dn_layer_priv(l, sizeof(yolo_state));
    if (!s) return DN_ERR_NOMEM;
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
    s->anchors = dn_calloc((size_t)2 * nmask, sizeof(float));
    if (!s->anchors) return dn_layer_fail(l, DN_ERR_NOMEM, "out of memory");
    for (int i = 0; i < nmask; ++i) {
        if (mask[i] < 0 || mask[i] >= num) return dn_layer_fail(l, DN_ERR_ARG, "mask entry %d out of range 0..%d", mask[i], num - 1);
        s->anchors[2 * i] = anchors[2 * mask[i]];
        s->anchors[2 * i + 1] = anchors[2 * mask[i] + 1];
    }
    return DN_OK;
}

static dn_status yolo_setup(dn_layer *l, dn_net *net)
{
    yolo_state *s = l->priv;
    if (l->c != s->n * (s->classes + 5))
        return dn_layer_fail(l, DN_ERR_SHAPE, "input has %d channels; %d anchors x (5 + %d classes) = %d needed", l->c,
                             s->n, s->classes, s->n * (s->classes + 5));
    return dn_setup_same_shape(l, net);
}

static dn_status yolo_forward(dn_layer *l, dn_net *net)
{
    yolo_state *s = l->priv;
    dn_forward_copy(l, net);
    const size_t hw = (size_t)l->h * l->w;
    const float a = s->scale_x_y, c = -0.5f * (s->scale_x_y - 1.f);
    for (int b = 0; b < l->batch; ++b)
        for (int n = 0; n < s->n; ++n) {
            float *p = l->output + (size_t)b * l->outputs + (size_t)n * (s->classes + 5) * hw;
            if (!s->new_coords) {
                for (size_t i = 0; i < 2 * hw; ++i) p[i] = dn_logistic(p[i]);
                for (size_t i = 4 * hw; i < (5 + (size_t)s->classes) * hw; ++i) p[i] = dn_logistic(p[i]);
            }
            for (size_t i = 0; i < 2 * hw; ++i) p[i] = p[i] * a + c;
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

static void yolo_destroy(dn_layer *l)
{
    yolo_state *s = l->priv;
    if (s) free(s->anchors);
    free(s);
}

const dn_layer_ops dn_yolo_ops = {
    .type = "yolo",
    .make = yolo_make,
    .setup = yolo_setup,
    .forward = yolo_forward,
    .destroy = yolo_destroy,
    .detections = yolo_detections,
};

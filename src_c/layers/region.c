/* region.c - [region] detection head (yolov2)
 *
 * Input and output [B][num*(coords+1+classes)][H][W]; for anchor a the channels
 * are x, y, w, h (coords=4), objectness, then class scores. Forward
 * (inference): output = input with the logistic on x, y and objectness, and,
 * with softmax=1, a softmax over the class channels at each cell. Decoding
 * (anchor sizes in grid cells):
 *     bx = (col + x) / W,  by = (row + y) / H,  bw = exp(w) * anchor_w / W,  bh likewise,
 *     confidence of class k = objectness * class_k, kept when it exceeds thresh. */
#include "internal.h"

#include <math.h>

typedef struct {
    int classes, coords, num, softmax;
    const float *anchors;
} region_state;

static dn_status region_make(dn_layer *l, dn_net *net)
{
    (void)net;
    region_state *s = dn_layer_priv(l, sizeof(region_state));
    if (!s) return DN_ERR_NOMEM;
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

static dn_status region_forward(dn_layer *l, dn_net *net)
{
    region_state *s = l->priv;
    dn_forward_copy(l, net);
    const size_t hw = (size_t)l->h * l->w;
    const int per = s->coords + 1 + s->classes;
    for (int b = 0; b < l->batch; ++b)
        for (int n = 0; n < s->num; ++n) {
            float *p = l->output + (size_t)b * l->outputs + (size_t)n * per * hw;
            for (size_t i = 0; i < 2 * hw; ++i) p[i] = dn_logistic(p[i]);
            float *obj = p + (size_t)s->coords * hw;
            for (size_t i = 0; i < hw; ++i) obj[i] = dn_logistic(obj[i]);
            if (s->softmax)
                for (size_t i = 0; i < hw; ++i) dn_softmax(obj + hw + i, s->classes, 1.f, (int)hw, obj + hw + i);
        }
    return DN_OK;
}

static dn_status region_detections(const dn_layer *l, const dn_net *net, int b, float thresh, dn_candidates *out)
{
    (void)net;
    const region_state *s = l->priv;
    const size_t hw = (size_t)l->h * l->w;
    const int per = s->coords + 1 + s->classes;
    for (int n = 0; n < s->num; ++n) {
        const float *p = l->output + (size_t)b * l->outputs + (size_t)n * per * hw;
        for (size_t i = 0; i < hw; ++i) {
            const float obj = p[(size_t)s->coords * hw + i];
            const int col = (int)(i % l->w), row = (int)(i / l->w);
            dn_detection d = {0};
            d.x = (col + p[i]) / l->w;
            d.y = (row + p[hw + i]) / l->h;
            d.w = expf(p[2 * hw + i]) * s->anchors[2 * n] / l->w;
            d.h = expf(p[3 * hw + i]) * s->anchors[2 * n + 1] / l->h;
            d.objectness = obj;
            d.batch_index = b;
            dn_status st = dn_push_box_classes(out, d, p + (size_t)(s->coords + 1) * hw + i, hw, s->classes, thresh);
            if (st) return st;
        }
    }
    return DN_OK;
}


const dn_layer_ops dn_region_ops = {
    .type = "region",
    .make = region_make,
    .setup = region_setup,
    .forward = region_forward,
    .detections = region_detections,
};

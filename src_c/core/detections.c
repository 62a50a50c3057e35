/* detections.c - boxes from the detection heads, mapped to image pixels, with
 * darknet's greedy per-class non-maximum suppression: within each class,
 * boxes in decreasing confidence each remove the later ones whose IoU with it
 * exceeds the threshold. */
#include "layer.h"
#include "cuda.h"

#include <stdlib.h>
#include <string.h>

dn_status dn_candidates_push(dn_candidates *c, dn_detection d)
{
    if (c->count == c->capacity) {
        int cap = c->capacity ? c->capacity * 2 : 256;
        dn_detection *items = realloc(c->items, (size_t)cap * sizeof(dn_detection));
        if (!items) return dn_fail(DN_ERR_NOMEM, "out of memory collecting detections");
        c->items = items;
        c->capacity = cap;
    }
    c->items[c->count++] = d;
    return DN_OK;
}

dn_status dn_push_box_classes(dn_candidates *out, dn_detection box, const float *class_prob, size_t stride,
                              int classes, float thresh)
{
    for (int k = 0; k < classes; ++k) {
        const float prob = box.objectness * class_prob[(size_t)k * stride];
        if (!(prob > thresh)) continue;
        box.class_id = k;
        box.confidence = prob;
        dn_status st = dn_candidates_push(out, box);
        if (st) return st;
    }
    return DN_OK;
}

static float iou(const dn_detection *a, const dn_detection *b)
{
    const dn_box ba = {a->x, a->y, a->w, a->h}, bb = {b->x, b->y, b->w, b->h};
    return dn_box_measure(ba, bb, DN_IOU_PLAIN, NULL);
}

static int by_class_then_confidence(const void *pa, const void *pb)
{
    const dn_detection *a = pa, *b = pb;
    if (a->class_id != b->class_id) return a->class_id < b->class_id ? -1 : 1;
    if (a->confidence != b->confidence) return a->confidence > b->confidence ? -1 : 1;
    return 0;
}

static int by_confidence(const void *pa, const void *pb)
{
    const dn_detection *a = pa, *b = pb;
    if (a->confidence != b->confidence) return a->confidence > b->confidence ? -1 : 1;
    if (a->class_id != b->class_id) return a->class_id < b->class_id ? -1 : 1;
    return 0;
}

dn_status dn_net_detections(dn_net *net, int batch_index, int img_w, int img_h, float thresh, float nms,
                            int letterbox, dn_detection *out, int capacity, int *found)
{
    if (!net) return dn_fail(DN_ERR_ARG, "network handle is NULL");
    if (!net->finalized) return dn_fail(DN_ERR_STATE, "the network is not finalized");
    if (batch_index < 0 || batch_index >= net->batch)
        return dn_fail(DN_ERR_ARG, "batch index %d out of range (batch %d)", batch_index, net->batch);
    if (img_w < 1 || img_h < 1) return dn_fail(DN_ERR_ARG, "bad image size %d x %d", img_w, img_h);
    if (capacity < 0 || (capacity > 0 && !out) || !found) return dn_fail(DN_ERR_ARG, "bad output buffer");
    dn_candidates *c = &net->candidates;
    c->count = 0;
    int heads = 0;
    for (int i = 0; i < net->nlayers; ++i) {
        dn_layer *l = net->layers[i];
        if (!l->ops->detections) continue;
        ++heads;
        /* on a device only the heads' outputs come to the host: the others are not read */
        dn_status s = net->backend->pull_output(net, l);
        if (!s) s = l->ops->detections(l, net, batch_index, thresh, c);
        if (s) return s;
    }
    if (!heads) return dn_fail(DN_ERR_STATE, "the network has no [yolo] or [region] layer");

    /* from network-input coordinates (0..1) to image pixels */
    int nw = net->w, nh = net->h;
    if (letterbox) dn_letterbox_dims(img_w, img_h, net->w, net->h, &nw, &nh);
    const float dx = (float)(net->w - nw) / 2.f / net->w, dy = (float)(net->h - nh) / 2.f / net->h;
    const float rw = (float)nw / net->w, rh = (float)nh / net->h;
    for (int i = 0; i < c->count; ++i) {
        dn_detection *d = &c->items[i];
        d->x = (d->x - dx) / rw * img_w;
        d->y = (d->y - dy) / rh * img_h;
        d->w = d->w / rw * img_w;
        d->h = d->h / rh * img_h;
    }

    int kept = c->count;
    if (nms > 0 && c->count > 1) {
        qsort(c->items, (size_t)c->count, sizeof(dn_detection), by_class_then_confidence);
        char *gone = dn_calloc((size_t)c->count, 1);
        if (!gone) return dn_fail(DN_ERR_NOMEM, "out of memory in NMS");
        for (int i = 0; i < c->count; ++i) {
            if (gone[i]) continue;
            for (int j = i + 1; j < c->count && c->items[j].class_id == c->items[i].class_id; ++j)
                if (!gone[j] && iou(&c->items[i], &c->items[j]) > nms) gone[j] = 1;
        }
        kept = 0;
        for (int i = 0; i < c->count; ++i)
            if (!gone[i]) c->items[kept++] = c->items[i];
        free(gone);
    }
    /* with no candidate the list is NULL: qsort and memcpy must not see it (undefined even for a count of 0) */
    if (kept > 1) qsort(c->items, (size_t)kept, sizeof(dn_detection), by_confidence);
    *found = kept;
    if (capacity > 0 && kept > 0)
        memcpy(out, c->items, sizeof(dn_detection) * (size_t)(kept < capacity ? kept : capacity));
    return DN_OK;
}

/* fcos.c - [fcos] anchor-free detection head (FCOS: Fully Convolutional
 * One-Stage object detection), pydarknet's own layer.
 *
 * Input and output [B][5 + classes][H][W]: one prediction per position, its
 * channels l, t, r, b (the distances from the position to the box sides, in
 * units of the level's stride, i.e. in cells), the centerness, then the class
 * scores. Forward: the distances through `distance` (exp: e^z, the default;
 * relu: max(z, 0)), the centerness and the classes through the logistic.
 * Position (col, row) sits at ((col + .5) / W, (row + .5) / H) of the network
 * input, so its box is x1 = (col + .5 - l) / W, x2 = (col + .5 + r) / W,
 * y1 = (row + .5 - t) / H, y2 = (row + .5 + b) / H. Decoding: score of class
 * k = sqrt(class_k * centerness), kept when above the threshold; the
 * detection's objectness is sqrt(centerness) (so that confidence =
 * objectness * sqrt(class_k), as the ONNX export's rows give it).
 *
 * Training (a training pass with truths; z is the input), per image:
 *  - Targets as FCOS assigns them: a position is a candidate of a truth box
 *    when it lies inside the box (with center_sampling = R > 0 also within R
 *    strides of the box centre on each axis) and the largest of its target
 *    distances, in network-input pixels, is within object_sizes = lo,hi of
 *    this level (hi = -1: no upper bound); among its candidates the box of
 *    smallest area wins. Truth rows as [yolo] reads them (dn_truth_class).
 *  - Classes: sigmoid focal loss over every position and class, target 1 for
 *    the assigned class of a positive position, else 0:
 *    a_t (1 - p_t)^gamma BCE(p, y) with p = sigma(z), p_t = y ? p : 1 - p,
 *    a_t = y ? alpha : 1 - alpha; gamma = 0 is alpha-weighted BCE.
 *  - Box, positives only: iou_normalizer * c* (1 - GIoU) (iou_loss=giou, the
 *    default) or c* (1 - IoU) (iou_loss=iou) of the predicted and target
 *    boxes (both around the position, so in l, t, r, b form), weighted by the
 *    centerness target c* = sqrt(min(l*, r*) / max(l*, r*) * min(t*, b*) /
 *    max(t*, b*)).
 *  - Centerness, positives only: BCE(sigma(z_c), c*).
 *  - FCOS's normalizers, over the mini-batch and per image (the loss of
 *    every head is a sum over the images): the class and centerness terms
 *    are divided by P / B, the box terms' weights c* by S / B, with P the
 *    positives and S the sum of c* over the B images of the mini-batch (an
 *    image alone: its own; none: the class terms divided by 1). Loss = the
 *    sum over the images, added to net->loss; l->delta = its exact gradient
 *    with respect to z (IoU's min and max take the derivative of the side
 *    that is smaller, larger).
 * Backward: input delta += l->delta; in a training pass without truths
 * (l->delta = dLoss/d(output)) the forward's Jacobian instead. */
#include "../ops/ops.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { DIST_EXP, DIST_RELU };

typedef struct {
    int classes, distance, giou;
    float lo, hi, center_sampling, alpha, gamma, iou_normalizer;
    int *assigned;  /* per position of one image: the truth row, or -1 */
    size_t assigned_cap;
} fcos_state;

static dn_status fcos_make(dn_layer *l, dn_net *net)
{
    (void)net;
    fcos_state *s = dn_layer_priv(l, sizeof(fcos_state));
    if (!s) return DN_ERR_NOMEM;
    if (dn_layer_owns(l, &s->assigned, NULL)) return DN_ERR_ARG;
    const char *distance, *iou;
    const float *sizes;
    int nsizes;
    dn_status st;
    if ((st = dn_attr_int(l, "classes", &s->classes)) || (st = dn_attr_string(l, "distance", &distance)) ||
        (st = dn_attr_string(l, "iou_loss", &iou)) || (st = dn_attr_floats(l, "object_sizes", &sizes, &nsizes)) ||
        (st = dn_attr_float(l, "center_sampling", &s->center_sampling)) ||
        (st = dn_attr_float(l, "alpha", &s->alpha)) || (st = dn_attr_float(l, "gamma", &s->gamma)) ||
        (st = dn_attr_float(l, "iou_normalizer", &s->iou_normalizer)))
        return st;
    if (s->classes < 1) return dn_layer_fail(l, DN_ERR_ARG, "classes must be at least 1");
    if (!strcmp(distance, "exp")) s->distance = DIST_EXP;
    else if (!strcmp(distance, "relu")) s->distance = DIST_RELU;
    else return dn_layer_fail(l, DN_ERR_ARG, "unknown distance '%s' (exp or relu)", distance);
    if (!strcmp(iou, "giou")) s->giou = 1;
    else if (!strcmp(iou, "iou")) s->giou = 0;
    else return dn_layer_fail(l, DN_ERR_ARG, "unknown iou_loss '%s' (giou or iou)", iou);
    if (nsizes != 2 || !(sizes[0] >= 0.f) || !(sizes[1] < 0.f || sizes[1] > sizes[0]))
        return dn_layer_fail(l, DN_ERR_ARG, "object_sizes must be lo,hi with 0 <= lo < hi (hi = -1: no bound)");
    s->lo = sizes[0];
    s->hi = sizes[1] < 0.f ? INFINITY : sizes[1];
    if (!(s->center_sampling >= 0.f)) return dn_layer_fail(l, DN_ERR_ARG, "center_sampling must be >= 0");
    if (!(s->alpha >= 0.f && s->alpha <= 1.f) || !(s->gamma >= 0.f))
        return dn_layer_fail(l, DN_ERR_ARG, "alpha must be in 0..1 and gamma >= 0");
    l->is_loss = 1;
    return DN_OK;
}

static dn_status fcos_setup(dn_layer *l, dn_net *net)
{
    const fcos_state *s = l->priv;
    if (l->c != s->classes + 5)
        return dn_layer_fail(l, DN_ERR_SHAPE,
                             "input has %d channels; 4 distances + centerness + %d classes = %d needed", l->c,
                             s->classes, s->classes + 5);
    return dn_setup_same_shape(l, net);
}

static float distance_of(const fcos_state *s, float z)
{
    return s->distance == DIST_EXP ? expf(z) : (z > 0.f ? z : 0.f);
}

/* d(distance)/dz from the input z and the output d */
static float distance_slope(const fcos_state *s, float z, float d)
{
    return s->distance == DIST_EXP ? d : (z > 0.f ? 1.f : 0.f);
}

static void activate(const fcos_state *s, const float *in, float *out, size_t hw)
{
    for (size_t i = 0; i < 4 * hw; ++i) out[i] = distance_of(s, in[i]);
    for (size_t i = 4 * hw; i < (size_t)(5 + s->classes) * hw; ++i) out[i] = dn_logistic(in[i]);
}

/* ---------------------------------------------------------------- the loss */

static double softplus(double z) { return (z > 0 ? z : 0) + log1p(exp(-fabs(z))); }

/* focal loss of logit z with target y (0 or 1), and its derivative */
static double focal(const fcos_state *s, float z, int y, float *g)
{
    const double p = 1.0 / (1.0 + exp(-(double)z)), a = y ? s->alpha : 1.0 - s->alpha, gm = s->gamma;
    if (y) { /* -a (1-p)^gm log p */
        const double q = 1.0 - p, w = gm > 0 ? pow(q, gm) : 1.0, logp = -softplus(-z);
        *g = (float)(a * w * (gm * p * logp - q));
        return -a * w * logp;
    }
    const double w = gm > 0 ? pow(p, gm) : 1.0, log1mp = -softplus(z);
    *g = (float)(a * w * (p - gm * (1.0 - p) * log1mp));
    return -a * w * log1mp;
}

/* 1 - GIoU (or 1 - IoU) of boxes around one point, predicted d[4] and target t[4] (l, t, r, b), and the
 * gradient with respect to d */
static double box_loss(int giou, const float d[4], const float t[4], double g[4])
{
    const double l = d[0], tp = d[1], r = d[2], b = d[3];
    const double P = (l + r) * (tp + b), G = ((double)t[0] + t[2]) * ((double)t[1] + t[3]);
    const double wi = fmin(l, t[0]) + fmin(r, t[2]), hi = fmin(tp, t[1]) + fmin(b, t[3]);
    const double I = wi * hi, U = P + G - I;
    const double dI[4] = {(l < t[0]) * hi, (tp < t[1]) * wi, (r < t[2]) * hi, (b < t[3]) * wi};
    const double dP[4] = {tp + b, l + r, tp + b, l + r};
    double v = I / U;
    for (int k = 0; k < 4; ++k) g[k] = -(dI[k] * U - I * (dP[k] - dI[k])) / (U * U);
    if (giou) {
        const double wc = fmax(l, t[0]) + fmax(r, t[2]), hc = fmax(tp, t[1]) + fmax(b, t[3]), C = wc * hc;
        const double dC[4] = {(l >= t[0]) * hc, (tp >= t[1]) * wc, (r >= t[2]) * hc, (b >= t[3]) * wc};
        v += U / C - 1.0;
        for (int k = 0; k < 4; ++k) g[k] -= ((dP[k] - dI[k]) * C - U * dC[k]) / (C * C);
    }
    return 1.0 - v;
}

/* the target distances (cells) of truth row r from position (col, row); 0 when the position is not a
 * candidate of that truth at this level */
static int target_of(const fcos_state *s, const dn_layer *l, const dn_net *net, const float *row5, int col, int row,
                     float t[4])
{
    const float W = (float)l->w, H = (float)l->h, px = col + .5f, py = row + .5f;
    const float x1 = (row5[0] - row5[2] / 2) * W, x2 = (row5[0] + row5[2] / 2) * W;
    const float y1 = (row5[1] - row5[3] / 2) * H, y2 = (row5[1] + row5[3] / 2) * H;
    t[0] = px - x1;
    t[1] = py - y1;
    t[2] = x2 - px;
    t[3] = y2 - py;
    if (!(t[0] > 0.f && t[1] > 0.f && t[2] > 0.f && t[3] > 0.f)) return 0;
    if (s->center_sampling > 0.f &&
        (fabsf(px - row5[0] * W) >= s->center_sampling || fabsf(py - row5[1] * H) >= s->center_sampling))
        return 0;
    const float sx = (float)net->w / W, sy = (float)net->h / H;
    const float far = fmaxf(fmaxf(t[0] * sx, t[2] * sx), fmaxf(t[1] * sy, t[3] * sy));
    return far >= s->lo && far <= s->hi;
}

static double centerness_target(const float t[4])
{
    return sqrt((double)fminf(t[0], t[2]) / fmaxf(t[0], t[2]) * fminf(t[1], t[3]) / fmaxf(t[1], t[3]));
}

/* the truth row each position of one image is assigned to (-1: none); adds the positives and their
 * centerness targets to *npos, *ctr_sum */
static void assign(const fcos_state *s, const dn_layer *l, const dn_net *net, const float *truth, int rows,
                   int *assigned, int *npos, double *ctr_sum)
{
    const size_t hw = (size_t)l->h * l->w;
    for (size_t i = 0; i < hw; ++i) {
        const int col = (int)(i % l->w), row = (int)(i / l->w);
        float best = INFINITY, t[4];
        assigned[i] = -1;
        for (int r = 0; r < rows; ++r) {
            const float *row5 = truth + 5 * (size_t)r;
            if (dn_truth_class(row5, s->classes) < 0 || !target_of(s, l, net, row5, col, row, t)) continue;
            const float area = row5[2] * row5[3];
            if (area < best) {
                best = area;
                assigned[i] = r;
            }
        }
        if (assigned[i] < 0) continue;
        ++*npos;
        target_of(s, l, net, truth + 5 * (size_t)assigned[i], col, row, t);
        *ctr_sum += centerness_target(t);
    }
}

/* one image's terms: class and centerness terms times per_pos, box terms times iou_normalizer * c* / ctr_sum */
static double image_loss(const fcos_state *s, const dn_layer *l, const dn_net *net, const float *in,
                         const float *out, float *delta, const float *truth, const int *assigned, double per_pos,
                         double ctr_sum)
{
    const size_t hw = (size_t)l->h * l->w;
    double cls = 0, ctr = 0, box = 0;
    memset(delta, 0, l->outputs * sizeof(float));
    for (size_t i = 0; i < hw; ++i) {
        const int r = assigned[i], k = r < 0 ? -1 : dn_truth_class(truth + 5 * (size_t)r, s->classes);
        for (int c = 0; c < s->classes; ++c) {
            const size_t e = (size_t)(5 + c) * hw + i;
            float g;
            cls += focal(s, in[e], c == k, &g);
            delta[e] = (float)(g * per_pos);
        }
        if (r < 0) continue;
        const int col = (int)(i % l->w), row = (int)(i / l->w);
        float t[4], d[4];
        target_of(s, l, net, truth + 5 * (size_t)r, col, row, t);
        const double cstar = centerness_target(t);
        const size_t ec = 4 * hw + i;
        ctr += softplus(in[ec]) - cstar * in[ec];
        delta[ec] = (float)((dn_logistic(in[ec]) - cstar) * per_pos);
        for (int q = 0; q < 4; ++q) d[q] = out[(size_t)q * hw + i];
        double g[4];
        const double w = s->iou_normalizer * cstar / ctr_sum;
        box += w * box_loss(s->giou, d, t, g);
        for (int q = 0; q < 4; ++q) {
            const size_t e = (size_t)q * hw + i;
            delta[e] = (float)(w * g[q] * distance_slope(s, in[e], out[e]));
        }
    }
    return (cls + ctr) * per_pos + box;
}

static dn_status fcos_loss(dn_layer *l, dn_net *net)
{
    fcos_state *s = l->priv;
    if (net->truth_stride % 5)
        return dn_layer_fail(l, DN_ERR_SHAPE, "%d truth values per image are not rows of 5 (x, y, w, h, class)",
                             net->truth_stride);
    const size_t hw = (size_t)l->h * l->w, n = hw * (size_t)l->batch;
    if (!s->assigned || s->assigned_cap < n) {
        int *p = realloc(s->assigned, n * sizeof(int));
        if (!p) return dn_layer_fail(l, DN_ERR_NOMEM, "out of memory for the loss scratch");
        s->assigned = p;
        s->assigned_cap = n;
    }
    const int rows = net->truth_stride / 5;
    int npos = 0;
    double ctr_sum = 0;
    for (int b = 0; b < l->batch; ++b)
        assign(s, l, net, net->truth + (size_t)b * net->truth_stride, rows, s->assigned + (size_t)b * hw, &npos,
               &ctr_sum);
    /* FCOS's normalizers over the mini-batch, per image (the loss is a sum over images, as every head's) */
    const double per_pos = (double)l->batch / (npos > 0 ? npos : l->batch), ctr_per_image = ctr_sum / l->batch;
    const float *in = dn_layer_input(net, l);
    double total = 0;
    for (int b = 0; b < l->batch; ++b) {
        const size_t o = (size_t)b * l->outputs;
        total += image_loss(s, l, net, in + o, l->output + o, l->delta + o, net->truth + (size_t)b * net->truth_stride,
                            s->assigned + (size_t)b * hw, per_pos, ctr_per_image);
    }
    net->loss += total;
    return DN_OK;
}

/* ---------------------------------------------------------------- passes */

static dn_status fcos_forward(dn_layer *l, dn_net *net)
{
    const fcos_state *s = l->priv;
    const float *in = dn_layer_input(net, l);
    const size_t hw = (size_t)l->h * l->w;
    for (int b = 0; b < l->batch; ++b) activate(s, in + (size_t)b * l->outputs, l->output + (size_t)b * l->outputs, hw);
    return dn_head_train_loss(l, net, fcos_loss);
}

static dn_status fcos_backward(dn_layer *l, dn_net *net)
{
    const fcos_state *s = l->priv;
    float *d = dn_layer_input_delta(net, l);
    if (!d) return DN_OK;
    if (l->has_loss) {
        dn_head_pass_delta(l, d);
        return DN_OK;
    }
    const float *in = dn_layer_input(net, l);
    const size_t hw = (size_t)l->h * l->w, total = (size_t)l->batch * l->outputs;
    for (size_t e = 0; e < total; ++e) {
        const float o = l->output[e];
        d[e] += l->delta[e] * ((e % l->outputs) < 4 * hw ? distance_slope(s, in[e], o) : o * (1.f - o));
    }
    return DN_OK;
}

static dn_status fcos_detections(const dn_layer *l, const dn_net *net, int b, float thresh, dn_candidates *out)
{
    (void)net;
    const fcos_state *s = l->priv;
    const size_t hw = (size_t)l->h * l->w;
    const float *p = l->output + (size_t)b * l->outputs;
    for (size_t i = 0; i < hw; ++i) {
        const float ctr = p[4 * hw + i];
        const int col = (int)(i % l->w), row = (int)(i / l->w);
        const float x1 = col + .5f - p[i], y1 = row + .5f - p[hw + i];
        const float x2 = col + .5f + p[2 * hw + i], y2 = row + .5f + p[3 * hw + i];
        dn_detection d = {0};
        d.x = (x1 + x2) / 2 / l->w;
        d.y = (y1 + y2) / 2 / l->h;
        d.w = (x2 - x1) / l->w;
        d.h = (y2 - y1) / l->h;
        d.objectness = sqrtf(ctr);
        d.batch_index = b;
        for (int k = 0; k < s->classes; ++k) {
            const float score = sqrtf(p[(size_t)(5 + k) * hw + i] * ctr);
            if (!(score > thresh)) continue;
            d.class_id = k;
            d.confidence = score;
            dn_status st = dn_candidates_push(out, d);
            if (st) return st;
        }
    }
    return DN_OK;
}

const dn_layer_ops dn_fcos_ops = {
    .type = "fcos",
    .make = fcos_make,
    .setup = fcos_setup,
    .forward = fcos_forward,
    .backward = fcos_backward,
    .detections = fcos_detections,
};

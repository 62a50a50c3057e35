/* layer_math.h - small formulas of the layers, one value or one group at a
 * time, shared by the CPU passes (layers/<type>.c, ops/blas.c) and their
 * device twins (layers/<type>.cu) so both compute the same arithmetic:
 * the softmax of one group and its Jacobian, a [region] cell, reorg's index map, the
 * sampled pairs of a shortcut between layers of different sizes, and the
 * normalization of a weighted shortcut's weights with its gradient. */
#ifndef DN_LAYER_MATH_H
#define DN_LAYER_MATH_H

#include "hd.h"

#include <math.h>
#include <stddef.h>

/* 1 / (1 + e^-x) (ops/blas.c's dn_logistic; the vectorized dn_logistic_vec is about 2 ulp away) */
static inline DN_HD float dn_logistic1(float x) { return 1.f / (1.f + expf(-x)); }

/* out = softmax(in / temp) over n values `stride` apart (in and out may be the same). */
static inline DN_HD void dn_softmax_group(const float *in, int n, float temp, size_t stride, float *out)
{
    float largest = -INFINITY, sum = 0.f;
    for (int i = 0; i < n; ++i)
        if (in[i * stride] > largest) largest = in[i * stride];
    for (int i = 0; i < n; ++i) {
        const float e = expf((in[i * stride] - largest) / temp);
        sum += e;
        out[i * stride] = e;
    }
    for (int i = 0; i < n; ++i) out[i * stride] /= sum;
}

/* d += the softmax Jacobian applied to g, for p = softmax(x / temp) of n values
 * `stride` apart (d's values `dstride` apart): d_j += p_j (g_j - sum_i g_i p_i) / temp. */
static inline DN_HD void dn_softmax_group_backward_to(const float *p, const float *g, int n, float temp, size_t stride,
                                                      float *d, size_t dstride)
{
    double dot = 0;
    for (int j = 0; j < n; ++j) dot += (double)g[j * stride] * p[j * stride];
    for (int j = 0; j < n; ++j) d[j * dstride] += (float)(p[j * stride] * (g[j * stride] - dot) / temp);
}

static inline DN_HD void dn_softmax_group_backward(const float *p, const float *g, int n, float temp, size_t stride,
                                                   float *d)
{
    dn_softmax_group_backward_to(p, g, n, temp, stride, d, stride);
}

/* [softmax]'s loss on one group of n values (layers/softmax.c has the maths): x the inputs, t the truths, p the
 * softmax of x / T; the cross-entropy (focal loss with gamma > 0, weight alpha), its gradient with respect to x
 * into g; returns the group's loss. The host and the device run it. */
static inline DN_HD double dn_softmax_group_loss(const float *x, const float *t, const float *p, size_t n, double T,
                                                 float gamma, float alpha, float *g)
{
    /* log p_j = (x_j - max)/T - log sum_i exp((x_i - max)/T) */
    double largest = -INFINITY, sum = 0, tsum = 0, loss = 0;
    for (size_t j = 0; j < n; ++j) largest = fmax(largest, (double)x[j]);
    for (size_t j = 0; j < n; ++j) sum += exp((x[j] - largest) / T);
    const double lse = log(sum);
    if (gamma > 0.f) {   /* focal loss: a_j = p_j dL/dp_j, then (a_k - p_k sum a) / T */
        const double ga = gamma, al = alpha;
        double asum = 0;
        for (size_t j = 0; j < n; ++j) {
            if (t[j] == 0.f) continue;
            const double logp = (x[j] - largest) / T - lse, pj = exp(logp), q = 1.0 - pj;
            loss -= al * t[j] * pow(q, ga) * logp;
            asum += al * t[j] * (ga * pj * pow(q, ga - 1.0) * logp - pow(q, ga));
        }
        for (size_t j = 0; j < n; ++j) {
            double aj = 0;
            if (t[j] != 0.f) {
                const double logp = (x[j] - largest) / T - lse, pj = exp(logp), q = 1.0 - pj;
                aj = al * t[j] * (ga * pj * pow(q, ga - 1.0) * logp - pow(q, ga));
            }
            g[j] = (float)((aj - p[j] * asum) / T);
        }
        return loss;
    }
    for (size_t j = 0; j < n; ++j) {
        tsum += t[j];
        if (t[j] != 0.f) loss -= t[j] * ((x[j] - largest) / T - lse);
    }
    for (size_t j = 0; j < n; ++j) g[j] = (float)((p[j] * tsum - t[j]) / T);
    return loss;
}

/* darknet's [region] head, one cell and anchor at a time (layers/region.c):
 * the group's `per` input values sit hw apart (the input is NCHW), its output
 * values side by side (darknet's cell-major [h*w][num][per] layout). x, y, w, h
 * stay raw, objectness (entry `coords`) gets the logistic, the classes the
 * softmax when `softmax` is set. */

static inline DN_HD void dn_region_cell_forward(const float *in, size_t hw, int per, int coords, int softmax,
                                                float *out)
{
    for (int k = 0; k < per; ++k) out[k] = in[(size_t)k * hw];
    out[coords] = dn_logistic1(out[coords]);
    if (softmax) dn_softmax_group(out + coords + 1, per - coords - 1, 1.f, 1, out + coords + 1);
}

/* its backward: d (input layout, hw apart) += the forward's Jacobian applied
 * to g (output layout); y is the cell's output */
static inline DN_HD void dn_region_cell_backward(const float *y, const float *g, size_t hw, int per, int coords,
                                                 int softmax, float *d)
{
    for (int k = 0; k < per; ++k) {
        if (k == coords) d[(size_t)k * hw] += g[k] * y[k] * (1.f - y[k]);
        else if (k < coords || !softmax) d[(size_t)k * hw] += g[k];
    }
    if (softmax)
        dn_softmax_group_backward_to(y + coords + 1, g + coords + 1, per - coords - 1, 1.f, 1,
                                     d + (size_t)(coords + 1) * hw, hw);
}

/* darknet's reorg map for position a of a (c, h, w) index space per image
 * (a counts over the batch too): the position z it pairs with in a tensor of
 * c/(s*s) channels and (h*s) x (w*s) pixels (see layers/reorg.c). */
static inline DN_HD size_t dn_reorg_pair(size_t a, int w, int h, int c, int s)
{
    const int ic = c / (s * s);
    const size_t i = a % w, j = a / w % h, k = a / ((size_t)w * h) % c, b = a / ((size_t)w * h * c);
    const int c2 = (int)(k % ic), off = (int)(k / ic);
    const size_t w2 = i * s + off % s, h2 = j * s + off / s;
    return w2 + (size_t)w * s * (h2 + (size_t)h * s * (c2 + (size_t)ic * b));
}

/* The shape of a shortcut from layer p (pc, ph, pw) onto the output (c, h, w)
 * of another size: pairs t = 0 .. batch*minc*minh*minw - 1, each the output
 * value *o and the source value *a it adds (see layers/shortcut.c). */
typedef struct dn_sample_shape {
    int c, h, w, pc, ph, pw;
} dn_sample_shape;

static inline DN_HD size_t dn_sample_count(const dn_sample_shape *q, int batch)
{
    const int minw = q->pw < q->w ? q->pw : q->w, minh = q->ph < q->h ? q->ph : q->h, minc = q->pc < q->c ? q->pc : q->c;
    return (size_t)batch * minc * minh * minw;
}

static inline DN_HD void dn_sample_pair(const dn_sample_shape *q, size_t t, size_t *o, size_t *a)
{
    int stride = q->pw / q->w, sample = q->w / q->pw;
    if (stride < 1) stride = 1;
    if (sample < 1) sample = 1;
    const int minw = q->pw < q->w ? q->pw : q->w, minh = q->ph < q->h ? q->ph : q->h, minc = q->pc < q->c ? q->pc : q->c;
    const size_t i = t % minw, j = t / minw % minh, k = t / ((size_t)minw * minh) % minc;
    const size_t b = t / ((size_t)minw * minh * minc);
    *o = i * sample + (size_t)q->w * (j * sample + (size_t)q->h * (k + (size_t)q->c * b));
    *a = i * stride + (size_t)q->pw * (j * stride + (size_t)q->ph * (k + (size_t)q->pc * b));
}

/* A weighted shortcut's weight normalization across its terms. */
enum { DN_WNORM_NONE, DN_WNORM_RELU, DN_WNORM_SOFTMAX };
#define DN_WNORM_EPS .0001f

/* The normalized weights w[t] = weights[wi + t*step] of the `terms` terms:
 * none: as they are; relu: relu(w)/S; softmax: exp(w - max)/S, with
 * S = eps + the sum of the numerators. Returns S (1 without normalization)
 * and in *imax the term of the largest weight. */
static inline DN_HD float dn_shortcut_weights(const float *weights, int terms, int step, int wi, int normalization,
                                              float *w, int *imax)
{
    float sum = 1.f, mx = -INFINITY;
    *imax = 0;
    for (int t = 0; t < terms; ++t) {
        w[t] = weights[wi + t * step];
        if (w[t] > mx) {
            mx = w[t];
            *imax = t;
        }
    }
    if (normalization != DN_WNORM_NONE) {
        sum = DN_WNORM_EPS;
        for (int t = 0; t < terms; ++t) sum += normalization == DN_WNORM_RELU ? (w[t] > 0 ? w[t] : 0.f) : expf(w[t] - mx);
        for (int t = 0; t < terms; ++t)
            w[t] = (normalization == DN_WNORM_RELU ? (w[t] > 0 ? w[t] : 0.f) : expf(w[t] - mx)) / sum;
    }
    return sum;
}

/* The weights' gradient of one weight group (gw[t*step] for term t) given
 * G[t] = the sum of g * term_t over the group, the normalized weights w, S
 * and imax of dn_shortcut_weights and the raw weights (weights[wi + t*step]):
 *   none: G_t; relu: [w_t > 0] (G_t - D) / S; softmax: w'_t (G_t - D), and
 *   -eps D / S to the largest weight; D = sum_t G_t w'_t. */
static inline DN_HD void dn_shortcut_weight_grad(const double *G, const float *w, const float *weights, float S,
                                                 int imax, int terms, int step, int wi, int normalization, float *gw)
{
    if (normalization == DN_WNORM_NONE) {
        for (int t = 0; t < terms; ++t) gw[t * step] += (float)G[t];
        return;
    }
    double dot = 0;
    for (int t = 0; t < terms; ++t) dot += G[t] * w[t];
    for (int t = 0; t < terms; ++t) {
        if (normalization == DN_WNORM_RELU) gw[t * step] += weights[wi + t * step] > 0 ? (float)((G[t] - dot) / S) : 0.f;
        else gw[t * step] += (float)(w[t] * (G[t] - dot));
    }
    if (normalization == DN_WNORM_SOFTMAX) gw[imax * step] += (float)(-DN_WNORM_EPS * dot / S);
}

/* [reduction] (layers/reduction.c): the operation's number, -1 for an unknown name; one output value from its
 * run of n inputs (summed in double); the gradient of one input value given its output's delta. */
enum { DN_REDUCE_SUM, DN_REDUCE_ASUM, DN_REDUCE_SUMSQ, DN_REDUCE_MEAN };

static inline int dn_reduction_op(const char *name)
{
    static const char *const names[] = {"sum", "asum", "sumsq", "mean"};
    for (int k = 0; k < 4; ++k) {
        const char *a = names[k], *b = name;
        while (*a && *a == *b) ++a, ++b;
        if (!*a && !*b) return k;
    }
    return -1;
}

static inline DN_HD float dn_reduce_run(const float *x, size_t n, int op, float coeff)
{
    double s = 0;
    for (size_t i = 0; i < n; ++i) {
        const double v = x[i];
        s += op == DN_REDUCE_ASUM ? fabs(v) : op == DN_REDUCE_SUMSQ ? v * v : v;
    }
    if (op == DN_REDUCE_MEAN) s /= (double)n;
    return (float)(s * coeff);
}

static inline DN_HD float dn_reduce_grad(float x, float delta, size_t n, int op, float coeff)
{
    const float g = coeff * delta;
    switch (op) {
    case DN_REDUCE_ASUM: return x > 0.f ? g : (x < 0.f ? -g : 0.f);
    case DN_REDUCE_SUMSQ: return 2.f * x * g;
    case DN_REDUCE_MEAN: return g / (float)n;
    default: return g;
    }
}

/* torchvision's bilinear sampling (deform_conv2d) of an H x W plane at (h, w): zero when (h, w) is at least
 * one pixel outside, else the four corners' weights, a corner outside counting zero (idx -1). dh, dw: the
 * weights' derivatives with respect to h and w. */
typedef struct {
    int idx[4];
    float wt[4], dh[4], dw[4];
} dn_bilinear_pts;

static inline DN_HD dn_bilinear_pts dn_bilinear_points(int H, int W, float h, float w)
{
    dn_bilinear_pts p;
    for (int k = 0; k < 4; ++k) p.idx[k] = -1, p.wt[k] = p.dh[k] = p.dw[k] = 0.f;
    if (!(h > -1.f && h < (float)H && w > -1.f && w < (float)W)) return p;
    const int h0 = (int)floorf(h), w0 = (int)floorf(w), h1 = h0 + 1, w1 = w0 + 1;
    const float lh = h - (float)h0, lw = w - (float)w0, hh = 1.f - lh, hw = 1.f - lw;
    const int ys[4] = {h0, h0, h1, h1}, xs[4] = {w0, w1, w0, w1};
    const float wt[4] = {hh * hw, hh * lw, lh * hw, lh * lw};
    const float dh[4] = {-hw, -lw, hw, lw}, dw[4] = {-hh, hh, -lh, lh};
    for (int k = 0; k < 4; ++k) {
        if (ys[k] < 0 || ys[k] >= H || xs[k] < 0 || xs[k] >= W) continue;
        p.idx[k] = ys[k] * W + xs[k];
        p.wt[k] = wt[k];
        p.dh[k] = dh[k];
        p.dw[k] = dw[k];
    }
    return p;
}

/* Where kernel tap (ky, kx) of output position (oy, ox) samples a [deformable] layer's input, before the offset */
typedef struct {
    int k, stride_y, stride_x, pad, dilation, groups, modulated; /* groups: deformable groups */
} dn_deform_shape;

#endif /* DN_LAYER_MATH_H */

/* groupnorm.c - [groupnorm] (GroupNorm, Wu and He 2018): per image and group
 * of C/G consecutive channels, the group's values (its channels x positions,
 * n of them) normalized with their mean and biased variance,
 *     xhat = (x - mean) / sqrt(var + eps),   var = sum (x - mean)^2 / n,
 * then per channel y = gamma * xhat + beta. groups=G must divide C; eps
 * (default .00001). Training and inference compute the same (no rolling
 * statistics). Parameters in weights-file order: beta as "biases" (C values),
 * then gamma as "scales" (C values), both trained without decay.
 * Backward, per group with g = gamma * delta:
 *     dx = (g - mean(g) - xhat * mean(g * xhat)) / sqrt(var + eps),
 *     dgamma[c] += sum delta * xhat, dbeta[c] += sum delta.
 * Sums in double; each forward pass keeps every group's mean and 1/sqrt(var +
 * eps) for the backward pass. */
#include "../ops/ops.h"
#include "cuda.h"

#include <math.h>

typedef struct {
    int groups;
    float eps;
    float *beta, *gamma;
    float *stats; /* per image and group: mean, 1/sqrt(var + eps) */
    size_t stats_cap;
    int trained;
} groupnorm_state;

static dn_status groupnorm_make(dn_layer *l, dn_net *net)
{
    (void)net;
    groupnorm_state *s = dn_layer_priv(l, sizeof(groupnorm_state));
    if (!s) return DN_ERR_NOMEM;
    if (dn_layer_owns(l, &s->stats, NULL)) return DN_ERR_ARG;
    dn_status st;
    if ((st = dn_attr_int(l, "groups", &s->groups)) || (st = dn_attr_float(l, "eps", &s->eps))) return st;
    if (s->groups < 1 || l->c % s->groups)
        return dn_layer_fail(l, DN_ERR_ARG, "groups=%d must divide the input's %d channels", s->groups, l->c);
    if (!(s->eps > 0.f)) return dn_layer_fail(l, DN_ERR_ARG, "eps must be positive, got %g", s->eps);
    const size_t n = (size_t)l->c;
    if ((st = dn_layer_add_param_flags(l, "biases", n, DN_PARAM_TRAIN, &s->beta)) ||
        (st = dn_layer_add_param_flags(l, "scales", n, DN_PARAM_TRAIN, &s->gamma)))
        return st;
    for (size_t i = 0; i < n; ++i) s->gamma[i] = 1.f;
    return DN_OK;
}

static dn_status groupnorm_setup(dn_layer *l, dn_net *net)
{
    groupnorm_state *s = l->priv;
    if (l->c % s->groups || (size_t)l->c != dn_layer_find_param(l, "scales")->count)
        return dn_layer_fail(l, DN_ERR_SHAPE, "input has %d channels, the layer was built for %zu in %d groups", l->c,
                             dn_layer_find_param(l, "scales")->count, s->groups);
    s->trained = 0;
    return dn_setup_same_shape(l, net);
}

static dn_status groupnorm_forward(dn_layer *l, dn_net *net)
{
    groupnorm_state *s = l->priv;
    const float *in = dn_layer_input(net, l);
    const int G = s->groups, cg = l->c / G;
    const size_t hw = (size_t)l->h * l->w, n = (size_t)cg * hw;
    dn_status st = dn_ensure_floats(&s->stats, &s->stats_cap, (size_t)2 * l->batch * G);
    if (st) return st;
    for (int b = 0; b < l->batch; ++b)
        for (int g = 0; g < G; ++g) {
            const size_t off = ((size_t)b * l->c + (size_t)g * cg) * hw;
            double sum = 0, sq = 0;
            for (size_t i = 0; i < n; ++i) sum += in[off + i];
            const float m = (float)(sum / (double)n);
            for (size_t i = 0; i < n; ++i) sq += ((double)in[off + i] - m) * ((double)in[off + i] - m);
            const float inv = 1.f / sqrtf((float)(sq / (double)n) + s->eps);
            s->stats[2 * ((size_t)b * G + g)] = m;
            s->stats[2 * ((size_t)b * G + g) + 1] = inv;
            for (size_t i = 0; i < n; ++i) {
                const int c = g * cg + (int)(i / hw);
                l->output[off + i] = s->gamma[c] * ((in[off + i] - m) * inv) + s->beta[c];
            }
        }
    s->trained = 1;
    return DN_OK;
}

static dn_status groupnorm_backward(dn_layer *l, dn_net *net)
{
    groupnorm_state *s = l->priv;
    if (!s->trained) return dn_layer_fail(l, DN_ERR_STATE, "backward needs a forward pass first");
    const float *in = dn_layer_input(net, l);
    float *d = dn_layer_input_delta(net, l);
    dn_param *gp = dn_layer_find_param(l, "scales"), *bp = dn_layer_find_param(l, "biases");
    const int G = s->groups, cg = l->c / G;
    const size_t hw = (size_t)l->h * l->w, n = (size_t)cg * hw;
    for (int b = 0; b < l->batch; ++b)
        for (int g = 0; g < G; ++g) {
            const size_t off = ((size_t)b * l->c + (size_t)g * cg) * hw;
            const float m = s->stats[2 * ((size_t)b * G + g)], inv = s->stats[2 * ((size_t)b * G + g) + 1];
            double sg = 0, sgx = 0;
            for (int k = 0; k < cg; ++k) {
                const int c = g * cg + k;
                double dgam = 0, dbet = 0;
                for (size_t i = 0; i < hw; ++i) {
                    const size_t o = off + (size_t)k * hw + i;
                    const float xh = (in[o] - m) * inv, dy = l->delta[o], gx = s->gamma[c] * dy;
                    dgam += (double)dy * xh;
                    dbet += dy;
                    sg += gx;
                    sgx += (double)gx * xh;
                }
                if (gp->grad) gp->grad[c] += (float)dgam;
                if (bp->grad) bp->grad[c] += (float)dbet;
            }
            if (!d) continue;
            const float mg = (float)(sg / (double)n), mgx = (float)(sgx / (double)n);
            for (size_t i = 0; i < n; ++i) {
                const size_t o = off + i;
                const int c = g * cg + (int)(i / hw);
                const float xh = (in[o] - m) * inv;
                d[o] += inv * (s->gamma[c] * l->delta[o] - mg - xh * mgx);
            }
        }
    return DN_OK;
}

const dn_layer_ops dn_groupnorm_ops = {
    .type = "groupnorm",
    .make = groupnorm_make,
    .setup = groupnorm_setup,
    .forward = groupnorm_forward,
    .backward = groupnorm_backward,
    DN_GPU_OPS(dn_groupnorm_forward_gpu, dn_groupnorm_backward_gpu),
};

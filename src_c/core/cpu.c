/* cpu.c - the CPU backend (core/backend.h): the host buffers are the only
 * copies, so hand-outs and synchronization are no-ops; a layer runs its ops
 * table's forward and backward; the optimizer step is train.c's formulas on
 * the host. */
#include "layer.h"
#include "backend.h"

#include <math.h>

static dn_status nothing(dn_net *net)
{
    (void)net;
    return DN_OK;
}

static dn_status forward(dn_net *net, dn_layer *l) { return l->ops->forward(l, net); }

static dn_status backward(dn_net *net, dn_layer *l) { return l->ops->backward(l, net); }

static dn_status layer_done(dn_net *net, dn_layer *l, const char *what)
{
    (void)net, (void)l, (void)what;
    return DN_OK;
}

static dn_status on_host(dn_net *net, dn_layer *l)
{
    (void)net, (void)l;
    return DN_OK;
}

static dn_status delta_on_host(dn_net *net, int layer)
{
    (void)net, (void)layer;
    return DN_OK;
}

static dn_status param_on_host(dn_net *net, dn_param *p)
{
    (void)net, (void)p;
    return DN_OK;
}

/* SGD with momentum (m: darknet's update buffer, the negative gradient
 * direction) or Adam; decay only where the parameter takes it (a->decay 0
 * otherwise); then the clip. */
static dn_status update(dn_net *net, dn_param *p, const dn_update_args *a)
{
    (void)net;
    float *w = p->data, *g = p->grad, *m = p->m, *v = p->v;
    if (a->adam) {
        for (size_t k = 0; k < p->count; ++k) {
            const float d = -g[k] - a->decay * w[k];
            m[k] = a->B1 * m[k] + (1.f - a->B1) * d;
            v[k] = a->B2 * v[k] + (1.f - a->B2) * d * d;
            w[k] += a->rate * (m[k] / a->b1t) / (sqrtf(v[k] / a->b2t) + a->eps);
        }
    } else {
        for (size_t k = 0; k < p->count; ++k) {
            m[k] += -g[k] - a->decay * w[k];
            w[k] += a->rate / a->batch * m[k];
            m[k] *= a->momentum;
        }
    }
    if (a->clip > 0.f)
        for (size_t k = 0; k < p->count; ++k) w[k] = fminf(a->clip, fmaxf(-a->clip, w[k]));
    return DN_OK;
}

/* a training pass zeroes the deltas (the host ones: train.c does it for every backend) */
const dn_backend dn_cpu_backend = {
    .name = "CPU",
    .allocate = nothing,
    .begin_forward = nothing,
    .layer_forward = forward,
    .begin_backward = nothing,
    .layer_backward = backward,
    .layer_done = layer_done,
    .pull_output = on_host,
    .pull_delta = delta_on_host,
    .pull_param = param_on_host,
    .zero_grads = on_host,
    .update = update,
    .synchronize = nothing,
};

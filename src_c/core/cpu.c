/* cpu.c - the CPU backend (core/backend.h): the host buffers are the only
 * copies, so hand-outs and synchronization are no-ops; a layer runs its ops
 * table's forward and backward; the optimizer step is train.c's formulas on
 * the host. */
#include "layer.h"
#include "backend.h"

#include <string.h>

static dn_status nothing(dn_net *net)
{
    (void)net;
    return DN_OK;
}

/* a training pass starts from zero deltas */
static dn_status begin_forward(dn_net *net)
{
    if (!net->train) return DN_OK;
    dn_net_prepare_threads(net);
    for (int i = 0; i < net->nlayers; ++i) {
        dn_layer *l = net->layers[i];
        if (l->delta) dn_parallel_zero(net, l->delta, (size_t)net->batch * l->outputs);
    }
    if (net->input_delta) dn_parallel_zero(net, net->input_delta, (size_t)net->batch * net->c * net->h * net->w);
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

static dn_status zero_grads(dn_net *net, dn_layer *l)
{
    (void)net;
    for (int j = 0; j < l->nparams; ++j)
        if (l->params[j].grad) memset(l->params[j].grad, 0, l->params[j].count * sizeof(float));
    return DN_OK;
}

static dn_status update(dn_net *net, dn_param *p, const dn_update_args *a)
{
    (void)net;
    for (size_t k = 0; k < p->count; ++k) dn_update_value(&p->data[k], p->grad[k], &p->m[k], p->v ? &p->v[k] : NULL, a);
    return DN_OK;
}

static dn_status run_layers(dn_net *net, dn_status (*layers)(dn_net *)) { return layers(net); }

/* the host buffers are the current ones; float32 gradients: the loss's finiteness, checked per mini-batch,
 * stands for them */
static dn_status begin_update(dn_net *net, int *finite)
{
    (void)net;
    *finite = 1;
    return DN_OK;
}

const dn_backend dn_cpu_backend = {
    .name = "CPU",
    .allocate = nothing,
    .begin_forward = begin_forward,
    .run_layers = run_layers,
    .layer_forward = forward,
    .begin_backward = nothing,
    .layer_backward = backward,
    .layer_done = layer_done,
    .pull_output = on_host,
    .pull_delta = delta_on_host,
    .pull_param = param_on_host,
    .pull_gradients = nothing,
    .zero_grads = zero_grads,
    .begin_update = begin_update,
    .update = update,
    .synchronize = nothing,
};

/* layer.c - what the layers share: their input and where its gradient
 * goes, registering parameter tensors, private state and scratch, the
 * `from`/`layers` and `activation` options (darknet's activation names), and
 * the shape and copy of the layers that keep their input's shape. */
#include "layer.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

static const struct {
    const char *name;
    dn_activation act;
} names[] = {
    {"linear", DN_ACT_LINEAR}, {"logistic", DN_ACT_LOGISTIC}, {"loggy", DN_ACT_LOGGY}, {"relu", DN_ACT_RELU},
    {"relu6", DN_ACT_RELU6}, {"elu", DN_ACT_ELU}, {"selu", DN_ACT_SELU}, {"gelu", DN_ACT_GELU},
    {"relie", DN_ACT_RELIE}, {"ramp", DN_ACT_RAMP}, {"leaky", DN_ACT_LEAKY}, {"revleaky", DN_ACT_REVLEAKY},
    {"tanh", DN_ACT_TANH}, {"plse", DN_ACT_PLSE}, {"stair", DN_ACT_STAIR}, {"hardtan", DN_ACT_HARDTAN},
    {"lhtan", DN_ACT_LHTAN}, {"swish", DN_ACT_SWISH}, {"mish", DN_ACT_MISH}, {"hard_mish", DN_ACT_HARD_MISH},
    {"normalize_channels", DN_ACT_NORM_CHAN}, {"normalize_channels_softmax", DN_ACT_NORM_CHAN_SOFTMAX},
    {"normalize_channels_softmax_maxval", DN_ACT_NORM_CHAN_SOFTMAX_MAXVAL},
};

dn_status dn_activation_from_name(const char *name, dn_activation *out)
{
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); ++i)
        if (strcmp(names[i].name, name) == 0) {
            *out = names[i].act;
            return DN_OK;
        }
    return dn_fail(DN_ERR_ARG, "unknown activation '%s'", name);
}

int dn_activation_needs_input(dn_activation a)
{
    return a == DN_ACT_GELU || a == DN_ACT_SWISH || a == DN_ACT_MISH || a == DN_ACT_HARD_MISH || a == DN_ACT_STAIR ||
           a == DN_ACT_NORM_CHAN || a == DN_ACT_NORM_CHAN_SOFTMAX || a == DN_ACT_NORM_CHAN_SOFTMAX_MAXVAL;
}

const float *dn_layer_input(const dn_net *net, const dn_layer *l)
{
    return l->index == 0 ? net->input : net->layers[l->index - 1]->output;
}

float *dn_layer_input_delta(const dn_net *net, const dn_layer *l)
{
    return l->index == 0 ? net->input_delta : net->layers[l->index - 1]->delta;
}

dn_status dn_ensure_floats(float **buf, size_t *cap, size_t n)
{
    if (*buf && *cap >= n) return DN_OK;
    float *p = realloc(*buf, (n ? n : 1) * sizeof(float));
    if (!p) return dn_fail(DN_ERR_NOMEM, "out of memory for %zu floats of training scratch", n);
    *buf = p;
    *cap = n;
    return DN_OK;
}

dn_status dn_layer_add_param(dn_layer *l, const char *name, size_t count, float **data)
{
    return dn_layer_add_param_flags(l, name, count, DN_PARAM_TRAIN, data);
}

dn_status dn_layer_add_param_flags(dn_layer *l, const char *name, size_t count, int flags, float **data)
{
    if (l->nparams == DN_MAX_PARAMS) return dn_layer_fail(l, DN_ERR_ARG, "too many parameter tensors");
    float *p = dn_calloc(count, sizeof(float));
    if (!p) return dn_layer_fail(l, DN_ERR_NOMEM, "out of memory for parameter '%s' (%zu floats)", name, count);
    dn_param *prm = &l->params[l->nparams++];
    prm->name = name;
    prm->data = p;
    prm->grad = prm->m = prm->v = NULL;
    prm->count = count;
    prm->flags = flags;
    if (data) *data = p;
    return DN_OK;
}

dn_param *dn_layer_find_param(dn_layer *l, const char *name)
{
    for (int j = 0; j < l->nparams; ++j)
        if (!strcmp(l->params[j].name, name)) return &l->params[j];
    return NULL;
}

dn_status dn_layer_sources(const dn_layer *l, const dn_net *net, const char *key, const int **idx, int *count)
{
    dn_status s = dn_attr_ints(l, key, idx, count);
    if (s) return s;
    if (*count < 1) return dn_layer_fail(l, DN_ERR_ARG, "option '%s' names no layer", key);
    for (int i = 0; i < *count; ++i) {
        int j = (*idx)[i];
        if (j < 0 || j >= l->index || j >= net->nlayers)
            return dn_layer_fail(l, DN_ERR_ARG, "option '%s' names layer %d, which is not an earlier layer", key, j);
    }
    return DN_OK;
}

dn_status dn_setup_same_shape(dn_layer *l, dn_net *net)
{
    (void)net;
    l->out_c = l->c;
    l->out_h = l->h;
    l->out_w = l->w;
    return DN_OK;
}

dn_status dn_forward_copy(dn_layer *l, dn_net *net)
{
    memcpy(l->output, dn_layer_input(net, l), (size_t)l->batch * l->outputs * sizeof(float));
    return DN_OK;
}

void *dn_layer_priv(dn_layer *l, size_t size)
{
    l->priv = dn_calloc(1, size);
    if (!l->priv) dn_layer_fail(l, DN_ERR_NOMEM, "out of memory");
    return l->priv;
}

dn_status dn_layer_from_and_activation(dn_layer *l, const dn_net *net, int *from, dn_activation *act)
{
    const int *idx;
    int n;
    const char *name;
    dn_status st;
    if ((st = dn_layer_sources(l, net, "from", &idx, &n)) || (st = dn_attr_string(l, "activation", &name))) return st;
    if (n != 1) return dn_layer_fail(l, DN_ERR_ARG, "'from' must name exactly one layer");
    *from = idx[0];
    if ((st = dn_activation_from_name(name, act))) return dn_layer_fail(l, st, "unknown activation '%s'", name);
    return DN_OK;
}

dn_status dn_layer_owns(dn_layer *l, ...)
{
    va_list ap;
    va_start(ap, l);
    void *slot;
    dn_status s = DN_OK;
    while ((slot = va_arg(ap, void *)) != NULL) {
        if (l->nowned == DN_MAX_OWNED) {
            s = dn_layer_fail(l, DN_ERR_ARG, "more than %d private buffers", DN_MAX_OWNED);
            break;
        }
        l->owned[l->nowned++] = slot;
    }
    va_end(ap);
    return s;
}

void dn_layer_free_owned(dn_layer *l)
{
    for (int i = 0; i < l->nowned; ++i) {
        void *buf; /* the slot holds an object pointer (float *, a state struct's *): read it as bytes */
        memcpy(&buf, l->owned[i], sizeof(buf));
        free(buf);
    }
    l->nowned = 0;
}

dn_status dn_head_train_loss(dn_layer *l, dn_net *net, dn_status (*loss)(dn_layer *l, dn_net *net))
{
    if (!net->train) return DN_OK;
    l->has_loss = net->truth != NULL;
    return l->has_loss ? loss(l, net) : DN_OK;
}

void dn_head_pass_delta(const dn_layer *l, float *d)
{
    const size_t n = (size_t)l->batch * l->outputs;
    for (size_t i = 0; i < n; ++i) d[i] += l->delta[i];
}

int dn_layer_sync_bn(const dn_net *net, const dn_layer *l)
{
    if (!net->train || !net->reduce_hook) return 0;
    int v = -1;
    if (dn_attr_has(l, "sync_bn") && dn_attr_int(l, "sync_bn", &v)) return 0;
    if (v < 0 && dn_opt_has(net, "sync_bn") && dn_opt_int(net, "sync_bn", &v)) return 0;
    return v > 0;
}

/* network.c - building, sizing, running and inspecting a network.
 *
 * Building: dn_net_add_layer starts a layer, the dn_net_set_* calls give it
 * its resolved options, dn_net_end_layer hands it the input shape (the
 * previous layer's output, or the network input for layer 0), then calls the
 * layer's make (options, parameters) and setup (output shape). Activations
 * and the one shared workspace are allocated by dn_net_finalize, and again by
 * dn_net_resize, so a forward pass allocates nothing. */
#include "layer.h"
#include "backend.h"
#include "cuda.h"

#include <stdlib.h>
#include <string.h>

#define DN_ALIGN 64
static size_t round_up(size_t n) { return (n + DN_ALIGN - 1) / DN_ALIGN * DN_ALIGN; }

#define DN_STR2(x) #x
#define DN_STR(x) DN_STR2(x)

const char *dn_version(void) { return DN_STR(DN_VERSION_MAJOR) "." DN_STR(DN_VERSION_MINOR); }

dn_status dn_net_create(int batch, int channels, int height, int width, dn_net **out)
{
    if (!out) return dn_fail(DN_ERR_ARG, "output pointer is NULL");
    *out = NULL;
    if (batch < 1 || channels < 1 || height < 1 || width < 1)
        return dn_fail(DN_ERR_ARG, "network input must be positive, got batch=%d channels=%d height=%d width=%d",
                       batch, channels, height, width);
    dn_net *net = calloc(1, sizeof(dn_net));
    if (!net) return dn_fail(DN_ERR_NOMEM, "out of memory creating the network");
    net->batch = batch;
    net->c = channels;
    net->h = height;
    net->w = width;
    net->threads = 1;
    net->use_blas = dn_blas_available();
    net->speed = DN_SPEED_ALL;
    net->backend = &dn_cpu_backend;
    const char *speed = getenv("PYDARKNET_SPEED");
    if (speed && *speed) {
        char *end;
        const unsigned long v = strtoul(speed, &end, 0);
        if (*end == 0) net->speed = (unsigned)v & DN_SPEED_ALL;
    }
    *out = net;
    return DN_OK;
}

static void free_layer(dn_layer *l)
{
    if (!l) return;
    dn_layer_free_owned(l);
    if (l->ops && l->ops->destroy) l->ops->destroy(l);
    else free(l->priv);
    for (int i = 0; i < l->nparams; ++i) {
        free(l->params[i].data); /* grad: a part of the network's gradient block */
        free(l->params[i].m);
        free(l->params[i].v);
    }
    free(l->output);
    free(l->delta);
    dn_attrs_free(&l->attrs);
    free(l);
}

/* class names a model file gave the network (core/model.c) */
static void free_names(dn_net *net)
{
    for (int i = 0; i < net->nnames; ++i) free(net->names[i]);
    free(net->names);
    net->names = NULL;
    net->nnames = 0;
}

void dn_net_free(dn_net *net)
{
    if (!net) return;
    dn_gpu_close(net);
    for (int i = 0; i < net->nlayers; ++i) free_layer(net->layers[i]);
    free_layer(net->building);
    free(net->layers);
    dn_pool_free(net->pool);
    free(net->prof_forward);
    free(net->prof_backward);
    free(net->prof_calls);
    free(net->workspace);
    free(net->input_buf);
    free(net->candidates.items);
    free(net->input_delta);
    free(net->grad_arena);
    free(net->grad_offset);
    dn_attrs_free(&net->train_opts);
    free_names(net);
    free(net);
}

void dn_net_set_log(dn_net *net, dn_log_fn fn, void *user)
{
    if (!net) return;
    net->log_fn = fn;
    net->log_user = user;
}

dn_status dn_net_set_threads(dn_net *net, int threads)
{
    if (!net) return dn_fail(DN_ERR_ARG, "network handle is NULL");
    if (threads < 1) return dn_fail(DN_ERR_ARG, "thread count must be at least 1, got %d", threads);
    if (threads == net->threads && (threads == 1 || net->pool)) return DN_OK;
    dn_pool_free(net->pool);
    net->pool = NULL;
    net->threads = 1;
    struct dn_pool *pool = NULL;
    dn_status s = dn_pool_create(threads, &pool);
    if (s) return s;
    net->pool = pool;
    net->threads = threads;
    return net->finalized ? dn_net_allocate_workspace(net) : DN_OK;
}

dn_status dn_net_set_speed(dn_net *net, unsigned paths)
{
    if (!net) return dn_fail(DN_ERR_ARG, "network handle is NULL");
    if (paths & ~(unsigned)DN_SPEED_ALL) return dn_fail(DN_ERR_ARG, "unknown speed path bits 0x%x", paths & ~(unsigned)DN_SPEED_ALL);
    net->speed = paths;
    return DN_OK;
}

unsigned dn_net_speed(const dn_net *net) { return net ? net->speed : 0; }

dn_status dn_net_set_blas(dn_net *net, int use_blas)
{
    if (!net) return dn_fail(DN_ERR_ARG, "network handle is NULL");
    if (use_blas && !dn_blas_available()) return dn_fail(DN_ERR_UNSUPPORTED, "this build has no BLAS");
    net->use_blas = use_blas ? 1 : 0;
    return DN_OK;
}

int dn_net_uses_blas(const dn_net *net) { return net ? net->use_blas : 0; }

dn_status dn_net_add_layer(dn_net *net, const char *type)
{
    if (!net) return dn_fail(DN_ERR_ARG, "network handle is NULL");
    if (net->finalized) return dn_fail(DN_ERR_STATE, "the network is finalized; no more layers can be added");
    if (net->building) return dn_fail(DN_ERR_STATE, "layer %d is still being built (call dn_net_end_layer)", net->nlayers);
    if (!type) return dn_fail(DN_ERR_ARG, "layer type is NULL");
    const dn_layer_ops *ops = dn_find_layer_ops(type);
    if (!ops) return dn_fail(DN_ERR_UNSUPPORTED, "layer %d: unknown layer type '%s'", net->nlayers, type);
    dn_layer *l = calloc(1, sizeof(dn_layer));
    if (!l) return dn_fail(DN_ERR_NOMEM, "out of memory adding layer %d", net->nlayers);
    l->ops = ops;
    l->index = net->nlayers;
    net->building = l;
    return DN_OK;
}

/* The input shape of layer l: the previous layer's output or the network input. */
static void take_input_shape(const dn_net *net, dn_layer *l)
{
    l->batch = net->batch;
    if (l->index == 0) {
        l->c = net->c;
        l->h = net->h;
        l->w = net->w;
    } else {
        const dn_layer *p = net->layers[l->index - 1];
        l->c = p->out_c;
        l->h = p->out_h;
        l->w = p->out_w;
    }
    l->inputs = (size_t)l->c * l->h * l->w;
}

static dn_status run_setup(dn_net *net, dn_layer *l)
{
    take_input_shape(net, l);
    dn_status s = l->ops->setup(l, net);
    if (s) return s;
    if (l->out_c < 1 || l->out_h < 1 || l->out_w < 1)
        return dn_layer_fail(l, DN_ERR_SHAPE, "output shape %d x %d x %d (c x h x w) is empty for input %d x %d x %d",
                             l->out_c, l->out_h, l->out_w, l->c, l->h, l->w);
    l->outputs = (size_t)l->out_c * l->out_h * l->out_w;
    return DN_OK;
}

dn_status dn_net_end_layer(dn_net *net)
{
    if (!net) return dn_fail(DN_ERR_ARG, "network handle is NULL");
    dn_layer *l = net->building;
    if (!l) return dn_fail(DN_ERR_STATE, "no layer is being built");
    if (net->nlayers == net->capacity) {
        int cap = net->capacity ? net->capacity * 2 : 64;
        dn_layer **layers = realloc(net->layers, (size_t)cap * sizeof(dn_layer *));
        if (!layers) return dn_fail(DN_ERR_NOMEM, "out of memory adding layer %d", l->index);
        net->layers = layers;
        net->capacity = cap;
    }
    take_input_shape(net, l);
    dn_status s = l->ops->make(l, net);
    if (!s) s = run_setup(net, l);
    if (s) {
        net->building = NULL;
        free_layer(l);
        return s;
    }
    net->layers[net->nlayers++] = l;
    net->building = NULL;
    return DN_OK;
}

/* Layout: each worker's private scratch first, at the same place for every
 * layer (worker w at w * worker_stride, so what one layer leaves in a core's
 * cache is where the next layer writes), then the layers' shared part. */
dn_status dn_net_allocate_workspace(dn_net *net)
{
    size_t shared = 0, stride = 0;
    const size_t workers = (size_t)dn_workers(net);
    for (int i = 0; i < net->nlayers; ++i) {
        const dn_layer *l = net->layers[i];
        if (round_up(l->workspace) > shared) shared = round_up(l->workspace);
        if (round_up(l->worker_workspace) > stride) stride = round_up(l->worker_workspace);
    }
    net->worker_stride = stride;
    const size_t ws = workers * stride + shared;
    if (net->workspace && ws <= net->workspace_size) return DN_OK;
    free(net->workspace);
    net->workspace = NULL;
    net->workspace_size = 0;
    if (!ws) return DN_OK;
    void *p = NULL;
    /* left unzeroed: every user writes before it reads, and pages never touched stay out of memory */
    if (posix_memalign(&p, DN_ALIGN, ws)) return dn_fail(DN_ERR_NOMEM, "out of memory for the workspace (%zu bytes)", ws);
    net->workspace = p;
    net->workspace_size = ws;
    return DN_OK;
}

float *dn_scratch(const dn_net *net, const dn_layer *l, int worker)
{
    (void)l;
    char *base = (char *)net->workspace;
    if (worker < 0) return (float *)(base + (size_t)dn_workers(net) * net->worker_stride);
    return (float *)(base + (size_t)worker * net->worker_stride);
}

/* (Re)allocates activations and the workspace to the current sizes. */
dn_status dn_net_allocate(dn_net *net)
{
    dn_gpu_unpin(net); /* the host buffers some copies use page-locked are freed below */
    for (int i = 0; i < net->nlayers; ++i) {
        dn_layer *l = net->layers[i];
        free(l->output);
        l->output = dn_calloc((size_t)net->batch * l->outputs, sizeof(float));
        if (!l->output) return dn_layer_fail(l, DN_ERR_NOMEM, "out of memory for the output (%zu floats)",
                                             (size_t)net->batch * l->outputs);
        free(l->delta);
        l->delta = NULL;
        if (net->training) {
            l->delta = dn_calloc((size_t)net->batch * l->outputs, sizeof(float));
            if (!l->delta) return dn_layer_fail(l, DN_ERR_NOMEM, "out of memory for the delta");
        }
    }
    free(net->workspace);
    net->workspace = NULL;
    net->workspace_size = 0;
    dn_status s = dn_net_allocate_workspace(net);
    if (s) return s;
    size_t in = (size_t)net->batch * net->c * net->h * net->w;
    free(net->input_buf);
    net->input_buf = dn_calloc(in, sizeof(float));
    if (!net->input_buf) return dn_fail(DN_ERR_NOMEM, "out of memory for the input");
    net->input_buf_size = in;
    free(net->input_delta);
    net->input_delta = NULL;
    if (net->training) {
        net->input_delta = dn_calloc(in, sizeof(float));
        if (!net->input_delta) return dn_fail(DN_ERR_NOMEM, "out of memory for the input delta");
    }
    return net->backend->allocate(net);
}

dn_status dn_net_finalize(dn_net *net)
{
    if (!net) return dn_fail(DN_ERR_ARG, "network handle is NULL");
    if (net->building) return dn_fail(DN_ERR_STATE, "layer %d is still being built", net->building->index);
    if (net->nlayers == 0) return dn_fail(DN_ERR_STATE, "the network has no layers");
    dn_status s = dn_net_allocate(net);
    if (s) return s;
    net->finalized = 1;
    return DN_OK;
}

dn_status dn_net_resize(dn_net *net, int batch, int height, int width)
{
    if (!net) return dn_fail(DN_ERR_ARG, "network handle is NULL");
    if (!net->finalized) return dn_fail(DN_ERR_STATE, "the network is not finalized");
    if (batch < 1 || height < 1 || width < 1)
        return dn_fail(DN_ERR_ARG, "bad size batch=%d height=%d width=%d", batch, height, width);
    if (batch == net->batch && height == net->h && width == net->w) return DN_OK;
    int old_b = net->batch, old_h = net->h, old_w = net->w;
    net->batch = batch;
    net->h = height;
    net->w = width;
    dn_status s = DN_OK;
    for (int i = 0; i < net->nlayers && !s; ++i) s = run_setup(net, net->layers[i]);
    if (s) {
        /* put the old sizes back; they were valid before */
        char msg[1024];
        strncpy(msg, dn_last_error(), sizeof(msg) - 1);
        msg[sizeof(msg) - 1] = 0;
        net->batch = old_b;
        net->h = old_h;
        net->w = old_w;
        for (int i = 0; i < net->nlayers; ++i) run_setup(net, net->layers[i]);
        return dn_fail(s, "%s", msg);
    }
    return dn_net_allocate(net);
}

int dn_net_num_layers(const dn_net *net) { return net ? net->nlayers : 0; }

dn_status dn_net_input_shape(const dn_net *net, int *batch, int *channels, int *height, int *width)
{
    if (!net) return dn_fail(DN_ERR_ARG, "network handle is NULL");
    if (batch) *batch = net->batch;
    if (channels) *channels = net->c;
    if (height) *height = net->h;
    if (width) *width = net->w;
    return DN_OK;
}

static dn_status get_layer(const dn_net *net, int i, dn_layer **out)
{
    if (!net) return dn_fail(DN_ERR_ARG, "network handle is NULL");
    if (i < 0 || i >= net->nlayers) return dn_fail(DN_ERR_ARG, "layer index %d out of range (0..%d)", i, net->nlayers - 1);
    *out = net->layers[i];
    return DN_OK;
}

dn_status dn_layer_type(const dn_net *net, int i, const char **type)
{
    dn_layer *l = NULL;
    dn_status s = get_layer(net, i, &l);
    if (s) return s;
    *type = l->ops->type;
    return DN_OK;
}

dn_status dn_layer_shape(const dn_net *net, int i, int *channels, int *height, int *width)
{
    dn_layer *l = NULL;
    dn_status s = get_layer(net, i, &l);
    if (s) return s;
    if (channels) *channels = l->out_c;
    if (height) *height = l->out_h;
    if (width) *width = l->out_w;
    return DN_OK;
}

dn_status dn_layer_output(const dn_net *net, int i, const float **data, size_t *count)
{
    dn_layer *l = NULL;
    dn_status s = get_layer(net, i, &l);
    if (s) return s;
    if (!net->finalized) return dn_fail(DN_ERR_STATE, "the network is not finalized");
    if ((s = net->backend->pull_output((dn_net *)net, l))) return s;
    *data = l->output;
    *count = (size_t)net->batch * l->outputs;
    return DN_OK;
}

int dn_layer_num_params(const dn_net *net, int i)
{
    if (!net || i < 0 || i >= net->nlayers) return 0;
    return net->layers[i]->nparams;
}

dn_status dn_layer_param(dn_net *net, int i, int j, const char **name, float **data, size_t *count)
{
    dn_layer *l = NULL;
    dn_status s = get_layer(net, i, &l);
    if (s) return s;
    if (j < 0 || j >= l->nparams) return dn_layer_fail(l, DN_ERR_ARG, "parameter index %d out of range", j);
    if ((s = net->backend->pull_param(net, &l->params[j]))) return s;
    if (name) *name = l->params[j].name;
    if (data) *data = l->params[j].data;
    if (count) *count = l->params[j].count;
    return DN_OK;
}

dn_status dn_net_workspace_size(const dn_net *net, size_t *bytes)
{
    if (!net) return dn_fail(DN_ERR_ARG, "network handle is NULL");
    *bytes = net->workspace_size;
    return DN_OK;
}

dn_status dn_net_forward(dn_net *net, const float *input, size_t count)
{
    if (!net) return dn_fail(DN_ERR_ARG, "network handle is NULL");
    if (!net->finalized) return dn_fail(DN_ERR_STATE, "the network is not finalized");
    size_t want = (size_t)net->batch * net->c * net->h * net->w;
    if (!input) return dn_fail(DN_ERR_ARG, "input is NULL");
    if (count != want)
        return dn_fail(DN_ERR_SHAPE, "input has %zu floats, the network takes %zu (batch %d x %d x %d x %d)", count, want,
                       net->batch, net->c, net->h, net->w);
    net->input = input;
    dn_status s = dn_run_forward(net);
    net->input = NULL;
    return s;
}

dn_status dn_net_forward_input(dn_net *net)
{
    if (!net) return dn_fail(DN_ERR_ARG, "network handle is NULL");
    if (!net->finalized) return dn_fail(DN_ERR_STATE, "the network is not finalized");
    return dn_net_forward(net, net->input_buf, net->input_buf_size);
}


/* cuda.cu - the CUDA backend (core/backend.h): the device context (device
 * id, cuBLAS handle, device input, input delta and workspace), the device
 * copies of every layer's output and delta and every parameter's tensors,
 * each layer's device pass (or its host pass on host copies for layers
 * without device ops), the optimizer step, and the copies between host and
 * device (see cuda.h for the rules of which copy is current). The layer loop
 * itself is core/loop.c's.
 *
 * Everything a pass does runs on the network's stream (dn_gpu_stream: every
 * kernel, cuBLAS and cuDNN call and copy), so it happens in the order it is
 * issued and a copy to the host waits for the work before it. The one other
 * stream is the input's: a pass's input goes up on it while the device still
 * runs the work before (push_input). With PYDARKNET_CUDA_SYNC=1 in the
 * environment, every layer is followed by a device synchronization, so an
 * error in a kernel is reported by the layer that caused it.
 *
 * With PYDARKNET_CUDA_GRAPHS=1, an inference pass's layers run as one CUDA
 * graph (run_layers): captured on the second pass at a memory layout, then
 * launched whole, without the per-kernel launch cost that bounds a small
 * batch's latency.
 *
 * Which layers run where: every layer listed with DN_LAYER_GPU in
 * core/layer_list.h runs on the device through its ops table's forward_gpu
 * and backward_gpu; the loss heads ([softmax], [yolo], [region], [cost])
 * compute their output there, then by default copy their input and output to
 * the host for the loss and copy its gradient back (PYDARKNET_LOSS=device:
 * the same loss functions on the device); [empty] and [fcos] run wholly on
 * host copies (dn_gpu_host_forward and _backward). reorg3d, listed with
 * DN_LAYER, runs on the device with reorg's device passes. The matrix
 * products are cuda_gemm.cu's; the context is cuda_context.h's. */
#include "cuda_context.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern const dn_backend dn_cuda_backend; /* the table at the end */

/* Counts every device allocation, plan release and cuDNN switch: a CUDA graph holds the device pointers and
 * plans of the pass it was made from, so it serves only while the count is unchanged. */
static unsigned long long memory_layout;
void dn_cuda_layout_changed(void) { __atomic_add_fetch(&memory_layout, 1ull, __ATOMIC_RELAXED); }
static unsigned long long current_layout(void) { return __atomic_load_n(&memory_layout, __ATOMIC_RELAXED); }

/* The stream of the network whose pass runs in this thread (use_device sets it). */
static thread_local cudaStream_t thread_stream = 0;
cudaStream_t dn_gpu_stream(void) { return thread_stream; }

/* every layer's plan released (their shapes change, or the device copies go) */
void dn_cuda_free_plans(dn_cuda *ctx)
{
    dn_cuda_layout_changed();
    for (int i = 0; i < ctx->nplans; ++i) {
        if (ctx->plans[i] && ctx->plan_release[i]) ctx->plan_release[i](ctx->plans[i]);
        free(ctx->plans[i]);
        ctx->plans[i] = NULL;
        ctx->plan_release[i] = NULL;
    }
}

dn_status dn_cuda_fail(cudaError_t e, const char *what)
{
    const dn_status s = e == cudaErrorMemoryAllocation ? DN_ERR_NOMEM : DN_ERR_STATE;
    return dn_fail(s, "CUDA: %s: %s", what, cudaGetErrorString(e));
}

static dn_status dev_alloc(float **p, size_t n, const char *what)
{
    void *q = NULL;
    *p = NULL;
    dn_cuda_layout_changed();
    cudaError_t e = cudaMalloc(&q, (n ? n : 1) * sizeof(float));
    /* zeroed before anything (on any stream) may use it */
    if (e == cudaSuccess) e = cudaMemsetAsync(q, 0, (n ? n : 1) * sizeof(float), thread_stream);
    if (e == cudaSuccess) e = cudaStreamSynchronize(thread_stream);
    if (e != cudaSuccess) {
        if (q) cudaFree(q);
        char msg[160];
        snprintf(msg, sizeof(msg), "allocating %zu floats for %s", n, what);
        return dn_cuda_fail(e, msg);
    }
    *p = (float *)q;
    return DN_OK;
}

static void dev_free(float **p)
{
    if (*p) cudaFree(*p);
    *p = NULL;
}

/* Copies on the thread's network stream, finished when they return (the host may reuse or read the buffer).
 * Never inside a CUDA graph's capture: the graph would hold the copy without the host work around it. */
static dn_status not_capturing(void)
{
    cudaStreamCaptureStatus st = cudaStreamCaptureStatusNone;
    const cudaError_t e = cudaStreamIsCapturing(thread_stream, &st);
    if (e == cudaSuccess && st == cudaStreamCaptureStatusNone) return DN_OK;
    return dn_fail(DN_ERR_STATE, "CUDA: a copy between the host and the device while a graph is being captured");
}

static dn_status push(float *dev, const float *host, size_t n)
{
    if (!dev || !host || !n) return DN_OK;
    dn_status s = not_capturing();
    if (s) return s;
    cudaError_t e = cudaMemcpyAsync(dev, host, n * sizeof(float), cudaMemcpyHostToDevice, thread_stream);
    if (e == cudaSuccess) e = cudaStreamSynchronize(thread_stream);
    return e == cudaSuccess ? DN_OK : dn_cuda_fail(e, "copying to the device");
}

static dn_status pull(float *host, const float *dev, size_t n)
{
    if (!dev || !host || !n) return DN_OK;
    dn_status s = not_capturing();
    if (s) return s;
    cudaError_t e = cudaMemcpyAsync(host, dev, n * sizeof(float), cudaMemcpyDeviceToHost, thread_stream);
    if (e == cudaSuccess) e = cudaStreamSynchronize(thread_stream);
    return e == cudaSuccess ? DN_OK : dn_cuda_fail(e, "copying to the host");
}

dn_status dn_gpu_push(float *dev, const float *host, size_t n) { return push(dev, host, n); }
dn_status dn_gpu_pull(float *host, const float *dev, size_t n) { return pull(host, dev, n); }

dn_status dn_gpu_loss_total(dn_net *net, const double *dev, size_t runs, size_t per, double scale, double *total)
{
    dn_cuda *ctx = net->cuda;
    const size_t n = runs * per;
    if (ctx->loss_host_n < n) { /* kept for the next pass (page-locked: the copy runs at full speed) */
        if (ctx->loss_host) cudaFreeHost(ctx->loss_host);
        ctx->loss_host = NULL;
        ctx->loss_host_n = 0;
        void *p = NULL;
        const cudaError_t e = cudaHostAlloc(&p, n * sizeof(double), cudaHostAllocDefault);
        if (e != cudaSuccess) return dn_cuda_fail(e, "allocating the host copy of the loss values");
        ctx->loss_host = (double *)p;
        ctx->loss_host_n = n;
    }
    const double *host = ctx->loss_host;
    const dn_status s = pull((float *)ctx->loss_host, (const float *)dev, 2 * n);
    if (s) return s;
    double sum = 0;
    for (size_t r = 0; r < runs; ++r) {
        double run = 0;
        for (size_t e = 0; e < per; ++e) run += host[r * per + e];
        sum += run * scale;
    }
    *total = sum;
    return DN_OK;
}

/* The network's device and stream made the thread's current ones. */
dn_status dn_cuda_use_device(const dn_net *net)
{
    const cudaError_t e = cudaSetDevice(net->cuda->device);
    thread_stream = net->cuda->stream;
    return e == cudaSuccess ? DN_OK : dn_cuda_fail(e, "selecting the device");
}

/* ---- devices ---- */
static int count_devices(cudaError_t *why)
{
    int n = 0;
    *why = cudaGetDeviceCount(&n);
    if (*why != cudaSuccess) {
        cudaGetLastError(); /* clear it: no device is not a sticky error */
        return 0;
    }
    return n;
}

dn_status dn_gpu_device_count(int *count)
{
    cudaError_t why;
    *count = count_devices(&why);
    return DN_OK;
}

dn_status dn_gpu_device_name(int index, char *buf, int size)
{
    cudaError_t why;
    const int n = count_devices(&why);
    if (index < 0 || index >= n) return dn_fail(DN_ERR_ARG, "CUDA device %d does not exist (%d found)", index, n);
    cudaDeviceProp prop;
    const cudaError_t e = cudaGetDeviceProperties(&prop, index);
    if (e != cudaSuccess) return dn_cuda_fail(e, "reading the device properties");
    snprintf(buf, (size_t)size, "%s", prop.name);
    return DN_OK;
}

int dn_gpu_device(const dn_net *net) { return net->cuda ? net->cuda->device : -1; }

void *dn_gpu_cudnn(const dn_net *net)
{
#ifdef DN_CUDNN
    /* mixed precision takes the cuBLAS path (its products' operands rounded there) */
    return net->cuda && net->cuda->use_dnn && !net->cuda->precision ? (void *)net->cuda->dnn : NULL;
#else
    (void)net;
    return NULL;
#endif
}

int dn_gpu_cudnn_on(const dn_net *net) { return dn_gpu_cudnn(net) != NULL; }

static void drop_graph(dn_cuda *ctx);

int dn_gpu_graphs_on(const dn_net *net) { return net->cuda ? net->cuda->graphs : 0; }

dn_status dn_gpu_set_graphs(dn_net *net, int on)
{
    if (!net->cuda) return on ? dn_fail(DN_ERR_STATE, "the network is not on a CUDA device") : DN_OK;
    net->cuda->graphs = on != 0;
    if (!on) drop_graph(net->cuda);
    return DN_OK;
}

long long dn_gpu_graph_launches(const dn_net *net) { return net->cuda ? net->cuda->graph_launches : 0; }

dn_status dn_gpu_set_cudnn(dn_net *net, int on)
{
#ifdef DN_CUDNN
    if (!net->cuda) return on ? dn_fail(DN_ERR_STATE, "the network is not on a CUDA device") : DN_OK;
    if (on && !net->cuda->dnn) return dn_fail(DN_ERR_UNSUPPORTED, "cuDNN could not be initialized on this device");
    if (net->cuda->use_dnn != (on != 0)) dn_cuda_layout_changed();
    net->cuda->use_dnn = on != 0;
    return DN_OK;
#else
    (void)net;
    return on ? dn_fail(DN_ERR_UNSUPPORTED, "this build has no cuDNN (PYDARKNET_CUDA=1 PYDARKNET_CUDNN=1 builds it)")
              : DN_OK;
#endif
}

dn_status dn_gpu_plan(dn_net *net, const dn_layer *l, size_t size, void (*release)(void *), void **out, int *fresh)
{
    dn_cuda *ctx = net->cuda;
    *fresh = 0;
    if (l->index < 0 || l->index >= ctx->nplans) return dn_fail(DN_ERR_STATE, "no plan slot for layer %d", l->index);
    if (!ctx->plans[l->index]) {
        ctx->plans[l->index] = calloc(1, size);
        if (!ctx->plans[l->index]) return dn_fail(DN_ERR_NOMEM, "out of memory");
        ctx->plan_release[l->index] = release;
        *fresh = 1;
    }
    *out = ctx->plans[l->index];
    return DN_OK;
}

/* ---- the network's device memory ---- */
static dn_status alloc_param(dn_net *net, dn_param *p)
{
    dn_cuda *ctx = net->cuda;
    dn_status s;
    if (!p->data_gpu && ((s = dev_alloc(&p->data_gpu, p->count, p->name)) || (s = push(p->data_gpu, p->data, p->count))))
        return s;
    if (p->grad && !p->grad_gpu) { /* its place in the device block, as on the host (gpu_allocate made it) */
        if (!ctx->grad_block) return dn_fail(DN_ERR_STATE, "'%s' has a gradient but the device has no block", p->name);
        p->grad_gpu = ctx->grad_block + (p->grad - net->grad_arena);
        if ((s = push(p->grad_gpu, p->grad, p->count))) return s;
    }
    if (p->m && !p->m_gpu && ((s = dev_alloc(&p->m_gpu, p->count, p->name)) || (s = push(p->m_gpu, p->m, p->count))))
        return s;
    if (p->v && !p->v_gpu && ((s = dev_alloc(&p->v_gpu, p->count, p->name)) || (s = push(p->v_gpu, p->v, p->count))))
        return s;
    return DN_OK;
}

/* The layer's scratch slots freed: what a training forward pass kept there
 * (batch statistics, max indices, masks) no longer fits the layer's new shape,
 * and a backward pass must find none, as the CPU layers' setup forgets theirs. */
static void free_scratch(dn_layer *l)
{
    for (int k = 0; k < DN_GPU_BUFS; ++k) {
        dev_free(&l->gpu_buf[k]);
        l->gpu_cap[k] = 0;
    }
}

/* ---- page-locked host buffers ---- */
static void pin(dn_cuda *ctx, void *p, size_t bytes)
{
    if (!p || !bytes) return;
    for (int k = 0; k < ctx->npinned; ++k)
        if (ctx->pinned[k] == p) return;
    if (ctx->npinned == ctx->pinned_cap) {
        const int cap = ctx->pinned_cap ? 2 * ctx->pinned_cap : 16;
        void **grown = (void **)realloc(ctx->pinned, (size_t)cap * sizeof(void *));
        if (!grown) return; /* the pageable copy serves */
        ctx->pinned = grown;
        ctx->pinned_cap = cap;
    }
    if (cudaHostRegister(p, bytes, cudaHostRegisterDefault) == cudaSuccess) ctx->pinned[ctx->npinned++] = p;
    else cudaGetLastError(); /* refused (a page shared with another registered buffer, a limit): not sticky */
}

static dn_status pin_source(dn_net *net, int i)
{
    if (i == net->nlayers) return DN_OK; /* the input has its own staging */
    dn_layer *src = net->layers[i];
    const size_t bytes = (size_t)net->batch * src->outputs * sizeof(float);
    pin(net->cuda, src->output, bytes);
    pin(net->cuda, src->delta, bytes);
    return DN_OK;
}

static dn_status for_sources(dn_net *net, dn_layer *l, dn_status (*fn)(dn_net *, int));

/* Registers the host buffers of the layers whose passes copy through the host (the loss heads, the layers
 * without a device pass) and of the layers they read. */
static void pin_host_crossings(dn_net *net)
{
    for (int i = 0; i < net->nlayers; ++i) {
        dn_layer *l = net->layers[i];
        if (!l->is_loss && l->ops->forward_gpu) continue;
        const size_t bytes = (size_t)net->batch * l->outputs * sizeof(float);
        pin(net->cuda, l->output, bytes);
        pin(net->cuda, l->delta, bytes);
        for_sources(net, l, pin_source);
    }
}

void dn_gpu_unpin(dn_net *net)
{
    dn_cuda *ctx = net->cuda;
    if (!ctx) return;
    cudaSetDevice(ctx->device);
    for (int k = 0; k < ctx->npinned; ++k) cudaHostUnregister(ctx->pinned[k]);
    cudaGetLastError();
    ctx->npinned = 0;
}

/* Input buffer k (device, and its page-locked staging) for input_n floats; a staging buffer refused leaves the
 * plain copy. */
static dn_status input_buffer(dn_cuda *ctx, int k)
{
    if (ctx->upload_pending[k]) cudaEventSynchronize(ctx->uploaded[k]);
    ctx->upload_pending[k] = 0;
    if (ctx->staging[k] && ctx->staging_n[k] < ctx->input_n) {
        cudaFreeHost(ctx->staging[k]);
        ctx->staging[k] = NULL;
        ctx->staging_n[k] = 0;
    }
    if (!ctx->staging[k]) {
        void *p = NULL;
        if (cudaHostAlloc(&p, ctx->input_n * sizeof(float), cudaHostAllocDefault) == cudaSuccess) {
            ctx->staging[k] = (float *)p;
            ctx->staging_n[k] = ctx->input_n;
        } else {
            cudaGetLastError(); /* not sticky: the plain copy serves */
        }
    }
    dev_free(&ctx->inputs[k]);
    return dev_alloc(&ctx->inputs[k], ctx->input_n, "the input");
}

static dn_status gpu_allocate(dn_net *net)
{
    dn_cuda *ctx = net->cuda;
    dn_status s = dn_cuda_use_device(net);
    if (s) return s;
    dn_cuda_free_plans(ctx);
    if (ctx->nplans != net->nlayers) {
        free(ctx->plans);
        free(ctx->plan_release);
        ctx->plans = (void **)calloc((size_t)net->nlayers + 1, sizeof(void *));
        ctx->plan_release = (void (**)(void *))calloc((size_t)net->nlayers + 1, sizeof(void (*)(void *)));
        ctx->nplans = ctx->plans && ctx->plan_release ? net->nlayers : 0;
        if (!ctx->nplans) return dn_fail(DN_ERR_NOMEM, "out of memory");
    }
    if (net->training && net->grad_arena && net->grad_count && !ctx->grad_block) {
        /* the block, once training is on: every gradient is a slice of it */
        if ((s = dev_alloc(&ctx->grad_block, net->grad_count, "the gradients"))) return s;
        ctx->grad_block_n = net->grad_count;
    }
    for (int i = 0; i < net->nlayers; ++i) {
        dn_layer *l = net->layers[i];
        const size_t n = (size_t)net->batch * l->outputs;
        dev_free(&l->output_gpu);
        dev_free(&l->delta_gpu);
        free_scratch(l);
        if ((s = dev_alloc(&l->output_gpu, n, "a layer output"))) return dn_layer_fail(l, s, "%s", dn_last_error());
        if (net->training && (s = dev_alloc(&l->delta_gpu, n, "a layer delta")))
            return dn_layer_fail(l, s, "%s", dn_last_error());
        l->host_stale = 0;
        for (int j = 0; j < l->nparams; ++j)
            if ((s = alloc_param(net, &l->params[j]))) return dn_layer_fail(l, s, "%s", dn_last_error());
    }
    ctx->input_n = (size_t)net->batch * net->c * net->h * net->w;
    dev_free(&ctx->inputs[1]); /* made again when a training pass needs it */
    if ((s = input_buffer(ctx, 0))) return s;
    ctx->input_k = 0;
    ctx->input = ctx->inputs[0];
    dev_free(&ctx->input_delta);
    if (net->training && (s = dev_alloc(&ctx->input_delta, ctx->input_n, "the input delta"))) return s;
    if (!ctx->delta_dirty) {
        ctx->delta_dirty = (int *)calloc((size_t)net->nlayers + 1, sizeof(int));
        if (!ctx->delta_dirty) return dn_fail(DN_ERR_NOMEM, "out of memory");
    }
    dn_gpu_unpin(net); /* buffers of an earlier size (dn_net_allocate unpins before it frees them) */
    pin_host_crossings(net);
    return DN_OK;
}

/* A switch from the environment: set, not empty and not "0". */
static int env_on(const char *name)
{
    const char *v = getenv(name);
    return v && *v && strcmp(v, "0") != 0;
}

dn_status dn_gpu_open(dn_net *net, int device)
{
    cudaError_t why;
    const int n = count_devices(&why);
    if (n == 0)
        return dn_fail(DN_ERR_UNSUPPORTED, "no CUDA device found (%s)",
                       why == cudaSuccess ? "none present" : cudaGetErrorString(why));
    if (device < 0 || device >= n) return dn_fail(DN_ERR_ARG, "CUDA device %d does not exist (%d found)", device, n);
    cudaError_t e = cudaSetDevice(device);
    if (e != cudaSuccess) return dn_cuda_fail(e, "selecting the device");
    dn_cuda *ctx = (dn_cuda *)calloc(1, sizeof(dn_cuda));
    if (!ctx) return dn_fail(DN_ERR_NOMEM, "out of memory");
    ctx->device = device;
    ctx->sync_each = env_on("PYDARKNET_CUDA_SYNC");
    ctx->graphs = env_on("PYDARKNET_CUDA_GRAPHS");
    ctx->loss_scale = 1.f;
    ctx->warm_layout = ctx->no_graph_layout = ~0ull;
    net->cuda = ctx; /* from here a failure closes what was made (dn_gpu_close takes a part-made context) */
    net->backend = &dn_cuda_backend;
    dn_status s = DN_OK;
    /* Non-blocking: no implicit ordering with the legacy default stream (another thread's copies there would
     * break a graph's capture); everything of the network's is ordered on its stream explicitly. */
    if ((e = cudaStreamCreateWithFlags(&ctx->stream, cudaStreamNonBlocking)) != cudaSuccess)
        s = dn_cuda_fail(e, "creating a stream");
    if (!s && (e = cudaStreamCreateWithFlags(&ctx->upload, cudaStreamNonBlocking)) != cudaSuccess)
        s = dn_cuda_fail(e, "creating a stream");
    for (int k = 0; k < 2 && !s; ++k)
        if ((e = cudaEventCreateWithFlags(&ctx->uploaded[k], cudaEventDisableTiming)) != cudaSuccess ||
            (e = cudaEventCreateWithFlags(&ctx->released[k], cudaEventDisableTiming)) != cudaSuccess)
            s = dn_cuda_fail(e, "creating an event");
    if (!s && cublasCreate(&ctx->blas) != CUBLAS_STATUS_SUCCESS) {
        ctx->blas = NULL;
        s = dn_fail(DN_ERR_STATE, "CUDA: cuBLAS could not be initialized on device %d", device);
    }
    if (!s && cublasSetStream(ctx->blas, ctx->stream) != CUBLAS_STATUS_SUCCESS)
        s = dn_fail(DN_ERR_STATE, "CUDA: cuBLAS could not take the network's stream");
#ifdef DN_CUDNN
    if (!s) {
        if (cudnnCreate(&ctx->dnn) != CUDNN_STATUS_SUCCESS) ctx->dnn = NULL; /* the GEMM path serves */
        if (ctx->dnn && cudnnSetStream(ctx->dnn, ctx->stream) != CUDNN_STATUS_SUCCESS) {
            cudnnDestroy(ctx->dnn);
            ctx->dnn = NULL;
        }
        const char *dnn = getenv("PYDARKNET_CUDNN");
        ctx->use_dnn = ctx->dnn && !(dnn && !strcmp(dnn, "0"));
    }
#endif
    if (!s) s = dn_cuda_use_device(net);
    if (!s) s = gpu_allocate(net);
    if (!s) s = dn_cuda_precision_from_environment(net);
    if (s) {
        char msg[1024];
        snprintf(msg, sizeof(msg), "%s", dn_last_error());
        dn_gpu_close(net);
        return dn_fail(s, "%s", msg);
    }
    return DN_OK;
}

static void drop_graph(dn_cuda *ctx)
{
    if (ctx->graph) cudaGraphExecDestroy(ctx->graph);
    ctx->graph = NULL;
}

void dn_gpu_close(dn_net *net)
{
    dn_cuda *ctx = net->cuda;
    if (!ctx) return;
    if (ctx->stream) dn_cuda_use_device(net); /* (a context part-made by dn_gpu_open has nothing on the device yet) */
    dn_gpu_unpin(net);
    for (int i = 0; i < net->nlayers; ++i) {
        dn_layer *l = net->layers[i];
        for (int j = 0; j < l->nparams; ++j) {
            dn_param *p = &l->params[j];
            /* the device holds the current values unless the host copy was handed out since */
            if (!p->host_dirty) {
                pull(p->data, p->data_gpu, p->count);
                if (!ctx->grads_on_host) pull(p->grad, p->grad_gpu, p->count);
                pull(p->m, p->m_gpu, p->count);
                pull(p->v, p->v_gpu, p->count);
            }
            p->host_dirty = 0;
            dev_free(&p->data_gpu);
            p->grad_gpu = NULL; /* a slice of the block */
            dev_free(&p->m_gpu);
            dev_free(&p->v_gpu);
        }
        if (l->host_stale) pull(l->output, l->output_gpu, (size_t)net->batch * l->outputs);
        l->host_stale = 0;
        dev_free(&l->output_gpu);
        dev_free(&l->delta_gpu);
        free_scratch(l);
    }
    drop_graph(ctx);
    for (int k = 0; k < 2; ++k) {
        if (ctx->upload_pending[k]) cudaEventSynchronize(ctx->uploaded[k]);
        if (ctx->staging[k]) cudaFreeHost(ctx->staging[k]);
        dev_free(&ctx->inputs[k]);
        if (ctx->uploaded[k]) cudaEventDestroy(ctx->uploaded[k]);
        if (ctx->released[k]) cudaEventDestroy(ctx->released[k]);
    }
    ctx->input = NULL;
    dn_cuda_release_products(ctx);
    if (ctx->loss_host) cudaFreeHost(ctx->loss_host);
    dev_free(&ctx->grad_block);
    ctx->grad_block_n = 0;
    ctx->grads_on_host = 0;
    dev_free(&ctx->input_delta);
    dev_free(&ctx->workspace);
    dn_cuda_free_plans(ctx);
    free(ctx->plans);
    free(ctx->plan_release);
#ifdef DN_CUDNN
    if (ctx->dnn) cudnnDestroy(ctx->dnn);
#endif
    if (ctx->blas) cublasDestroy(ctx->blas);
    if (ctx->stream) cudaStreamSynchronize(ctx->stream);
    if (ctx->upload) cudaStreamDestroy(ctx->upload);
    if (ctx->stream) cudaStreamDestroy(ctx->stream);
    if (thread_stream == ctx->stream) thread_stream = 0;
    cudaGetLastError(); /* what failed on the way out is not the next call's */
    free(ctx->delta_dirty);
    free(ctx->pinned);
    free(ctx);
    net->cuda = NULL;
    net->backend = &dn_cpu_backend;
}

/* ---- helpers for the layers ---- */
const float *dn_gpu_input(const dn_net *net, const dn_layer *l)
{
    return l->index == 0 ? net->cuda->input : net->layers[l->index - 1]->output_gpu;
}

float *dn_gpu_input_delta(const dn_net *net, const dn_layer *l)
{
    return l->index == 0 ? net->cuda->input_delta : net->layers[l->index - 1]->delta_gpu;
}

dn_status dn_gpu_buffer(dn_layer *l, int slot, size_t n, float **out)
{
    if (l->gpu_buf[slot] && l->gpu_cap[slot] >= n) {
        *out = l->gpu_buf[slot];
        return DN_OK;
    }
    dev_free(&l->gpu_buf[slot]);
    l->gpu_cap[slot] = 0;
    dn_status s = dev_alloc(&l->gpu_buf[slot], n, "layer scratch");
    if (s) return dn_layer_fail(l, s, "%s", dn_last_error());
    l->gpu_cap[slot] = n;
    *out = l->gpu_buf[slot];
    return DN_OK;
}

dn_status dn_gpu_buffer_bytes(dn_layer *l, int slot, size_t bytes, void **out)
{
    float *p;
    const dn_status s = dn_gpu_buffer(l, slot, (bytes + sizeof(float) - 1) / sizeof(float), &p);
    if (!s) *out = p;
    return s;
}

dn_status dn_gpu_activation_delta(dn_layer *l, dn_activation act, int channels, int spatial, const float **out)
{
    *out = l->delta_gpu;
    if (act == DN_ACT_LINEAR) return DN_OK;
    const size_t n = (size_t)l->batch * channels * spatial;
    const int needs_x = dn_activation_needs_input(act);
    if (needs_x && l->gpu_cap[0] < n)
        return dn_layer_fail(l, DN_ERR_STATE, "no training forward pass kept the pre-activation values");
    float *g;
    dn_status s = dn_gpu_buffer(l, 1, n, &g);
    if (s) return s;
    dn_gpu_copy(g, l->delta_gpu, n);
    dn_gpu_activation_backward(l->output_gpu, needs_x ? l->gpu_buf[0] : NULL, g, l->batch, channels, spatial, act);
    *out = g;
    return DN_OK;
}

dn_status dn_gpu_workspace(dn_net *net, size_t n, float **out)
{
    dn_cuda *ctx = net->cuda;
    if (!ctx->workspace || ctx->workspace_n < n) {
        dev_free(&ctx->workspace);
        ctx->workspace_n = 0;
        dn_status s = dev_alloc(&ctx->workspace, n, "the workspace");
        if (s) return s;
        ctx->workspace_n = n;
    }
    *out = ctx->workspace;
    return DN_OK;
}

dn_status dn_gpu_check(const dn_layer *l, const char *what)
{
    const cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) return dn_layer_fail(l, DN_ERR_STATE, "CUDA %s: %s", what, cudaGetErrorString(e));
    return DN_OK;
}

static dn_status layer_done(dn_net *net, dn_layer *l, const char *what)
{
    if (net->cuda->sync_each) {
        const cudaError_t e = cudaDeviceSynchronize();
        if (e != cudaSuccess) return dn_layer_fail(l, DN_ERR_STATE, "CUDA %s: %s", what, cudaGetErrorString(e));
    }
    return dn_gpu_check(l, what);
}

/* ---- host copies ---- */
static dn_status pull_output(dn_net *net, dn_layer *l)
{
    if (!l->host_stale) return DN_OK;
    dn_status s = dn_cuda_use_device(net);
    if (!s) s = pull(l->output, l->output_gpu, (size_t)net->batch * l->outputs);
    if (!s) l->host_stale = 0;
    return s;
}

static float *host_delta(dn_net *net, int layer) { return layer == net->nlayers ? net->input_delta : net->layers[layer]->delta; }
static float *device_delta(dn_net *net, int layer)
{
    return layer == net->nlayers ? net->cuda->input_delta : net->layers[layer]->delta_gpu;
}
static size_t delta_count(const dn_net *net, int layer)
{
    return layer == net->nlayers ? net->cuda->input_n : (size_t)net->batch * net->layers[layer]->outputs;
}

static dn_status pull_delta(dn_net *net, int layer)
{
    if (net->cuda->delta_dirty[layer]) return DN_OK; /* already handed out: the caller may have written it */
    dn_status s = dn_cuda_use_device(net);
    if (!s) s = pull(host_delta(net, layer), device_delta(net, layer), delta_count(net, layer));
    if (!s) net->cuda->delta_dirty[layer] = 1;
    return s;
}

static dn_status pull_param(dn_net *net, dn_param *p)
{
    if (p->host_dirty) return DN_OK; /* already handed out: the host copy is the current one */
    dn_status s = dn_cuda_use_device(net);
    if (!s) s = pull(p->data, p->data_gpu, p->count);
    if (!s && !net->cuda->grads_on_host) s = pull(p->grad, p->grad_gpu, p->count); /* (else the host's is current) */
    if (!s) s = pull(p->m, p->m_gpu, p->count);
    if (!s) s = pull(p->v, p->v_gpu, p->count);
    if (!s) p->host_dirty = 1;
    return s;
}

/* The host gradient block brought up to date in one copy (what was handed out goes to the device first, so the
 * copy carries it back), for the gradient hooks, which may rewrite it; it goes back in one copy too. */
static dn_status pull_gradients(dn_net *net)
{
    dn_cuda *ctx = net->cuda;
    if (ctx->grads_on_host) return DN_OK;
    dn_status s = dn_cuda_use_device(net);
    if (!s) s = dn_cuda_push_dirty(net);
    if (s) return s;
    if (!ctx->grad_block) return DN_OK; /* no gradients */
    if ((s = pull(net->grad_arena, ctx->grad_block, ctx->grad_block_n))) return s;
    ctx->grads_on_host = 1;
    return DN_OK;
}

/* Parameters and deltas handed out to the caller go back to the device. */
dn_status dn_cuda_push_dirty(dn_net *net)
{
    dn_status s = DN_OK;
    for (int i = 0; i < net->nlayers && !s; ++i) {
        dn_layer *l = net->layers[i];
        for (int j = 0; j < l->nparams && !s; ++j) {
            dn_param *p = &l->params[j];
            if (!p->host_dirty) continue;
            if ((s = alloc_param(net, p))) break;
            if (!s) s = push(p->data_gpu, p->data, p->count);
            if (!s) s = push(p->grad_gpu, p->grad, p->count);
            if (!s) s = push(p->m_gpu, p->m, p->count);
            if (!s) s = push(p->v_gpu, p->v, p->count);
            if (!s) p->host_dirty = 0;
        }
    }
    if (!s && net->cuda->grads_on_host) {
        s = push(net->cuda->grad_block, net->grad_arena, net->cuda->grad_block_n);
        if (!s) net->cuda->grads_on_host = 0;
    }
    for (int i = 0; i <= net->nlayers && !s; ++i) {
        if (!net->cuda->delta_dirty[i]) continue;
        s = push(device_delta(net, i), host_delta(net, i), delta_count(net, i));
        if (!s) net->cuda->delta_dirty[i] = 0;
    }
    return s;
}

/* ---- the host pass of a layer ---- */
/* Calls fn(net, layer index) for every layer l reads from besides its own
 * output: the previous layer (or the network input, index nlayers) and the
 * layers its `layers` or `from` option names. */
static dn_status for_sources(dn_net *net, dn_layer *l, dn_status (*fn)(dn_net *, int))
{
    dn_status s = fn(net, l->index == 0 ? net->nlayers : l->index - 1);
    static const char *const keys[] = {"layers", "from"};
    for (int k = 0; k < 2 && !s; ++k) {
        if (!dn_attr_has(l, keys[k])) continue;
        const int *idx;
        int n;
        if ((s = dn_attr_ints(l, keys[k], &idx, &n))) return s;
        for (int i = 0; i < n && !s; ++i)
            if (idx[i] >= 0 && idx[i] < l->index) s = fn(net, idx[i]);
    }
    return s;
}

static dn_status pull_source_output(dn_net *net, int i)
{
    return i == net->nlayers ? DN_OK : pull_output(net, net->layers[i]); /* the input is on the host */
}

static dn_status pull_source_delta(dn_net *net, int i)
{
    return pull(host_delta(net, i), device_delta(net, i), delta_count(net, i));
}

static dn_status push_source_delta(dn_net *net, int i)
{
    return push(device_delta(net, i), host_delta(net, i), delta_count(net, i));
}

dn_status dn_gpu_pull_sources(dn_net *net, dn_layer *l)
{
    dn_status s = for_sources(net, l, pull_source_output);
    return s ? s : pull_output(net, l);
}

int dn_gpu_loss_on_device(void)
{
    const char *v = getenv("PYDARKNET_LOSS");
    return v && !strcmp(v, "device");
}

dn_status dn_gpu_host_loss(dn_net *net, dn_layer *l)
{
    dn_status s = for_sources(net, l, pull_source_output);
    if (!s) s = l->ops->forward(l, net);
    if (!s) l->host_stale = 0;
    if (!s && l->has_loss) s = push(l->delta_gpu, l->delta, (size_t)net->batch * l->outputs);
    return s;
}

dn_status dn_gpu_host_forward(dn_net *net, dn_layer *l)
{
    const size_t n = (size_t)net->batch * l->outputs;
    dn_status s = for_sources(net, l, pull_source_output);
    for (int j = 0; j < l->nparams && !s; ++j) s = pull(l->params[j].data, l->params[j].data_gpu, l->params[j].count);
    if (!s) s = l->ops->forward(l, net);
    if (!s) s = push(l->output_gpu, l->output, n);
    if (!s) l->host_stale = 0;
    if (!s && net->train) {
        /* loss heads with truths leave their delta (without, the zeroed device delta stands); training passes
         * move rolling statistics */
        if (l->is_loss && net->truth) s = push(l->delta_gpu, l->delta, n);
        for (int j = 0; j < l->nparams && !s; ++j) s = push(l->params[j].data_gpu, l->params[j].data, l->params[j].count);
    }
    return s;
}

dn_status dn_gpu_host_backward(dn_net *net, dn_layer *l)
{
    dn_status s = pull(l->delta, l->delta_gpu, (size_t)net->batch * l->outputs);
    if (!s) s = for_sources(net, l, pull_source_delta);
    for (int j = 0; j < l->nparams && !s; ++j) s = pull(l->params[j].grad, l->params[j].grad_gpu, l->params[j].count);
    if (!s) s = l->ops->backward(l, net);
    if (!s) s = for_sources(net, l, push_source_delta);
    for (int j = 0; j < l->nparams && !s; ++j) s = push(l->params[j].grad_gpu, l->params[j].grad, l->params[j].count);
    return s;
}

/* ---- passes ---- */
/* The pass's input to the device: on the upload stream, through buffer k's page-locked staging, after the
 * passes that read buffer k before are done (its `released` event), the pass's work on the network's stream
 * waiting for the copy (its `uploaded` event); or by a plain copy. A training pass takes the other buffer than
 * the pass before, so its input goes up while the device still runs that pass (the host arrives early: the
 * backward pass and the update are queued, not waited for); an inference pass always takes buffer 0 (a CUDA
 * graph reads it). The input goes in pieces: the worker threads copy a piece into the staging buffer while the
 * device copies the one before, so the host copy and the transfer overlap. */
#define STAGE_PIECES 8
#define STAGE_MIN_PIECE ((size_t)1 << 18) /* floats */
static dn_status push_input(dn_net *net)
{
    dn_cuda *ctx = net->cuda;
    /* the last pass's buffer: free once the work queued so far is done */
    cudaError_t e = cudaEventRecord(ctx->released[ctx->input_k], ctx->stream);
    if (e != cudaSuccess) return dn_cuda_fail(e, "recording an event");
    if (net->train && !ctx->inputs[1] && input_buffer(ctx, 1)) {
        dev_free(&ctx->inputs[1]); /* no room for a second buffer: the passes take turns with one */
        cudaGetLastError();
    }
    const int k = net->train && ctx->inputs[1] ? ctx->input_k ^ 1 : 0;
    float *dev = ctx->inputs[k], *staging = ctx->staging[k];
    ctx->input_k = k;
    ctx->input = dev;
    const size_t n = ctx->input_n;
    if (!staging) return push(dev, net->input, n); /* on the network's stream, after the work before */
    e = ctx->upload_pending[k] ? cudaEventSynchronize(ctx->uploaded[k]) : cudaSuccess;
    ctx->upload_pending[k] = 0;
    if (e != cudaSuccess) return dn_cuda_fail(e, "waiting for the previous input copy");
    if ((e = cudaStreamWaitEvent(ctx->upload, ctx->released[k], 0)) != cudaSuccess)
        return dn_cuda_fail(e, "ordering the input copy");
    size_t piece = (n + STAGE_PIECES - 1) / STAGE_PIECES;
    if (piece < STAGE_MIN_PIECE) piece = STAGE_MIN_PIECE;
    for (size_t i = 0; i < n && e == cudaSuccess; i += piece) {
        const size_t m = n - i < piece ? n - i : piece;
        dn_parallel_copy(net, staging + i, net->input + i, m);
        e = cudaMemcpyAsync(dev + i, staging + i, m * sizeof(float), cudaMemcpyHostToDevice, ctx->upload);
    }
    if (e == cudaSuccess) e = cudaEventRecord(ctx->uploaded[k], ctx->upload);
    if (e == cudaSuccess) ctx->upload_pending[k] = 1;
    if (e == cudaSuccess) e = cudaStreamWaitEvent(ctx->stream, ctx->uploaded[k], 0);
    return e == cudaSuccess ? DN_OK : dn_cuda_fail(e, "copying the input to the device");
}

/* Before a forward pass: what the caller wrote goes back to the device, the
 * input goes there, every host output is stale, and a training pass zeroes
 * the device deltas (the host deltas are written whole before they are read:
 * by pull_delta, the host passes' pulls and the loss heads, which set theirs). */
static dn_status begin_forward(dn_net *net)
{
    dn_cuda *ctx = net->cuda;
    dn_status s = dn_cuda_use_device(net);
    if (!s) s = dn_cuda_push_dirty(net);
    if (!s) s = push_input(net);
    if (s) return s;
    for (int i = 0; i < net->nlayers; ++i) {
        dn_layer *l = net->layers[i];
        l->host_stale = 1;
        if (net->train && l->delta_gpu) dn_gpu_fill(l->delta_gpu, (size_t)net->batch * l->outputs, 0.f);
    }
    if (net->train && ctx->input_delta) dn_gpu_fill(ctx->input_delta, ctx->input_n, 0.f);
    return DN_OK;
}

static dn_status launch_graph(dn_cuda *ctx)
{
    const cudaError_t e = cudaGraphLaunch(ctx->graph, ctx->stream);
    if (e != cudaSuccess) return dn_cuda_fail(e, "launching the forward pass's graph");
    ctx->graph_launches++;
    return DN_OK;
}

/* An inference pass's layers as a CUDA graph (PYDARKNET_CUDA_GRAPHS=1): the first pass at a memory layout runs
 * them as usual (allocations, cuDNN's algorithm search and plans settle there); the next one captures what the
 * loop launches on the network's stream into a graph instead of running it, and launches the graph; the passes
 * after launch it again while the layout stands. The graph holds the kernels' arguments and the device pointers,
 * which a layout change (any allocation, a plan released, cuDNN switched) may move: then it goes, and the cycle
 * starts again. A pass that cannot be captured (a layer copying to or from the host, a library call that
 * refuses) is run again as usual, and its layout is not tried again. Training passes, profiled passes (they
 * synchronize per layer) and PYDARKNET_CUDA_SYNC run as usual. */
static dn_status run_layers(dn_net *net, dn_status (*layers)(dn_net *))
{
    dn_cuda *ctx = net->cuda;
    if (!ctx->graphs || net->train || net->profiling || ctx->sync_each) return layers(net);
    const unsigned long long layout = current_layout();
    if (ctx->graph && ctx->graph_layout == layout) return launch_graph(ctx);
    drop_graph(ctx);
    if (ctx->warm_layout != layout || ctx->no_graph_layout == layout) {
        const dn_status s = layers(net);
        ctx->warm_layout = current_layout();
        return s;
    }
    if (cudaStreamBeginCapture(ctx->stream, cudaStreamCaptureModeThreadLocal) != cudaSuccess) {
        cudaGetLastError();
        ctx->no_graph_layout = layout;
        return layers(net);
    }
    const dn_status s = layers(net);
    cudaGraph_t g = NULL;
    cudaError_t e = cudaStreamEndCapture(ctx->stream, &g);
    if (!s && e == cudaSuccess && g && current_layout() == layout)
        e = cudaGraphInstantiate(&ctx->graph, g, 0);
    else
        e = cudaErrorStreamCaptureInvalidated;
    if (g) cudaGraphDestroy(g);
    if (e != cudaSuccess) {
        ctx->graph = NULL;
        cudaGetLastError(); /* a refused capture is not an error of the pass */
        ctx->no_graph_layout = layout;
        return layers(net);
    }
    ctx->graph_layout = layout;
    return launch_graph(ctx);
}

static dn_status layer_forward(dn_net *net, dn_layer *l)
{
    return l->ops->forward_gpu ? l->ops->forward_gpu(l, net) : dn_gpu_host_forward(net, l);
}

static dn_status begin_backward(dn_net *net)
{
    dn_status s = dn_cuda_use_device(net);
    return s ? s : dn_cuda_push_dirty(net);
}

static dn_status layer_backward(dn_net *net, dn_layer *l)
{
    return l->ops->backward_gpu ? l->ops->backward_gpu(l, net) : dn_gpu_host_backward(net, l);
}

/* (begin_update sent what the host was handed back to the device) */
static dn_status update(dn_net *net, dn_param *p, const dn_update_args *a)
{
    const dn_status s = dn_cuda_use_device(net);
    if (s) return s;
    if (!p->grad_gpu || !p->m_gpu || (a->adam && !p->v_gpu))
        return dn_fail(DN_ERR_STATE, "parameter '%s' has no optimizer state on the device", p->name);
    dn_gpu_update_kernel(p->data_gpu, p->grad_gpu, p->m_gpu, p->v_gpu, p->count, a);
    const cudaError_t e = cudaGetLastError();
    return e == cudaSuccess ? DN_OK : dn_cuda_fail(e, "the optimizer update");
}

/* the device gradients zeroed, and the host copies where they were handed out (they go back to the device) */
static dn_status zero_grads(dn_net *net, dn_layer *l)
{
    dn_status s = dn_cuda_use_device(net);
    for (int j = 0; j < l->nparams && !s; ++j) {
        dn_param *p = &l->params[j];
        if (p->grad_gpu) dn_gpu_fill(p->grad_gpu, p->count, 0.f);
        if (p->grad && (p->host_dirty || net->cuda->grads_on_host)) memset(p->grad, 0, p->count * sizeof(float));
    }
    const cudaError_t e = cudaGetLastError();
    return s ? s : (e == cudaSuccess ? DN_OK : dn_cuda_fail(e, "zeroing the gradients"));
}

static dn_status synchronize(dn_net *net)
{
    dn_status s = dn_cuda_use_device(net);
    const cudaError_t e = s ? cudaSuccess : cudaDeviceSynchronize();
    return s ? s : (e == cudaSuccess ? DN_OK : dn_cuda_fail(e, "synchronizing"));
}

const dn_backend dn_cuda_backend = {
    "CUDA",
    gpu_allocate,
    begin_forward,
    run_layers,
    layer_forward,
    begin_backward,
    layer_backward,
    layer_done,
    pull_output,
    pull_delta,
    pull_param,
    pull_gradients,
    zero_grads,
    dn_cuda_begin_update,
    update,
    synchronize,
};

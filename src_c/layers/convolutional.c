/* convolutional.c - [convolutional]
 *
 * Input [B][C][H][W], output [B][N][OH][OW] with N = filters and
 * OH = (H + 2*padding - size) / stride_y + 1, OW likewise with stride_x (darknet's
 * formula; dilation d spreads the kernel taps d pixels apart and pads by
 * padding*d). Weights [N][C/groups][size][size]; for each image and group g:
 *     z_g = W_g (N/groups x K) * im2col(in_g) (K x OH*OW),  K = C/groups*size*size
 * (a 1x1 kernel with stride 1 and no padding uses the input as the columns).
 * Then either a = z + bias, or with batch_normalize
 *     a = scale * (z - mean) / sqrt(var + .00001) + bias,
 * mean and var per filter being the rolling statistics in inference, and in a
 * training pass the batch's (over B*OH*OW values, the variance unbiased, see
 * dn_batchnorm_forward_train), which also move the rolling statistics
 * (.9*rolling + .1*batch, darknet's CPU constants). Output y = activation(a).
 *
 * Backward, given delta = dLoss/dy (turned in place into dLoss/da, then
 * dLoss/dz): dLoss/da = delta * f'(a); bias grad += sum of dLoss/da over
 * images and pixels; with batch_normalize, scale grad += sum dLoss/da * z_norm
 * and dLoss/dz is the exact derivative through the batch statistics
 * (dn_batchnorm_backward). Then per image and group:
 *     weight grad W_g += dLoss/dz_g * im2col(in_g)^T
 *     input delta    += col2im(W_g^T * dLoss/dz_g)
 * Parameters in darknet's file order: biases, scales, rolling_mean,
 * rolling_variance (the three only with batch_normalize), weights; weights
 * are trained with decay, biases and scales without, the rolling statistics
 * not at all.
 *
 * The code below the plain passes is the reference. With DN_SPEED_THREADS
 * the passes run split over the network's worker threads: the GEMMs as tiles
 * (ops/conv_tiled.c; on AVX-512 or AVX2 + FMA CPUs the packed kernel with im2col folded
 * into its packing), inference batch norm folded into a per-filter scale and
 * bias applied with the activation on each tile (DN_SPEED_FUSE), Winograd for
 * 3x3 stride-1 layers in inference (ops/winograd.c), per-channel batch norm,
 * bias and activation forward and backward (ops/bn_fused.c), and the weight
 * and input gradients (ops/conv_backward.c). */
#include "../ops/ops.h"
#include "cuda.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    int filters, size, stride_x, stride_y, padding, groups, dilation, batch_normalize;
    dn_activation activation;
    float *biases, *scales, *rolling_mean, *rolling_variance, *weights;
    /* kept by a training pass for backward: the pre-activation (when the
     * activation's derivative needs it), the normalized z, batch statistics */
    float *x, *x_norm, *mean, *variance;
    size_t x_cap, x_norm_cap, mean_cap, variance_cap;
    float *fold_scale, *fold_bias; /* inference batch norm folded per filter (DN_SPEED_FUSE) */
    int trained; /* the last forward pass was a training pass at the current shape */
    double *sync_sums; /* synchronized batch norm: the per-channel sums (2 per filter, and the count) */
    double sync_count; /* the values the last synchronized forward pass normalized over (every process's) */
    int synced;        /* the last training forward pass was synchronized */
    int winograd;      /* setup sized the workspace for Winograd (the CPU kernel at setup allowed it) */
    int direct;        /* and for the direct convolution (ops/conv_tiled.c) */
    void *wino_cache;  /* Winograd's transformed filters (ops/winograd.c), made at the first such pass */
    char algo_key[256]; /* the tuning key of the last fused inference pass, its algorithm and the */
    int algo;           /* tuning settings' generation it was looked up in (no lookup while they hold) */
    unsigned algo_generation;
} conv_state;

static dn_status conv_make(dn_layer *l, dn_net *net)
{
    (void)net;
    conv_state *s = dn_layer_priv(l, sizeof(conv_state));
    if (!s) return DN_ERR_NOMEM;
    if (dn_layer_owns(l, &s->x, &s->x_norm, &s->mean, &s->variance, &s->fold_scale, &s->fold_bias, &s->sync_sums,
                      &s->wino_cache, NULL))
        return DN_ERR_ARG;
    const char *act;
    dn_status st;
    if ((st = dn_attr_int(l, "filters", &s->filters)) || (st = dn_attr_int(l, "size", &s->size)) ||
        (st = dn_attr_int(l, "stride_x", &s->stride_x)) || (st = dn_attr_int(l, "stride_y", &s->stride_y)) ||
        (st = dn_attr_int(l, "padding", &s->padding)) || (st = dn_attr_int(l, "groups", &s->groups)) ||
        (st = dn_attr_int(l, "dilation", &s->dilation)) ||
        (st = dn_attr_int(l, "batch_normalize", &s->batch_normalize)) || (st = dn_attr_string(l, "activation", &act)))
        return st;
    if ((st = dn_activation_from_name(act, &s->activation))) return dn_layer_fail(l, st, "unknown activation '%s'", act);
    if (s->filters < 1 || s->size < 1 || s->stride_x < 1 || s->stride_y < 1 || s->groups < 1 || s->dilation < 1 ||
        s->padding < 0)
        return dn_layer_fail(l, DN_ERR_ARG,
                             "filters, size, stride, groups and dilation must be positive and padding >= 0 "
                             "(filters=%d size=%d stride_x=%d stride_y=%d groups=%d dilation=%d padding=%d)",
                             s->filters, s->size, s->stride_x, s->stride_y, s->groups, s->dilation, s->padding);
    if (l->c % s->groups || s->filters % s->groups)
        return dn_layer_fail(l, DN_ERR_SHAPE, "groups=%d must divide the input channels (%d) and filters (%d)", s->groups,
                             l->c, s->filters);
    const size_t n = (size_t)s->filters;
    if ((st = dn_layer_add_param_flags(l, "biases", n, DN_PARAM_TRAIN, &s->biases))) return st;
    if (s->batch_normalize) {
        if ((st = dn_layer_add_param_flags(l, "scales", n, DN_PARAM_TRAIN, &s->scales)) ||
            (st = dn_layer_add_param_flags(l, "rolling_mean", n, 0, &s->rolling_mean)) ||
            (st = dn_layer_add_param_flags(l, "rolling_variance", n, 0, &s->rolling_variance)))
            return st;
        for (size_t i = 0; i < n; ++i) s->scales[i] = s->rolling_variance[i] = 1.f;
    }
    s->fold_scale = dn_calloc(n, sizeof(float));
    s->fold_bias = dn_calloc(n, sizeof(float));
    s->sync_sums = dn_calloc(2 * n + 1, sizeof(double));
    if (!s->fold_scale || !s->fold_bias || !s->sync_sums) return dn_layer_fail(l, DN_ERR_NOMEM, "out of memory");
    return dn_layer_add_param_flags(l, "weights", n * (size_t)(l->c / s->groups) * s->size * s->size,
                                    DN_PARAM_TRAIN | DN_PARAM_DECAY, &s->weights);
}

static dn_conv_desc describe(const dn_layer *l, const conv_state *s)
{
    dn_conv_desc d;
    d.batch = l->batch;
    d.c = l->c;
    d.h = l->h;
    d.w = l->w;
    d.out_h = l->out_h;
    d.out_w = l->out_w;
    d.filters = s->filters;
    d.groups = s->groups;
    d.size = s->size;
    d.stride_x = s->stride_x;
    d.stride_y = s->stride_y;
    d.pad = s->padding * s->dilation;
    d.dilation = s->dilation;
    d.weights = s->weights;
    return d;
}

static int elementwise(dn_activation a)
{
    return a != DN_ACT_NORM_CHAN && a != DN_ACT_NORM_CHAN_SOFTMAX && a != DN_ACT_NORM_CHAN_SOFTMAX_MAXVAL;
}

/* ---- the passes with the worker threads (DN_SPEED_THREADS) ---- */

static float *grad_of(const dn_layer *l, const float *data);

typedef struct {
    dn_bn_channel p;
    int grain;
    float *delta, *bias_grad, *scale_grad;
} channel_job;

static void channel_forward_task(void *ctx, int task, int worker)
{
    (void)worker;
    const channel_job *j = ctx;
    const int c0 = task * j->grain, c1 = c0 + j->grain < j->p.channels ? c0 + j->grain : j->p.channels;
    for (int c = c0; c < c1; ++c) dn_bn_forward_channel(&j->p, c);
}

static void channel_backward_task(void *ctx, int task, int worker)
{
    (void)worker;
    const channel_job *j = ctx;
    const int c0 = task * j->grain, c1 = c0 + j->grain < j->p.channels ? c0 + j->grain : j->p.channels;
    for (int c = c0; c < c1; ++c) dn_bn_backward_channel(&j->p, c, j->delta, j->bias_grad, j->scale_grad);
}

static channel_job channel_setup(dn_layer *l, conv_state *s, int train)
{
    channel_job j;
    memset(&j, 0, sizeof(j));
    dn_bn_channel *p = &j.p;
    p->batch = l->batch;
    p->channels = l->out_c;
    p->spatial = l->out_h * l->out_w;
    p->train = train;
    p->batch_normalize = s->batch_normalize;
    p->keep_x = train && dn_activation_needs_input(s->activation);
    p->elementwise = elementwise(s->activation);
    p->activation = s->activation;
    p->x = l->output;
    p->pre = s->x;
    p->x_norm = s->x_norm;
    p->mean = s->mean;
    p->variance = s->variance;
    p->rolling_mean = s->rolling_mean;
    p->rolling_variance = s->rolling_variance;
    p->scales = s->scales;
    p->biases = s->biases;
    /* a few channels per task, enough work each */
    const size_t per_channel = (size_t)l->batch * p->spatial;
    j.grain = per_channel >= 16384 ? 1 : (int)(16384 / per_channel);
    return j;
}

/* ---- synchronized batch norm (sync_bn with the network's reduce hook): the channels' passes in phases, the
 * sums added over every process between them (dn_bn_channel) ---- */

static dn_status reduce(dn_net *net, dn_layer *l, double *values, size_t count)
{
    const dn_status st = net->reduce_hook(net, net->reduce_hook_user, values, count);
    return st ? dn_layer_fail(l, st, "synchronized batch norm: summing over the processes failed: %s",
                              dn_last_error())
              : DN_OK;
}

static dn_status sync_forward(dn_layer *l, dn_net *net, conv_state *s, channel_job *j)
{
    const int C = l->out_c;
    const int tasks = dn_ntasks((size_t)C, (size_t)j->grain);
    double *sums = s->sync_sums;
    dn_status st;
    j->p.sums = sums;
    j->p.phase = 1;
    dn_parallel(net, tasks, channel_forward_task, j);
    sums[C] = (double)l->batch * l->out_h * l->out_w;
    if ((st = reduce(net, l, sums, (size_t)C + 1))) return st;
    const double count = sums[C];
    if (count < 2) return dn_layer_fail(l, DN_ERR_SHAPE, "synchronized batch norm over %g values", count);
    for (int c = 0; c < C; ++c) s->mean[c] = (float)(sums[c] / count);
    j->p.phase = 2;
    dn_parallel(net, tasks, channel_forward_task, j);
    if ((st = reduce(net, l, sums, (size_t)C))) return st;
    const float rolling[2] = {DN_BN_ROLLING};
    for (int c = 0; c < C; ++c) {
        s->variance[c] = (float)(sums[c] / (count - 1));
        s->rolling_mean[c] = rolling[0] * s->rolling_mean[c] + rolling[1] * s->mean[c];
        s->rolling_variance[c] = rolling[0] * s->rolling_variance[c] + rolling[1] * s->variance[c];
    }
    j->p.phase = 3;
    dn_parallel(net, tasks, channel_forward_task, j);
    s->sync_count = count;
    return DN_OK;
}

static dn_status sync_backward(dn_layer *l, dn_net *net, conv_state *s, channel_job *j)
{
    const int tasks = dn_ntasks((size_t)l->out_c, (size_t)j->grain);
    dn_status st;
    j->p.sums = s->sync_sums;
    j->p.phase = 1;
    dn_parallel(net, tasks, channel_backward_task, j);
    if ((st = reduce(net, l, s->sync_sums, 2 * (size_t)l->out_c))) return st;
    j->p.phase = 2;
    j->p.count = s->sync_count;
    dn_parallel(net, tasks, channel_backward_task, j);
    return DN_OK;
}

/* after the convolution: batch norm (the batch's statistics in training), bias and activation by channels on the
 * worker threads, the statistics synchronized over the processes when the layer asks */
/* a training pass's batch-norm scratch (batch statistics, x_norm); a mini-batch of a single value per filter is
 * refused unless its statistics are every process's (sync) */
static dn_status bn_training_buffers(dn_layer *l, conv_state *s, int sync)
{
    const size_t total = (size_t)l->batch * l->outputs;
    dn_status st;
    if ((size_t)l->batch * l->out_h * l->out_w < 2 && !sync)
        return dn_layer_fail(l, DN_ERR_SHAPE,
                             "batch normalization in training needs at least 2 values per filter "
                             "(batch %d x %d x %d)", l->batch, l->out_h, l->out_w);
    if ((st = dn_ensure_floats(&s->mean, &s->mean_cap, (size_t)l->out_c)) ||
        (st = dn_ensure_floats(&s->variance, &s->variance_cap, (size_t)l->out_c)) ||
        (st = dn_ensure_floats(&s->x_norm, &s->x_norm_cap, total)))
        return st;
    return DN_OK;
}

static dn_status channels_forward(dn_layer *l, dn_net *net, conv_state *s, int sync)
{
    const int N = l->out_h * l->out_w;
    const size_t total = (size_t)l->batch * l->outputs;
    const int keep_x = net->train && dn_activation_needs_input(s->activation);
    dn_status st;
    if (s->batch_normalize && net->train && (st = bn_training_buffers(l, s, sync))) return st;
    if (keep_x && (st = dn_ensure_floats(&s->x, &s->x_cap, total))) return st;
    channel_job j = channel_setup(l, s, net->train);
    if (sync) {
        if ((st = sync_forward(l, net, s, &j))) return st;
    } else {
        dn_parallel(net, dn_ntasks((size_t)l->out_c, (size_t)j.grain), channel_forward_task, &j);
    }
    if (!elementwise(s->activation)) {
        if (keep_x) memcpy(s->x, l->output, total * sizeof(float));
        dn_activate(l->output, l->batch, l->out_c, N, s->activation);
    }
    s->synced = sync;
    return DN_OK;
}

/* before the convolution's gradients: the activation's, the bias and scale gradients and batch norm's by channels
 * (synchronized when the forward pass was) */
static dn_status channels_backward(dn_layer *l, dn_net *net, conv_state *s)
{
    const int N = l->out_h * l->out_w;
    if (!elementwise(s->activation))
        dn_activation_backward(l->output, s->x, l->delta, l->batch, l->out_c, N, s->activation);
    channel_job j = channel_setup(l, s, 1);
    j.delta = l->delta;
    j.bias_grad = grad_of(l, s->biases);
    j.scale_grad = s->batch_normalize ? grad_of(l, s->scales) : NULL;
    if (s->synced && s->batch_normalize) {
        if (!net->reduce_hook)
            return dn_layer_fail(l, DN_ERR_STATE, "the forward pass was synchronized over processes, the "
                                                  "backward pass has no reduce hook");
        return sync_backward(l, net, s, &j);
    }
    dn_parallel(net, dn_ntasks((size_t)l->out_c, (size_t)j.grain), channel_backward_task, &j);
    return DN_OK;
}

/* ---- the inference algorithm: a fixed rule, or measured on this machine ----
 * A fused inference pass computes the same thing four ways: Winograd
 * (ops/winograd.c, 3x3 stride-1 layers with enough tiles), the packed kernel
 * (ops/conv_tiled.c on AVX-512 or AVX2 + FMA), OpenBLAS per tile, and the
 * direct convolution (conv_tiled.c: stride 1, few channels; the packed
 * kernel's bits). The rule takes the first of the first three that the
 * layer, the CPU and the speed bits allow (direct only when measured);
 * which is fastest depends on the CPU (cache sizes, FMA width, OpenBLAS's
 * kernel for it), so with tuning on (core/tuning.c) the first pass at a shape
 * times every allowed one on its real input and keeps the fastest (the rule's
 * unless another is 5 % faster), and the layer's output is the kept one's. */
enum { ALGO_WINOGRAD, ALGO_PACKED, ALGO_BLAS, ALGO_DIRECT, ALGO_COUNT }; /* the rule's order; direct only measured */
static const char *const ALGORITHM_NAMES[ALGO_COUNT] = {"winograd", "packed", "blas", "direct"};
#define TUNE_ROUNDS 3    /* timed runs of each, after one untimed, and more for small layers: */
#define TUNE_SECONDS 2e-3 /* until each has run this long in all (the timer's noise), */
#define TUNE_MAX_ROUNDS 25 /* or this many rounds */
#define TUNE_MARGIN 0.95 /* another algorithm must take at most this share of the rule's time */

static unsigned algorithms_here(const dn_net *net, conv_state *s, const dn_conv_desc *d)
{
    unsigned m = 1u << ALGO_BLAS;
    const int packed = (net->speed & DN_SPEED_KERNEL) && dn_packed_gemm_available();
    if (packed) m |= 1u << ALGO_PACKED;
    if (packed && (net->speed & DN_SPEED_WINOGRAD) && s->winograd && dn_winograd_applies(d)) m |= 1u << ALGO_WINOGRAD;
    if (packed && s->direct && dn_conv_direct_applies(d)) m |= 1u << ALGO_DIRECT;
    return m;
}

static int rule_of(unsigned algos)
{
    for (int a = 0; a < ALGO_COUNT; ++a)
        if (algos & (1u << a)) return a;
    return ALGO_BLAS;
}

/* runs `algo`; returns the one that ran: Winograd's kept filters are 4x the
 * weights, made at its first pass, and without the memory for them the
 * packed kernel computes the same (within rounding) */
static int run_algorithm(const dn_net *net, const dn_layer *l, conv_state *s, const dn_conv_desc *d,
                         const float *input, int algo)
{
    if (algo == ALGO_WINOGRAD && !s->wino_cache) s->wino_cache = dn_calloc(1, dn_winograd_cache_bytes(d));
    if (algo == ALGO_WINOGRAD && !s->wino_cache) algo = ALGO_PACKED;
    if (algo == ALGO_WINOGRAD)
        dn_winograd_forward(net, l, d, s->wino_cache, input, l->output, s->fold_scale, s->fold_bias, s->activation);
    else if (algo == ALGO_DIRECT)
        dn_conv_direct_forward(net, l, d, input, l->output, s->fold_scale, s->fold_bias, s->activation);
    else
        dn_conv_tiled_forward_on(net, l, d, input, l->output, s->fold_scale, s->fold_bias, s->activation,
                                 algo == ALGO_PACKED);
    return algo;
}

static int algorithm_named(const char *name, unsigned algos)
{
    for (int a = 0; a < ALGO_COUNT; ++a)
        if ((algos & (1u << a)) && !strcmp(name, ALGORITHM_NAMES[a])) return a;
    return -1;
}

static void remember(conv_state *s, const char *key, int algo, unsigned generation)
{
    snprintf(s->algo_key, sizeof s->algo_key, "%s", key);
    s->algo = algo;
    s->algo_generation = generation;
}

/* the kept algorithm for this layer's shape, measuring it when there is none
 * yet; the output is that algorithm's */
static int chosen(dn_net *net, const dn_layer *l, conv_state *s, const dn_conv_desc *d, const float *input,
                  unsigned algos)
{
    const int rule = rule_of(algos);
    /* everything the timing depends on: the shape, the choices open, the kernel, the threads */
    char key[256], kept[64];
    char open_to[64] = "";
    for (int a = 0; a < ALGO_COUNT; ++a)
        if (algos & (1u << a))
            snprintf(open_to + strlen(open_to), sizeof open_to - strlen(open_to), "%s%s", *open_to ? " " : "",
                     ALGORITHM_NAMES[a]);
    snprintf(key, sizeof key, "conv b%d c%d %dx%d f%d k%d s%dx%d p%d d%d g%d | %s | %s | %d threads", d->batch, d->c,
             d->h, d->w, d->filters, d->size, d->stride_x, d->stride_y, d->pad, d->dilation, d->groups, open_to,
             dn_cpu_kernel(), dn_workers(net));
    /* the steady pass: the choice this layer found while the settings hold (no lock, no lookup) */
    unsigned generation = dn_tuning_generation();
    if (s->algo_generation == generation && !strcmp(key, s->algo_key))
        return run_algorithm(net, l, s, d, input, s->algo);
    if (!dn_tuning_on(net)) return run_algorithm(net, l, s, d, input, rule);
    generation = dn_tuning_generation(); /* the settings may have been read just now */
    int algo = dn_tuning_find(net, key, kept, sizeof kept) ? algorithm_named(kept, algos) : -1;
    if (algo >= 0) {
        remember(s, key, algo, generation);
        return run_algorithm(net, l, s, d, input, algo);
    }
    dn_tuning_announce(net, "which convolution algorithm is fastest");
    double best[ALGO_COUNT], total[ALGO_COUNT];
    for (int a = 0; a < ALGO_COUNT; ++a) {
        best[a] = 1e30;
        total[a] = 0;
        if (algos & (1u << a)) run_algorithm(net, l, s, d, input, a); /* warm: caches, Winograd's filters */
    }
    int last = -1;     /* the algorithm of the last run: its output is the layer's */
    double least = 0; /* the shortest total time of one algorithm so far */
    for (int r = 0; r < TUNE_MAX_ROUNDS && (r < TUNE_ROUNDS || least < TUNE_SECONDS); ++r) {
        least = 1e30;
        for (int a = 0; a < ALGO_COUNT; ++a)
            if (algos & (1u << a)) {
                const double t0 = dn_seconds();
                last = run_algorithm(net, l, s, d, input, a);
                const double t = dn_seconds() - t0;
                if (t < best[a]) best[a] = t;
                total[a] += t;
                if (total[a] < least) least = total[a];
            }
    }
    algo = rule;
    for (int a = 0; a < ALGO_COUNT; ++a)
        if ((algos & (1u << a)) && best[a] < best[rule] * TUNE_MARGIN && best[a] < best[algo]) algo = a;
    char times[160];
    int n = 0;
    for (int a = 0; a < ALGO_COUNT; ++a)
        if (algos & (1u << a))
            n += snprintf(times + n, sizeof times - (size_t)n, "%s%s=%.9g", n ? " " : "", ALGORITHM_NAMES[a], best[a]);
    dn_tuning_keep(net, key, ALGORITHM_NAMES[algo], times);
    remember(s, key, algo, generation);
    dn_log(net, DN_LOG_DEBUG, "layer %d [convolutional]: %s (measured: %s)", l->index, ALGORITHM_NAMES[algo], times);
    if (algo != ALGO_WINOGRAD && s->wino_cache) { /* made for the measurement only */
        free(s->wino_cache);
        s->wino_cache = NULL;
    }
    /* the output is the kept algorithm's */
    return algo != last ? run_algorithm(net, l, s, d, input, algo) : algo;
}

static dn_status conv_forward_threaded(dn_layer *l, dn_net *net, conv_state *s)
{
    const float *input = dn_layer_input(net, l);
    dn_conv_desc d = describe(l, s);
    if (!net->train && (net->speed & DN_SPEED_FUSE) && elementwise(s->activation)) {
        /* y = act(a*z + b): a = scale / sqrt(var + .00001), b = bias - mean*a */
        for (int f = 0; f < s->filters; ++f) {
            if (s->batch_normalize) {
                const float a = s->scales[f] / sqrtf(s->rolling_variance[f] + .00001f);
                s->fold_scale[f] = a;
                s->fold_bias[f] = s->biases[f] - s->rolling_mean[f] * a;
            } else {
                s->fold_scale[f] = 1.f;
                s->fold_bias[f] = s->biases[f];
            }
        }
        const unsigned algos = algorithms_here(net, s, &d);
        const int algo = algos & (algos - 1) ? chosen(net, l, s, &d, input, algos)
                                             : run_algorithm(net, l, s, &d, input, rule_of(algos));
        l->algorithm = ALGORITHM_NAMES[algo];
        return DN_OK;
    }
    l->algorithm = NULL;
    dn_conv_tiled_forward(net, l, &d, input, l->output, NULL, NULL, s->activation);
    return channels_forward(l, net, s, s->batch_normalize && dn_layer_sync_bn(net, l));
}

static dn_status conv_setup(dn_layer *l, dn_net *net)
{
    (void)net;
    conv_state *s = l->priv;
    if (l->c % s->groups)
        return dn_layer_fail(l, DN_ERR_SHAPE, "groups=%d does not divide the input channels (%d)", s->groups, l->c);
    l->out_c = s->filters;
    l->out_h = (l->h + 2 * s->padding - s->size) / s->stride_y + 1;
    l->out_w = (l->w + 2 * s->padding - s->size) / s->stride_x + 1;
    if (l->h + 2 * s->padding < s->size || l->w + 2 * s->padding < s->size)
        return dn_layer_fail(l, DN_ERR_SHAPE, "kernel %d is larger than the padded input %d x %d", s->size, l->h, l->w);
    const int direct = s->size == 1 && s->stride_x == 1 && s->stride_y == 1 && s->padding == 0;
    l->workspace = direct ? 0
                          : (size_t)l->out_h * l->out_w * (size_t)(l->c / s->groups) * s->size * s->size * sizeof(float);
    size_t shared, per_worker;
    dn_conv_desc d = describe(l, s);
    dn_conv_tiled_workspace(&d, &shared, &per_worker);
    if (shared > l->workspace) l->workspace = shared;
    l->worker_workspace = per_worker;
    s->winograd = dn_winograd_applies(&d);
    if (s->winograd) {
        dn_winograd_workspace(&d, &shared, &per_worker);
        if (shared > l->workspace) l->workspace = shared;
        if (per_worker > l->worker_workspace) l->worker_workspace = per_worker;
    }
    s->direct = dn_conv_direct_applies(&d);
    if (s->direct) {
        dn_conv_direct_workspace(&d, &shared, &per_worker);
        if (shared > l->workspace) l->workspace = shared;
        if (per_worker > l->worker_workspace) l->worker_workspace = per_worker;
    }
    dn_conv_backward_workspace(&d, &shared, &per_worker);
    if (shared > l->workspace) l->workspace = shared;
    if (per_worker > l->worker_workspace) l->worker_workspace = per_worker;
    s->trained = 0;
    return DN_OK;
}

static void conv_im2col(const dn_layer *l, const conv_state *s, const float *im, float *col)
{
    const int pad = s->padding * s->dilation;
    dn_im2col(im, l->c / s->groups, l->h, l->w, s->size, s->size, pad, pad, s->stride_y, s->stride_x, s->dilation,
              s->dilation, l->out_h, l->out_w, col);
}

static dn_status conv_forward(dn_layer *l, dn_net *net)
{
    conv_state *s = l->priv;
    const int M = s->filters / s->groups;
    const int K = l->c / s->groups * s->size * s->size;
    const int N = l->out_h * l->out_w;
    const int cg = l->c / s->groups;
    const size_t total = (size_t)l->batch * l->outputs;
    const float *input = dn_layer_input(net, l);
    s->trained = s->synced = 0;
    const int sync = s->batch_normalize && dn_layer_sync_bn(net, l);
    if (net->speed & DN_SPEED_THREADS) {
        dn_status st = conv_forward_threaded(l, net, s);
        s->trained = !st && net->train;
        return st;
    }
    for (int b = 0; b < l->batch; ++b) {
        for (int g = 0; g < s->groups; ++g) {
            const float *im = input + ((size_t)b * l->c + (size_t)g * cg) * l->h * l->w;
            const float *a = s->weights + (size_t)g * M * K;
            float *c = l->output + ((size_t)b * s->groups + g) * (size_t)M * N;
            const float *cols = im;
            if (l->workspace) {
                conv_im2col(l, s, im, net->workspace);
                cols = net->workspace;
            }
            dn_gemm(net, 0, 0, M, N, K, 1.f, a, K, cols, N, 0.f, c, N);
        }
    }
    dn_status st;
    if (sync) { /* batch norm, bias and activation by channels, the statistics summed over the processes */
        st = channels_forward(l, net, s, 1);
        s->trained = !st;
        return st;
    }
    if (s->batch_normalize) {
        if (net->train) {
            if ((st = bn_training_buffers(l, s, 0))) return st;
            dn_batchnorm_forward_train(l->output, l->batch, l->out_c, N, s->mean, s->variance, s->x_norm,
                                       s->rolling_mean, s->rolling_variance, DN_BN_ROLLING);
        } else {
            dn_normalize(l->output, s->rolling_mean, s->rolling_variance, l->batch, l->out_c, N);
        }
        dn_scale_bias(l->output, s->scales, l->batch, l->out_c, N);
    }
    dn_add_bias(l->output, s->biases, l->batch, l->out_c, N);
    if (net->train && dn_activation_needs_input(s->activation)) {
        if ((st = dn_ensure_floats(&s->x, &s->x_cap, total))) return st;
        memcpy(s->x, l->output, total * sizeof(float));
    }
    dn_activate(l->output, l->batch, l->out_c, N, s->activation);
    s->trained = net->train;
    return DN_OK;
}

static float *grad_of(const dn_layer *l, const float *data)
{
    for (int i = 0; i < l->nparams; ++i)
        if (l->params[i].data == data) return l->params[i].grad;
    return NULL;
}

static dn_status conv_backward_threaded(dn_layer *l, dn_net *net, conv_state *s)
{
    const int M = s->filters / s->groups;
    const int K = l->c / s->groups * s->size * s->size;
    const int N = l->out_h * l->out_w;
    const int cg = l->c / s->groups;
    const size_t plane = (size_t)l->h * l->w;
    dn_status st = channels_backward(l, net, s);
    if (st) return st;
    float *weight_grad = grad_of(l, s->weights);
    const float *input = dn_layer_input(net, l);
    float *in_delta = dn_layer_input_delta(net, l);
    dn_conv_desc d = describe(l, s);
    if ((net->speed & DN_SPEED_KERNEL) && dn_packed_gemm_available()) {
        if (weight_grad) dn_conv_weight_grad(net, l, &d, input, l->delta, weight_grad);
        if (in_delta) dn_conv_input_grad(net, l, &d, l->delta, in_delta);
        return DN_OK;
    }
    for (int b = 0; b < l->batch; ++b) {
        for (int g = 0; g < s->groups; ++g) {
            const size_t in_off = ((size_t)b * l->c + (size_t)g * cg) * plane;
            const float *dl = l->delta + ((size_t)b * s->groups + g) * (size_t)M * N;
            const float *w = s->weights + (size_t)g * M * K;
            if (weight_grad) {
                const float *cols = input + in_off;
                if (d.size != 1 || d.stride_x != 1 || d.stride_y != 1 || d.pad != 0) {
                    conv_im2col(l, s, cols, net->workspace);
                    cols = net->workspace;
                }
                dn_gemm(net, 0, 1, M, K, N, 1.f, dl, N, cols, N, 1.f, weight_grad + (size_t)g * M * K, K);
            }
            if (!in_delta) continue;
            if (d.size == 1 && d.stride_x == 1 && d.stride_y == 1 && d.pad == 0) {
                dn_gemm(net, 1, 0, K, N, M, 1.f, w, K, dl, N, 1.f, in_delta + in_off, N);
            } else {
                dn_gemm(net, 1, 0, K, N, M, 1.f, w, K, dl, N, 0.f, net->workspace, N);
                dn_col2im(net->workspace, cg, l->h, l->w, s->size, s->size, d.pad, d.pad, s->stride_y, s->stride_x,
                          s->dilation, s->dilation, l->out_h, l->out_w, in_delta + in_off);
            }
        }
    }
    return DN_OK;
}

static dn_status conv_backward(dn_layer *l, dn_net *net)
{
    conv_state *s = l->priv;
    const int M = s->filters / s->groups;
    const int K = l->c / s->groups * s->size * s->size;
    const int N = l->out_h * l->out_w;
    const int cg = l->c / s->groups;
    const size_t plane = (size_t)l->h * l->w;
    if (!s->trained) return dn_layer_fail(l, DN_ERR_STATE, "backward needs a training forward pass first");
    if (net->speed & DN_SPEED_THREADS) return conv_backward_threaded(l, net, s);
    float *weight_grad = grad_of(l, s->weights);
    if (s->synced) {
        dn_status st = channels_backward(l, net, s);
        if (st) return st;
    } else {
        dn_activation_backward(l->output, dn_activation_needs_input(s->activation) ? s->x : NULL, l->delta, l->batch,
                               l->out_c, N, s->activation);
        float *bias_grad = grad_of(l, s->biases);
        if (bias_grad) dn_backward_bias(bias_grad, l->delta, l->batch, l->out_c, N);
        if (s->batch_normalize)
            dn_batchnorm_backward(l->delta, s->x_norm, s->variance, s->scales, grad_of(l, s->scales), l->batch,
                                  l->out_c, N);
    }
    const float *input = dn_layer_input(net, l);
    float *in_delta = dn_layer_input_delta(net, l);
    for (int b = 0; b < l->batch; ++b) {
        for (int g = 0; g < s->groups; ++g) {
            const size_t in_off = ((size_t)b * l->c + (size_t)g * cg) * plane;
            const float *d = l->delta + ((size_t)b * s->groups + g) * (size_t)M * N;
            const float *w = s->weights + (size_t)g * M * K;
            if (weight_grad) {
                const float *cols = input + in_off;
                if (l->workspace) {
                    conv_im2col(l, s, cols, net->workspace);
                    cols = net->workspace;
                }
                /* dW_g[M x K] += d[M x N] * cols[K x N]^T */
                dn_gemm(net, 0, 1, M, K, N, 1.f, d, N, cols, N, 1.f, weight_grad + (size_t)g * M * K, K);
            }
            if (!in_delta) continue;
            /* columns' delta [K x N] = W_g^T * d */
            if (!l->workspace) {
                dn_gemm(net, 1, 0, K, N, M, 1.f, w, K, d, N, 1.f, in_delta + in_off, N);
            } else {
                const int pad = s->padding * s->dilation;
                dn_gemm(net, 1, 0, K, N, M, 1.f, w, K, d, N, 0.f, net->workspace, N);
                dn_col2im(net->workspace, cg, l->h, l->w, s->size, s->size, pad, pad, s->stride_y, s->stride_x,
                          s->dilation, s->dilation, l->out_h, l->out_w, in_delta + in_off);
            }
        }
    }
    return DN_OK;
}

const dn_layer_ops dn_convolutional_ops = {
    .type = "convolutional",
    .make = conv_make,
    .setup = conv_setup,
    .forward = conv_forward,
    .backward = conv_backward,
    DN_GPU_OPS(dn_convolutional_forward_gpu, dn_convolutional_backward_gpu),
};

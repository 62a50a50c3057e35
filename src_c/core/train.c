/* train.c - training passes, gradient accumulation over subdivisions, and
 * the optimizer, written once over every layer's parameter list.
 *
 * A full batch of B images runs as B / batch mini-batches (darknet's
 * subdivisions): each a training forward pass (the loss heads compute their
 * loss and their delta) and a backward pass that adds dLoss/d(param) into
 * each parameter's grad. Then one update, darknet's:
 *   SGD:  m = m - grad - decay*B*w (decay for weights only);  w += rate/B * m;  m *= momentum
 *         (m is darknet's "updates" buffer: a step direction, the negative gradient)
 *   Adam: d = -grad - decay*B*w;  m = B1*m + (1-B1)*d;  v = B2*v + (1-B2)*d^2;
 *         w += rate * (m / (1 - B1^t)) / (sqrt(v / (1 - B2^t)) + eps)
 * with rate = learning_rate(t) * the layer's learning_rate scale, t the
 * iteration being made (1 for the first update). Learning-rate policies as
 * darknet's get_current_rate, burn_in first: rate * (t / burn_in)^power.
 * The per-layer switches (stopbackward, onlyforward, dont_update,
 * burnin_update, train_only_bn, clip; see dn_switches in internal.h) decide
 * which layers run backward, get gradients and are updated. */
#include "layer.h"
#include "backend.h"

#include <limits.h>
#include <math.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum { POL_CONSTANT, POL_STEP, POL_STEPS, POL_EXP, POL_POLY, POL_SIGMOID, POL_RANDOM, POL_SGDR };

typedef struct {
    int policy, burn_in, max_batches, step, sgdr_cycle, sgdr_mult, adam, nsteps;
    float learning_rate, learning_rate_min, momentum, decay, power, scale, gamma, B1, B2, eps;
    const int *steps;
    const float *scales;
} train_config;

static dn_status read_config(const dn_net *net, train_config *c)
{
    static const char *policies[] = {"constant", "step", "steps", "exp", "poly", "sigmoid", "random", "sgdr"};
    const char *policy;
    int nscales = 0;
    dn_status s;
    memset(c, 0, sizeof(*c));
    if ((s = dn_opt_float(net, "learning_rate", &c->learning_rate)) || (s = dn_opt_float(net, "momentum", &c->momentum)) ||
        (s = dn_opt_float(net, "decay", &c->decay)) || (s = dn_opt_string(net, "policy", &policy)) ||
        (s = dn_opt_int(net, "burn_in", &c->burn_in)) || (s = dn_opt_float(net, "power", &c->power)) ||
        (s = dn_opt_int(net, "max_batches", &c->max_batches)) || (s = dn_opt_int(net, "step", &c->step)) ||
        (s = dn_opt_float(net, "scale", &c->scale)) || (s = dn_opt_float(net, "gamma", &c->gamma)) ||
        (s = dn_opt_int(net, "sgdr_cycle", &c->sgdr_cycle)) || (s = dn_opt_int(net, "sgdr_mult", &c->sgdr_mult)) ||
        (s = dn_opt_float(net, "learning_rate_min", &c->learning_rate_min)) || (s = dn_opt_int(net, "adam", &c->adam)) ||
        (s = dn_opt_float(net, "B1", &c->B1)) || (s = dn_opt_float(net, "B2", &c->B2)) ||
        (s = dn_opt_float(net, "eps", &c->eps)) || (s = dn_opt_ints(net, "steps", &c->steps, &c->nsteps)) ||
        (s = dn_opt_floats(net, "scales", &c->scales, &nscales)))
        return s;
    c->policy = -1;
    for (int i = 0; i < (int)(sizeof(policies) / sizeof(policies[0])); ++i)
        if (!strcmp(policy, policies[i])) c->policy = i;
    if (c->policy < 0) return dn_fail(DN_ERR_ARG, "[net] unknown learning-rate policy '%s'", policy);
    if (c->policy == POL_STEPS && nscales < c->nsteps)
        return dn_fail(DN_ERR_ARG, "[net] policy=steps needs one scale per step (%d steps, %d scales)", c->nsteps, nscales);
    if (c->policy == POL_STEP && c->step < 1) return dn_fail(DN_ERR_ARG, "[net] policy=step needs step >= 1");
    if (c->policy == POL_SGDR && (c->sgdr_cycle < 1 || c->sgdr_mult < 1))
        return dn_fail(DN_ERR_ARG, "[net] policy=sgdr needs sgdr_cycle >= 1 (it defaults to max_batches) and sgdr_mult >= 1");
    return DN_OK;
}

static float policy_rate(dn_net *net, const train_config *c, long long t)
{
    if (t < c->burn_in) return c->learning_rate * powf((float)t / c->burn_in, c->power);
    switch (c->policy) {
    case POL_STEP: return c->learning_rate * powf(c->scale, (float)(t / c->step));
    case POL_STEPS: {
        float rate = c->learning_rate;
        for (int i = 0; i < c->nsteps; ++i) {
            if (c->steps[i] > t) return rate;
            rate *= c->scales[i];
        }
        return rate;
    }
    case POL_EXP: return c->learning_rate * powf(c->gamma, (float)t);
    case POL_POLY: return c->learning_rate * powf(1.f - (float)t / c->max_batches, c->power);
    case POL_RANDOM: return net ? c->learning_rate * powf(dn_rand_uniform(net), c->power) : c->learning_rate;
    case POL_SIGMOID: return c->learning_rate * (1.f / (1.f + expf(c->gamma * (float)(t - c->step))));
    case POL_SGDR: {
        long long start = 0, cycle = c->sgdr_cycle;
        while (start + cycle < t) {
            start += cycle;
            cycle *= c->sgdr_mult;
        }
        return c->learning_rate_min + 0.5f * (c->learning_rate - c->learning_rate_min) *
                                          (1.f + cosf((float)(t - start) * 3.14159265f / (float)cycle));
    }
    default: return c->learning_rate;
    }
}

dn_status dn_net_learning_rate(const dn_net *net, long long iteration, float *rate)
{
    if (!net || !rate) return dn_fail(DN_ERR_ARG, "NULL argument");
    train_config c;
    dn_status s = read_config(net, &c);
    if (s) return s;
    /* the random policy draws from a copy of the generator, leaving the network's alone */
    dn_net copy = *net;
    *rate = policy_rate(c.policy == POL_RANDOM ? &copy : NULL, &c, iteration);
    return DN_OK;
}

/* ---- random numbers: splitmix64, state on the network ---- */
float dn_rand_uniform(dn_net *net)
{
    unsigned long long z = (net->rng += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    z ^= z >> 31;
    return (float)((z >> 40) * (1.0 / 16777216.0));
}

dn_status dn_net_seed(dn_net *net, unsigned long long seed)
{
    if (!net) return dn_fail(DN_ERR_ARG, "network handle is NULL");
    net->rng = seed;
    return DN_OK;
}

unsigned long long dn_net_rng_state(const dn_net *net) { return net ? net->rng : 0; }

/* ---- the per-layer switches ---- */
/* An integer switch of layer l (absent: 0). */
static dn_status switch_int(const dn_layer *l, const char *key, int *out)
{
    *out = 0;
    return dn_attr_has(l, key) ? dn_attr_int(l, key, out) : DN_OK;
}

/* Fills every layer's sw from its options, as darknet's parser does for a
 * network loaded for training: stopbackward=1 freezes the layers before the
 * last layer that has it; train_only_bn reaches back to the first layer. */
static dn_status resolve_switches(dn_net *net)
{
    int last_stop = -1, only_bn = 0;
    dn_status s = DN_OK;
    for (int i = 0; i < net->nlayers && !s; ++i) {
        dn_layer *l = net->layers[i];
        dn_switches *w = &l->sw;
        int train_only_bn = 0;
        memset(w, 0, sizeof(*w));
        if ((s = switch_int(l, "stopbackward", &w->stopbackward)) || (s = switch_int(l, "onlyforward", &w->onlyforward)) ||
            (s = switch_int(l, "dont_update", &w->dont_update)) ||
            (s = switch_int(l, "burnin_update", &w->burnin_update)) ||
            (s = switch_int(l, "train_only_bn", &train_only_bn)))
            break;
        w->only_bn = train_only_bn;
        if (!strcmp(l->ops->type, "convolutional") && dn_attr_has(l, "clip")) s = dn_attr_float(l, "clip", &w->clip);
        if (w->stopbackward == 1) last_stop = i;
    }
    for (int i = net->nlayers - 1; i >= 0 && !s; --i) {
        dn_switches *w = &net->layers[i]->sw;
        only_bn |= w->only_bn;
        w->only_bn = only_bn;
        w->frozen = i < last_stop;
        w->infer = w->frozen && !strcmp(net->layers[i]->ops->type, "convolutional");
    }
    return s;
}

/* Whether iteration t updates layer l (dont_update, burnin_update). */
static int layer_updates(const dn_layer *l, long long t, int burn_in)
{
    const dn_switches *w = &l->sw;
    if (w->burnin_update && (long long)w->burnin_update * burn_in > t) return 0;
    return t > w->dont_update;
}

/* ---- enabling ---- */
/* a parameter the optimizer trains in this run (frozen layers' and train_only_bn's others have no gradient) */
static int has_gradient(const dn_layer *l, const dn_param *p)
{
    return (p->flags & DN_PARAM_TRAIN) && !l->sw.frozen && !l->sw.only_bn;
}

dn_status dn_net_enable_training(dn_net *net)
{
    if (!net) return dn_fail(DN_ERR_ARG, "network handle is NULL");
    if (!net->finalized) return dn_fail(DN_ERR_STATE, "the network is not finalized");
    if (net->training) return DN_OK;
    train_config c;
    dn_status s = read_config(net, &c);
    if (!s) s = resolve_switches(net);
    if (s) return s;
    /* the gradients: one block in layer and parameter order (an all-reduce takes ranges of it in place) */
    size_t total = 0;
    free(net->grad_offset);
    if (!(net->grad_offset = dn_calloc((size_t)net->nlayers + 1, sizeof(size_t))))
        return dn_fail(DN_ERR_NOMEM, "out of memory for the gradients' offsets");
    for (int i = 0; i < net->nlayers; ++i) {
        dn_layer *l = net->layers[i];
        if (!l->ops->backward)
            return dn_layer_fail(l, DN_ERR_UNSUPPORTED, "training (backward) is not implemented for this layer type");
        net->grad_offset[i] = total;
        for (int j = 0; j < l->nparams; ++j)
            if (has_gradient(l, &l->params[j])) total += l->params[j].count;
    }
    net->grad_offset[net->nlayers] = total;
    free(net->grad_arena);
    if (!(net->grad_arena = dn_calloc(total ? total : 1, sizeof(float))))
        return dn_fail(DN_ERR_NOMEM, "out of memory for %zu gradient values", total);
    net->grad_count = total;
    for (int i = 0; i < net->nlayers; ++i) {
        dn_layer *l = net->layers[i];
        size_t at = net->grad_offset[i];
        for (int j = 0; j < l->nparams; ++j) {
            dn_param *p = &l->params[j];
            if (!has_gradient(l, p)) continue;
            p->grad = net->grad_arena + at;
            at += p->count;
            p->m = dn_calloc(p->count, sizeof(float));
            p->v = c.adam ? dn_calloc(p->count, sizeof(float)) : NULL;
            if (!p->m || (c.adam && !p->v))
                return dn_layer_fail(l, DN_ERR_NOMEM, "out of memory for the optimizer state of '%s'", p->name);
        }
    }
    net->training = 1;
    s = dn_net_allocate(net);
    if (s) net->training = 0;
    return s;
}

static dn_status need_training(const dn_net *net)
{
    if (!net) return dn_fail(DN_ERR_ARG, "network handle is NULL");
    if (!net->training) return dn_fail(DN_ERR_STATE, "training is not enabled (call dn_net_enable_training)");
    return DN_OK;
}

static void zero_layer_grads(dn_net *net, dn_layer *l) { net->backend->zero_grads(net, l); }

static void zero_grads(dn_net *net)
{
    for (int i = 0; i < net->nlayers; ++i) zero_layer_grads(net, net->layers[i]);
    net->images_since_update = 0;
}

/* ---- passes ---- */
dn_status dn_net_forward_train(dn_net *net, const float *input, size_t count, const float *truth, size_t truth_count)
{
    dn_status s = need_training(net);
    if (s) return s;
    size_t want = (size_t)net->batch * net->c * net->h * net->w;
    if (!input) return dn_fail(DN_ERR_ARG, "input is NULL");
    if (count != want)
        return dn_fail(DN_ERR_SHAPE, "input has %zu floats, the network's mini-batch takes %zu (%d x %d x %d x %d)",
                       count, want, net->batch, net->c, net->h, net->w);
    if (truth_count % (size_t)net->batch)
        return dn_fail(DN_ERR_SHAPE, "%zu truth values do not split evenly over %d images", truth_count, net->batch);
    if (truth_count && !truth) return dn_fail(DN_ERR_ARG, "truth is NULL");
    net->input = input; /* the backend's begin_forward zeroes the deltas where the pass uses them */
    net->truth = truth_count ? truth : NULL;
    net->truth_stride = (int)(truth_count / (size_t)net->batch);
    net->loss = 0;
    net->train = 1;
    s = dn_run_forward(net);
    net->train = 0;
    net->truth = NULL;
    return s;
}

double dn_net_loss(const dn_net *net) { return net ? net->loss : 0.0; }

dn_status dn_net_backward(dn_net *net)
{
    dn_status s = need_training(net);
    if (s) return s;
    if (!net->input) return dn_fail(DN_ERR_STATE, "no training forward pass to go back through");
    net->train = 1;
    s = dn_run_backward(net);
    net->train = 0;
    return s;
}

static float layer_rate_scale(const dn_layer *l)
{
    float scale = 1.f;
    if (dn_attr_has(l, "learning_rate")) dn_attr_float(l, "learning_rate", &scale);
    return scale;
}

dn_status dn_net_update(dn_net *net)
{
    dn_status s = need_training(net);
    if (s) return s;
    train_config c;
    if ((s = read_config(net, &c))) return s;
    int finite = 1;
    if ((s = net->backend->begin_update(net, &finite))) return s;
    const float B = (float)(net->images_since_update ? net->images_since_update : (unsigned long long)net->batch);
    const long long t = ++net->iteration;
    if (!finite) { /* mixed precision's overflow: the iteration counts, nothing moves */
        zero_grads(net);
        return DN_OK;
    }
    const float base = policy_rate(net, &c, t);
    const float b1t = 1.f - powf(c.B1, (float)t), b2t = 1.f - powf(c.B2, (float)t);
    for (int i = 0; i < net->nlayers; ++i) {
        dn_layer *l = net->layers[i];
        if (!layer_updates(l, t, c.burn_in)) continue;
        const float rate = base * layer_rate_scale(l);
        for (int j = 0; j < l->nparams; ++j) {
            dn_param *p = &l->params[j];
            if (!p->grad) continue;
            const float decay = (p->flags & DN_PARAM_DECAY) ? c.decay * B : 0.f;
            const float clip = !strcmp(p->name, "weights") ? l->sw.clip : 0.f;
            const dn_update_args a = {c.adam, rate, decay, B, c.momentum, c.B1, c.B2, c.eps, b1t, b2t, clip};
            if ((s = net->backend->update(net, p, &a))) return s;
        }
        zero_layer_grads(net, l);
    }
    net->images_since_update = 0;
    return DN_OK;
}

typedef struct {
    const float *x;
    size_t per_image;
    _Atomic long long first; /* the lowest bad image found so far, or LLONG_MAX */
} finite_job;

static void finite_range(void *ctx, size_t begin, size_t end)
{
    finite_job *j = ctx;
    for (size_t i = begin; i < end && (long long)i < atomic_load(&j->first); ++i) {
        const uint32_t *p = (const uint32_t *)(const void *)(j->x + i * j->per_image);
        uint32_t bad = 0; /* an all-ones exponent is an infinity or a NaN (integer logic: it vectorizes) */
        for (size_t k = 0; k < j->per_image; ++k) bad |= (p[k] & 0x7f800000u) == 0x7f800000u;
        if (bad) {
            long long seen = atomic_load(&j->first);
            while ((long long)i < seen && !atomic_compare_exchange_weak(&j->first, &seen, (long long)i)) {
            }
            return;
        }
    }
}

long long dn_net_first_nonfinite(const dn_net *net, const float *x, size_t images, size_t per_image)
{
    if (!net || !x || !per_image) return -1;
    finite_job j = {x, per_image, LLONG_MAX};
    dn_parallel_range(net, images, 1, finite_range, &j);
    const long long first = atomic_load(&j.first);
    return first == LLONG_MAX ? -1 : first;
}

dn_status dn_net_train_batch(dn_net *net, const float *input, size_t count, const float *truth, size_t truth_count,
                             float *loss)
{
    dn_status s = need_training(net);
    if (s) return s;
    const size_t per_image = (size_t)net->c * net->h * net->w;
    if (!input || count == 0 || count % per_image)
        return dn_fail(DN_ERR_SHAPE, "input of %zu floats is not a whole number of %d x %d x %d images", count, net->c,
                       net->h, net->w);
    const size_t n = count / per_image;
    if (n % (size_t)net->batch)
        return dn_fail(DN_ERR_SHAPE, "%zu images do not split into mini-batches of %d", n, net->batch);
    if (truth_count % n) return dn_fail(DN_ERR_SHAPE, "%zu truth values do not split evenly over %zu images", truth_count, n);
    const size_t stride = truth_count / n, mb = (size_t)net->batch;
    double total = 0;
    for (size_t k = 0; k < n / mb; ++k) {
        s = dn_net_forward_train(net, input + k * mb * per_image, mb * per_image, truth ? truth + k * mb * stride : NULL,
                                 mb * stride);
        if (!s && !isfinite(net->loss))
            s = dn_fail(DN_ERR_STATE, "the loss is not finite (%g) in mini-batch %zu of iteration %lld; no update made",
                        net->loss, k, net->iteration + 1);
        if (!s) {
            /* the last mini-batch's backward pass hands gradients over as they become final (on the CPU) */
            net->bucketing = net->bucket_hook && net->bucket_floats && k + 1 == n / mb && net->backend == &dn_cpu_backend;
            net->bucket_end = net->grad_count;
            s = dn_net_backward(net);
            net->bucketing = 0;
        }
        if (s) {
            zero_grads(net);
            return s;
        }
        total += net->loss;
        net->seen += mb;
        net->images_since_update += mb;
    }
    if (net->bucket_hook && (s = dn_hand_over_gradients(net, 0))) {
        zero_grads(net);
        return s;
    }
    if (net->grad_hook) {
        const unsigned long long before = net->images_since_update;
        s = net->backend->pull_gradients(net); /* (on a device, where no bucket hook brought them) */
        if (!s) s = net->grad_hook(net, net->grad_hook_user, &net->images_since_update);
        if (s) {
            zero_grads(net);
            return s;
        }
        net->seen += net->images_since_update - before;
    }
    if ((s = dn_net_update(net))) return s;
    if (loss) *loss = (float)(total / (double)n);
    return DN_OK;
}

dn_status dn_net_set_gradient_hook(dn_net *net, dn_gradient_hook hook, void *user)
{
    if (!net) return dn_fail(DN_ERR_ARG, "network handle is NULL");
    net->grad_hook = hook;
    net->grad_hook_user = user;
    return DN_OK;
}

dn_status dn_net_set_reduce_hook(dn_net *net, dn_reduce_hook hook, void *user)
{
    if (!net) return dn_fail(DN_ERR_ARG, "network handle is NULL");
    net->reduce_hook = hook;
    net->reduce_hook_user = user;
    return DN_OK;
}

/* ---- gradients handed over as they become final (the bucket hook; core/loop.c hands them over) ---- */
dn_status dn_net_set_bucket_hook(dn_net *net, dn_bucket_hook hook, void *user, size_t bucket_floats)
{
    if (!net) return dn_fail(DN_ERR_ARG, "network handle is NULL");
    net->bucket_hook = hook;
    net->bucket_hook_user = user;
    net->bucket_floats = bucket_floats;
    return DN_OK;
}

dn_status dn_net_gradient_block(dn_net *net, float **block, size_t *count)
{
    dn_status s = need_training(net);
    if (s) return s;
    if (block) *block = net->grad_arena;
    if (count) *count = net->grad_count;
    return DN_OK;
}

size_t dn_net_gradient_count(const dn_net *net)
{
    size_t n = 0;
    for (int i = 0; net && i < net->nlayers; ++i)
        for (int j = 0; j < net->layers[i]->nparams; ++j)
            if (net->layers[i]->params[j].grad) n += net->layers[i]->params[j].count;
    return n;
}

dn_status dn_net_gradients(dn_net *net, float *buffer, size_t count, int to_buffer)
{
    dn_status s = need_training(net);
    if (s) return s;
    if (!buffer || count != dn_net_gradient_count(net))
        return dn_fail(DN_ERR_ARG, "gradient buffer of %zu floats; the network has %zu gradient values", count,
                       dn_net_gradient_count(net));
    if ((s = dn_net_to_host(net, 0))) return s;
    size_t at = 0;
    for (int i = 0; i < net->nlayers; ++i)
        for (int j = 0; j < net->layers[i]->nparams; ++j) {
            dn_param *p = &net->layers[i]->params[j];
            if (!p->grad) continue;
            if (p->grad == buffer + at) { /* the block itself */
            } else if (to_buffer) memcpy(buffer + at, p->grad, p->count * sizeof(float));
            else memcpy(p->grad, buffer + at, p->count * sizeof(float));
            at += p->count;
        }
    return DN_OK;
}

/* ---- state ---- */
long long dn_net_iteration(const dn_net *net) { return net ? net->iteration : 0; }

unsigned long long dn_net_seen(const dn_net *net) { return net ? net->seen : 0; }

dn_status dn_net_set_iteration(dn_net *net, long long iteration, unsigned long long seen)
{
    if (!net) return dn_fail(DN_ERR_ARG, "network handle is NULL");
    if (iteration < 0) return dn_fail(DN_ERR_ARG, "iteration must be >= 0");
    net->iteration = iteration;
    net->seen = seen;
    return DN_OK;
}

dn_status dn_layer_delta(dn_net *net, int layer, float **data, size_t *count)
{
    dn_status s = need_training(net);
    if (s) return s;
    if (layer < 0 || layer >= net->nlayers) return dn_fail(DN_ERR_ARG, "layer index %d out of range", layer);
    if ((s = net->backend->pull_delta(net, layer))) return s;
    *data = net->layers[layer]->delta;
    *count = (size_t)net->batch * net->layers[layer]->outputs;
    return DN_OK;
}

dn_status dn_net_input_delta(dn_net *net, float **data, size_t *count)
{
    dn_status s = need_training(net);
    if (s) return s;
    if ((s = net->backend->pull_delta(net, net->nlayers))) return s;
    *data = net->input_delta;
    *count = (size_t)net->batch * net->c * net->h * net->w;
    return DN_OK;
}

dn_status dn_layer_param_state(dn_net *net, int layer, int index, float **grad, float **m, float **v)
{
    if (!net) return dn_fail(DN_ERR_ARG, "network handle is NULL");
    if (layer < 0 || layer >= net->nlayers) return dn_fail(DN_ERR_ARG, "layer index %d out of range", layer);
    dn_layer *l = net->layers[layer];
    if (index < 0 || index >= l->nparams) return dn_layer_fail(l, DN_ERR_ARG, "parameter index %d out of range", index);
    dn_status s;
    if ((s = net->backend->pull_param(net, &l->params[index]))) return s;
    if (grad) *grad = l->params[index].grad;
    if (m) *m = l->params[index].m;
    if (v) *v = l->params[index].v;
    return DN_OK;
}

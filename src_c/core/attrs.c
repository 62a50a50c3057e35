/* attrs.c - the resolved options a layer is built from: typed key/value
 * pairs set by the caller between dn_net_add_layer and dn_net_end_layer. */
#include "layer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static dn_attr *find(const dn_attrs *a, const char *key)
{
    for (int i = 0; i < a->count; ++i)
        if (strcmp(a->items[i].key, key) == 0) return &a->items[i];
    return NULL;
}

static void clear_attr(dn_attr *at)
{
    free(at->ints);
    free(at->floats);
    free(at->string);
    at->ints = NULL;
    at->floats = NULL;
    at->string = NULL;
    at->count = 0;
}

void dn_attrs_free(dn_attrs *a)
{
    for (int i = 0; i < a->count; ++i) clear_attr(&a->items[i]);
    free(a->items);
    a->items = NULL;
    a->count = a->capacity = 0;
}

/* Returns the slot for `key` in `a`, emptied, creating it when new. */
static dn_status slot(dn_attrs *a, const char *key, dn_attr **out)
{
    if (!key || !key[0] || strlen(key) >= DN_MAX_KEY) return dn_fail(DN_ERR_ARG, "bad option name");
    dn_attr *at = find(a, key);
    if (!at) {
        if (a->count == a->capacity) {
            int cap = a->capacity ? a->capacity * 2 : 16;
            dn_attr *items = realloc(a->items, (size_t)cap * sizeof(dn_attr));
            if (!items) return dn_fail(DN_ERR_NOMEM, "out of memory storing option '%s'", key);
            a->items = items;
            a->capacity = cap;
        }
        at = &a->items[a->count++];
        memset(at, 0, sizeof(*at));
        strcpy(at->key, key);
    }
    clear_attr(at);
    *out = at;
    return DN_OK;
}

/* The options being set: the layer being built, or with training=1 the
 * network's training options. */
static dn_status target(dn_net *net, int training, dn_attrs **out)
{
    if (!net) return dn_fail(DN_ERR_ARG, "network handle is NULL");
    if (training) {
        *out = &net->train_opts;
        return DN_OK;
    }
    if (!net->building) return dn_fail(DN_ERR_STATE, "no layer is being built (call dn_net_add_layer first)");
    *out = &net->building->attrs;
    return DN_OK;
}

/* Stores `count` values of `size` bytes each under `key`, as `kind`. */
static dn_status set_values(dn_net *net, int training, const char *key, dn_attr_kind kind, const void *values,
                            int count, size_t size)
{
    dn_attr *at = NULL;
    dn_attrs *a = NULL;
    dn_status s = target(net, training, &a);
    if (!s) s = slot(a, key, &at);
    if (s) return s;
    if (count < 0 || (count > 0 && !values)) return dn_fail(DN_ERR_ARG, "option '%s': bad value list", key);
    void *copy = malloc(size * (size_t)(count ? count : 1));
    if (!copy) return dn_fail(DN_ERR_NOMEM, "out of memory storing option '%s'", key);
    if (count) memcpy(copy, values, size * (size_t)count);
    at->kind = kind;
    if (kind == DN_ATTR_INTS) at->ints = copy;
    else at->floats = copy;
    at->count = count;
    return DN_OK;
}

static dn_status set_string(dn_net *net, int training, const char *key, const char *value)
{
    dn_attr *at = NULL;
    dn_attrs *a = NULL;
    dn_status s = target(net, training, &a);
    if (!s) s = slot(a, key, &at);
    if (s) return s;
    if (!value) return dn_fail(DN_ERR_ARG, "option '%s': NULL string", key);
    at->kind = DN_ATTR_STRING;
    at->string = strdup(value);
    if (!at->string) return dn_fail(DN_ERR_NOMEM, "out of memory storing option '%s'", key);
    at->count = 1;
    return DN_OK;
}

dn_status dn_net_set_ints(dn_net *net, const char *key, const int *values, int count)
{
    return set_values(net, 0, key, DN_ATTR_INTS, values, count, sizeof(int));
}

dn_status dn_net_set_floats(dn_net *net, const char *key, const float *values, int count)
{
    return set_values(net, 0, key, DN_ATTR_FLOATS, values, count, sizeof(float));
}

dn_status dn_net_set_string(dn_net *net, const char *key, const char *value) { return set_string(net, 0, key, value); }

dn_status dn_net_set_train_ints(dn_net *net, const char *key, const int *values, int count)
{
    return set_values(net, 1, key, DN_ATTR_INTS, values, count, sizeof(int));
}

dn_status dn_net_set_train_floats(dn_net *net, const char *key, const float *values, int count)
{
    return set_values(net, 1, key, DN_ATTR_FLOATS, values, count, sizeof(float));
}

dn_status dn_net_set_train_string(dn_net *net, const char *key, const char *value)
{
    return set_string(net, 1, key, value);
}

int dn_attr_has(const dn_layer *l, const char *key) { return find(&l->attrs, key) != NULL; }

/* A reader's view: the options and who they belong to (for messages). */
typedef struct {
    const dn_attrs *attrs;
    const dn_layer *layer; /* NULL: the network's training options */
} source;

static dn_status bad(source src, const char *fmt, const char *key)
{
    char msg[256];
    snprintf(msg, sizeof(msg), fmt, key);
    if (src.layer) return dn_layer_fail(src.layer, DN_ERR_ARG, "%s", msg);
    return dn_fail(DN_ERR_ARG, "[net] %s", msg);
}

static dn_status need(source src, const char *key, const dn_attr **out)
{
    const dn_attr *at = find(src.attrs, key);
    if (!at) return bad(src, "option '%s' is missing", key);
    *out = at;
    return DN_OK;
}

static dn_status get_int(source src, const char *key, int *out)
{
    const dn_attr *at = NULL;
    dn_status s = need(src, key, &at);
    if (s) return s;
    if (at->kind != DN_ATTR_INTS || at->count != 1) return bad(src, "option '%s' must be one integer", key);
    *out = at->ints[0];
    return DN_OK;
}

static dn_status get_float(source src, const char *key, float *out)
{
    const dn_attr *at = NULL;
    dn_status s = need(src, key, &at);
    if (s) return s;
    if (at->kind == DN_ATTR_STRING || at->count != 1) return bad(src, "option '%s' must be one number", key);
    *out = at->kind == DN_ATTR_INTS ? (float)at->ints[0] : at->floats[0];
    return DN_OK;
}

static dn_status get_string(source src, const char *key, const char **out)
{
    const dn_attr *at = NULL;
    dn_status s = need(src, key, &at);
    if (s) return s;
    if (at->kind != DN_ATTR_STRING) return bad(src, "option '%s' must be a string", key);
    *out = at->string;
    return DN_OK;
}

static dn_status get_ints(source src, const char *key, const int **out, int *count)
{
    const dn_attr *at = NULL;
    dn_status s = need(src, key, &at);
    if (s) return s;
    if (at->kind != DN_ATTR_INTS) return bad(src, "option '%s' must be a list of integers", key);
    *out = at->ints;
    *count = at->count;
    return DN_OK;
}

static dn_status get_floats(source src, const char *key, const float **out, int *count)
{
    const dn_attr *at = NULL;
    dn_status s = need(src, key, &at);
    if (s) return s;
    if (at->kind == DN_ATTR_STRING) return bad(src, "option '%s' must be a list of numbers", key);
    if (at->kind == DN_ATTR_INTS) {
        /* an integer list given where numbers are read: convert in place once */
        dn_attr *mut = (dn_attr *)at;
        mut->floats = malloc(sizeof(float) * (size_t)(at->count ? at->count : 1));
        if (!mut->floats) return dn_fail(DN_ERR_NOMEM, "out of memory");
        for (int i = 0; i < at->count; ++i) mut->floats[i] = (float)at->ints[i];
        free(mut->ints);
        mut->ints = NULL;
        mut->kind = DN_ATTR_FLOATS;
    }
    *out = at->floats;
    *count = at->count;
    return DN_OK;
}

#define LAYER(l) ((source){&(l)->attrs, (l)})
#define NET(n) ((source){&(n)->train_opts, NULL})

dn_status dn_attr_int(const dn_layer *l, const char *key, int *out) { return get_int(LAYER(l), key, out); }
dn_status dn_attr_float(const dn_layer *l, const char *key, float *out) { return get_float(LAYER(l), key, out); }
dn_status dn_attr_string(const dn_layer *l, const char *key, const char **out) { return get_string(LAYER(l), key, out); }
dn_status dn_attr_ints(const dn_layer *l, const char *key, const int **out, int *count)
{
    return get_ints(LAYER(l), key, out, count);
}
dn_status dn_attr_floats(const dn_layer *l, const char *key, const float **out, int *count)
{
    return get_floats(LAYER(l), key, out, count);
}
dn_status dn_opt_int(const dn_net *net, const char *key, int *out) { return get_int(NET(net), key, out); }
int dn_opt_has(const dn_net *net, const char *key) { return find(&net->train_opts, key) != NULL; }
dn_status dn_opt_float(const dn_net *net, const char *key, float *out) { return get_float(NET(net), key, out); }
dn_status dn_opt_string(const dn_net *net, const char *key, const char **out) { return get_string(NET(net), key, out); }
dn_status dn_opt_ints(const dn_net *net, const char *key, const int **out, int *count)
{
    return get_ints(NET(net), key, out, count);
}
dn_status dn_opt_floats(const dn_net *net, const char *key, const float **out, int *count)
{
    return get_floats(NET(net), key, out, count);
}

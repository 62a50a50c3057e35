/* attrs.c - the resolved options a layer is built from: typed key/value
 * pairs set by the caller between dn_net_add_layer and dn_net_end_layer. */
#include "internal.h"

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

/* Returns the slot for `key`, emptied, creating it when new. */
static dn_status slot(dn_net *net, const char *key, dn_attr **out)
{
    if (!net) return dn_fail(DN_ERR_ARG, "network handle is NULL");
    if (!net->building) return dn_fail(DN_ERR_STATE, "no layer is being built (call dn_net_add_layer first)");
    if (!key || !key[0] || strlen(key) >= DN_MAX_KEY) return dn_fail(DN_ERR_ARG, "bad option name");
    dn_attrs *a = &net->building->attrs;
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

/* Stores `count` values of `size` bytes each under `key`, as `kind`. */
static dn_status set_values(dn_net *net, const char *key, dn_attr_kind kind, const void *values, int count, size_t size)
{
    dn_attr *at;
    dn_status s = slot(net, key, &at);
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

dn_status dn_net_set_ints(dn_net *net, const char *key, const int *values, int count)
{
    return set_values(net, key, DN_ATTR_INTS, values, count, sizeof(int));
}

dn_status dn_net_set_floats(dn_net *net, const char *key, const float *values, int count)
{
    return set_values(net, key, DN_ATTR_FLOATS, values, count, sizeof(float));
}

dn_status dn_net_set_string(dn_net *net, const char *key, const char *value)
{
    dn_attr *at;
    dn_status s = slot(net, key, &at);
    if (s) return s;
    if (!value) return dn_fail(DN_ERR_ARG, "option '%s': NULL string", key);
    at->kind = DN_ATTR_STRING;
    at->string = strdup(value);
    if (!at->string) return dn_fail(DN_ERR_NOMEM, "out of memory storing option '%s'", key);
    at->count = 1;
    return DN_OK;
}

static const char *kind_name(dn_attr_kind k)
{
    return k == DN_ATTR_INTS ? "integer" : k == DN_ATTR_FLOATS ? "number" : "string";
}

int dn_attr_has(const dn_layer *l, const char *key) { return find(&l->attrs, key) != NULL; }

static dn_status need(const dn_layer *l, const char *key, const dn_attr **out)
{
    const dn_attr *at = find(&l->attrs, key);
    if (!at) return dn_layer_fail(l, DN_ERR_ARG, "option '%s' is missing", key);
    *out = at;
    return DN_OK;
}

dn_status dn_attr_int(const dn_layer *l, const char *key, int *out)
{
    const dn_attr *at;
    dn_status s = need(l, key, &at);
    if (s) return s;
    if (at->kind != DN_ATTR_INTS || at->count != 1)
        return dn_layer_fail(l, DN_ERR_ARG, "option '%s' must be one integer, got %d %s value(s)", key, at->count,
                             kind_name(at->kind));
    *out = at->ints[0];
    return DN_OK;
}

dn_status dn_attr_float(const dn_layer *l, const char *key, float *out)
{
    const dn_attr *at;
    dn_status s = need(l, key, &at);
    if (s) return s;
    if (at->kind == DN_ATTR_STRING || at->count != 1)
        return dn_layer_fail(l, DN_ERR_ARG, "option '%s' must be one number", key);
    *out = at->kind == DN_ATTR_INTS ? (float)at->ints[0] : at->floats[0];
    return DN_OK;
}

dn_status dn_attr_string(const dn_layer *l, const char *key, const char **out)
{
    const dn_attr *at;
    dn_status s = need(l, key, &at);
    if (s) return s;
    if (at->kind != DN_ATTR_STRING) return dn_layer_fail(l, DN_ERR_ARG, "option '%s' must be a string", key);
    *out = at->string;
    return DN_OK;
}

dn_status dn_attr_ints(const dn_layer *l, const char *key, const int **out, int *count)
{
    const dn_attr *at;
    dn_status s = need(l, key, &at);
    if (s) return s;
    if (at->kind != DN_ATTR_INTS) return dn_layer_fail(l, DN_ERR_ARG, "option '%s' must be a list of integers", key);
    *out = at->ints;
    *count = at->count;
    return DN_OK;
}

dn_status dn_attr_floats(const dn_layer *l, const char *key, const float **out, int *count)
{
    const dn_attr *at;
    dn_status s = need(l, key, &at);
    if (s) return s;
    if (at->kind == DN_ATTR_STRING) return dn_layer_fail(l, DN_ERR_ARG, "option '%s' must be a list of numbers", key);
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

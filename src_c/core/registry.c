/* registry.c - the table from cfg section names to layer implementations
 * (core/layer_list.h). Section aliases (conv, max, ...) are resolved by the
 * cfg parser; this table holds the canonical names only. */
#include "layer.h"

#include <string.h>

#define DN_LAYER(name) extern const dn_layer_ops dn_##name##_ops;
#define DN_LAYER_GPU(name) DN_LAYER(name)
#include "layer_list.h"
#undef DN_LAYER
#undef DN_LAYER_GPU

static const dn_layer_ops *const registry[] = {
#define DN_LAYER(name) &dn_##name##_ops,
#define DN_LAYER_GPU(name) DN_LAYER(name)
#include "layer_list.h"
#undef DN_LAYER
#undef DN_LAYER_GPU
};

#define NTYPES ((int)(sizeof(registry) / sizeof(registry[0])))

const dn_layer_ops *dn_find_layer_ops(const char *type)
{
    for (int i = 0; i < NTYPES; ++i)
        if (strcmp(registry[i]->type, type) == 0) return registry[i];
    return NULL;
}

int dn_num_layer_types(void) { return NTYPES; }

const char *dn_layer_type_name(int i) { return i >= 0 && i < NTYPES ? registry[i]->type : NULL; }

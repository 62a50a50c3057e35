/* registry.c - the table from cfg section names to layer implementations.
 * Section aliases (conv, max, ...) are resolved by the cfg parser; this table
 * holds the canonical names only. */
#include "internal.h"

#include <string.h>

extern const dn_layer_ops dn_activation_ops, dn_avgpool_ops, dn_batchnorm_ops, dn_connected_ops,
    dn_convolutional_ops, dn_cost_ops, dn_dropout_ops, dn_empty_ops, dn_local_avgpool_ops, dn_maxpool_ops,
    dn_region_ops, dn_reorg_ops, dn_reorg3d_ops, dn_route_ops, dn_sam_ops, dn_scale_channels_ops, dn_shortcut_ops,
    dn_softmax_ops, dn_upsample_ops, dn_yolo_ops;

static const dn_layer_ops *const registry[] = {
    &dn_convolutional_ops, &dn_connected_ops, &dn_maxpool_ops, &dn_avgpool_ops, &dn_local_avgpool_ops,
    &dn_route_ops, &dn_shortcut_ops, &dn_upsample_ops, &dn_reorg_ops, &dn_reorg3d_ops, &dn_dropout_ops,
    &dn_softmax_ops, &dn_cost_ops, &dn_scale_channels_ops, &dn_sam_ops, &dn_batchnorm_ops, &dn_activation_ops,
    &dn_empty_ops, &dn_yolo_ops, &dn_region_ops,
};

const dn_layer_ops *dn_find_layer_ops(const char *type)
{
    for (size_t i = 0; i < sizeof(registry) / sizeof(registry[0]); ++i)
        if (strcmp(registry[i]->type, type) == 0) return registry[i];
    return NULL;
}

/* cost.c - [cost]: the training loss on the previous layer's output (sse,
 * masked, smooth; comes with the training core). At inference it passes its
 * input through unchanged, so the network's answer is the layer before it. */
#include "internal.h"

#include <string.h>

static dn_status cost_make(dn_layer *l, dn_net *net)
{
    (void)net;
    const char *type;
    dn_status st = dn_attr_string(l, "type", &type);
    if (st) return st;
    if (strcmp(type, "sse") && strcmp(type, "masked") && strcmp(type, "smooth") && strcmp(type, "L1") &&
        strcmp(type, "l1"))
        return dn_layer_fail(l, DN_ERR_ARG, "unknown cost type '%s'", type);
    return DN_OK;
}

const dn_layer_ops dn_cost_ops = {
    .type = "cost",
    .make = cost_make,
    .setup = dn_setup_same_shape,
    .forward = dn_forward_copy,
};

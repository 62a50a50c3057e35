/* dropout.c - [dropout]: at inference the identity, output = input (same
 * shape). Training (scaling kept units by 1/(1-probability)) comes with the
 * training core. */
#include "internal.h"


static dn_status dropout_make(dn_layer *l, dn_net *net)
{
    (void)net;
    float p;
    dn_status st = dn_attr_float(l, "probability", &p);
    if (st) return st;
    if (p < 0.f || p >= 1.f) return dn_layer_fail(l, DN_ERR_ARG, "probability must be in [0, 1), got %g", p);
    return DN_OK;
}

const dn_layer_ops dn_dropout_ops = {
    .type = "dropout",
    .make = dropout_make,
    .setup = dn_setup_same_shape,
    .forward = dn_forward_copy,
};

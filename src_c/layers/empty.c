/* empty.c - [empty] (alias [silence]): output = input, same shape. */
#include "internal.h"

static dn_status empty_make(dn_layer *l, dn_net *net)
{
    (void)l;
    (void)net;
    return DN_OK;
}

const dn_layer_ops dn_empty_ops = {
    .type = "empty",
    .make = empty_make,
    .setup = dn_setup_same_shape,
    .forward = dn_forward_copy,
};

/* empty.c - [empty] (alias [silence]): output = input, same shape. */
#include "internal.h"

static dn_status empty_make(dn_layer *l, dn_net *net)
{
    (void)l;
    (void)net;
    return DN_OK;
}

const dn_layer_ops dn_empty_ops = {"empty", empty_make, dn_setup_same_shape, dn_forward_copy, NULL, NULL};

/* empty.c - [empty] (alias [silence]): output = input, same shape; backward
 * passes the delta through. */
#include "../ops/ops.h"

static dn_status empty_make(dn_layer *l, dn_net *net)
{
    (void)l;
    (void)net;
    return DN_OK;
}

static dn_status empty_backward(dn_layer *l, dn_net *net)
{
    float *d = dn_layer_input_delta(net, l);
    if (!d) return DN_OK;
    const size_t n = (size_t)l->batch * l->outputs;
    for (size_t i = 0; i < n; ++i) d[i] += l->delta[i];
    return DN_OK;
}

const dn_layer_ops dn_empty_ops = {
    .type = "empty",
    .make = empty_make,
    .setup = dn_setup_same_shape,
    .forward = dn_forward_copy,
    .backward = empty_backward,
};

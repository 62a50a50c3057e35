/* activation.c - [activation]: out = f(in), same shape, f by name. */
#include "internal.h"


static dn_status activation_make(dn_layer *l, dn_net *net)
{
    (void)net;
    const char *name;
    dn_activation *a = dn_layer_priv(l, sizeof(dn_activation));
    if (!a) return DN_ERR_NOMEM;
    dn_status st = dn_attr_string(l, "activation", &name);
    if (st) return st;
    if ((st = dn_activation_from_name(name, a))) return dn_layer_fail(l, st, "unknown activation '%s'", name);
    return DN_OK;
}

static dn_status activation_forward(dn_layer *l, dn_net *net)
{
    dn_forward_copy(l, net);
    dn_activate(l->output, l->batch, l->out_c, l->out_h * l->out_w, *(dn_activation *)l->priv);
    return DN_OK;
}


const dn_layer_ops dn_activation_ops = {
    .type = "activation",
    .make = activation_make,
    .setup = dn_setup_same_shape,
    .forward = activation_forward,
};

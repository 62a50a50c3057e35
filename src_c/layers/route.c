/* route.c - [route]
 *
 * Concatenates, along channels, the outputs of the layers listed in `layers`
 * (absolute indices). With groups=G each source contributes only its
 * group_id-th slice of C/G channels. All sources must share H and W.
 * Output [B][sum C_i/G][H][W].
 * Backward: each source's slice of the delta is added back into that
 * source's delta at the channels it came from (group_id * C_i/G onwards). */
#include "../ops/ops.h"
#include "cuda.h"

#include <string.h>

typedef struct {
    const int *src;
    int nsrc, groups, group_id;
} route_state;

static dn_status route_make(dn_layer *l, dn_net *net)
{
    route_state *s = dn_layer_priv(l, sizeof(route_state));
    if (!s) return DN_ERR_NOMEM;
    dn_status st;
    if ((st = dn_layer_sources(l, net, "layers", &s->src, &s->nsrc)) || (st = dn_attr_int(l, "groups", &s->groups)) ||
        (st = dn_attr_int(l, "group_id", &s->group_id)))
        return st;
    if (s->groups < 1 || s->group_id < 0 || s->group_id >= s->groups)
        return dn_layer_fail(l, DN_ERR_ARG, "groups=%d and group_id=%d: need 0 <= group_id < groups", s->groups,
                             s->group_id);
    return DN_OK;
}

static dn_status route_setup(dn_layer *l, dn_net *net)
{
    route_state *s = l->priv;
    const dn_layer *first = net->layers[s->src[0]];
    l->out_h = first->out_h;
    l->out_w = first->out_w;
    l->out_c = 0;
    for (int i = 0; i < s->nsrc; ++i) {
        const dn_layer *p = net->layers[s->src[i]];
        if (p->out_h != first->out_h || p->out_w != first->out_w)
            return dn_layer_fail(l, DN_ERR_SHAPE, "layer %d is %d x %d but layer %d is %d x %d (h x w); routed layers "
                                 "must have the same size", p->index, p->out_h, p->out_w, first->index, first->out_h,
                                 first->out_w);
        if (p->out_c % s->groups)
            return dn_layer_fail(l, DN_ERR_SHAPE, "layer %d has %d channels, not divisible by groups=%d", p->index,
                                 p->out_c, s->groups);
        l->out_c += p->out_c / s->groups;
    }
    return DN_OK;
}

static dn_status route_forward(dn_layer *l, dn_net *net)
{
    route_state *s = l->priv;
    size_t offset = 0;
    for (int i = 0; i < s->nsrc; ++i) {
        const dn_layer *p = net->layers[s->src[i]];
        const size_t part = p->outputs / s->groups;
        for (int b = 0; b < l->batch; ++b)
            dn_parallel_copy(net, l->output + (size_t)b * l->outputs + offset,
                             p->output + (size_t)b * p->outputs + part * s->group_id, part);
        offset += part;
    }
    return DN_OK;
}

static dn_status route_backward(dn_layer *l, dn_net *net)
{
    route_state *s = l->priv;
    size_t offset = 0;
    for (int i = 0; i < s->nsrc; ++i) {
        dn_layer *p = net->layers[s->src[i]];
        const size_t part = p->outputs / s->groups;
        for (int b = 0; b < l->batch; ++b) {
            const float *src = l->delta + (size_t)b * l->outputs + offset;
            float *dst = p->delta + (size_t)b * p->outputs + part * s->group_id;
            dn_parallel_add(net, dst, src, part);
        }
        offset += part;
    }
    return DN_OK;
}

const dn_layer_ops dn_route_ops = {
    .type = "route",
    .make = route_make,
    .setup = route_setup,
    .forward = route_forward,
    .backward = route_backward,
    DN_GPU_OPS(dn_route_forward_gpu, dn_route_backward_gpu),
};

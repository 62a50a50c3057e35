/* route.cu - [route] on the device: each source's group slice copied into
 * its place along the channels (all images in one launch), and in backward the matching
 * slice of the delta added back into the source's delta, as route.c. */
#include "cuda.h"
#include "../ops/ops.h"

typedef struct {
    const int *src;
    int nsrc, groups, group_id;
} route_gpu;

static dn_status read_options(const dn_layer *l, route_gpu *r)
{
    dn_status s;
    if ((s = dn_attr_ints(l, "layers", &r->src, &r->nsrc)) || (s = dn_attr_int(l, "groups", &r->groups)) ||
        (s = dn_attr_int(l, "group_id", &r->group_id)))
        return s;
    return DN_OK;
}

static dn_status route_pass(dn_layer *l, dn_net *net, int backward)
{
    route_gpu r;
    dn_status s = read_options(l, &r);
    if (s) return s;
    size_t offset = 0;
    for (int i = 0; i < r.nsrc; ++i) {
        dn_layer *p = net->layers[r.src[i]];
        const size_t part = p->outputs / r.groups;
        /* every image's slice in one launch */
        float *mine = (backward ? l->delta_gpu : l->output_gpu) + offset;
        const size_t theirs = part * r.group_id;
        if (backward) dn_gpu_copy_rows(p->delta_gpu + theirs, p->outputs, mine, l->outputs, (size_t)l->batch, part, 1);
        else dn_gpu_copy_rows(mine, l->outputs, p->output_gpu + theirs, p->outputs, (size_t)l->batch, part, 0);
        offset += part;
    }
    return DN_OK;
}

extern "C" {
dn_status dn_route_forward_gpu(dn_layer *l, dn_net *net) { return route_pass(l, net, 0); }
dn_status dn_route_backward_gpu(dn_layer *l, dn_net *net) { return route_pass(l, net, 1); }
}

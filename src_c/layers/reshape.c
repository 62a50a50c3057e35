/* reshape.c - [reshape] (Caffe's Reshape): the input's values per image, in
 * their order, read as another shape: shape=c,h,w, where 0 copies that
 * dimension of the input and one -1 is inferred from the count; the count
 * must stay the same (an error naming the layer otherwise). Forward copies,
 * backward passes the delta through (added into the input delta). */
#include "../ops/ops.h"
#include "cuda.h"

static dn_status reshape_make(dn_layer *l, dn_net *net)
{
    (void)net;
    const int *shape;
    int n;
    dn_status st = dn_attr_ints(l, "shape", &shape, &n);
    if (st) return st;
    if (n != 3) return dn_layer_fail(l, DN_ERR_ARG, "shape needs 3 values (c,h,w), got %d", n);
    int inferred = 0;
    for (int i = 0; i < 3; ++i) {
        if (shape[i] < -1) return dn_layer_fail(l, DN_ERR_ARG, "shape value %d: give a size, 0 or -1", shape[i]);
        inferred += shape[i] == -1;
    }
    if (inferred > 1) return dn_layer_fail(l, DN_ERR_ARG, "shape may infer one dimension (-1), not %d", inferred);
    return DN_OK;
}

static dn_status reshape_setup(dn_layer *l, dn_net *net)
{
    (void)net;
    const int *shape;
    int n;
    dn_status st = dn_attr_ints(l, "shape", &shape, &n);
    if (st) return st;
    const long long in[3] = {l->c, l->h, l->w}, count = (long long)l->c * l->h * l->w;
    long long out[3], known = 1;
    int free_axis = -1;
    for (int i = 0; i < 3; ++i) {
        out[i] = shape[i] == 0 ? in[i] : shape[i];
        if (shape[i] == -1) free_axis = i;
        else known *= out[i];
    }
    if (free_axis >= 0) {
        if (known == 0 || count % known)
            return dn_layer_fail(l, DN_ERR_SHAPE, "shape %d,%d,%d cannot hold the input's %d x %d x %d values",
                                 shape[0], shape[1], shape[2], l->c, l->h, l->w);
        out[free_axis] = count / known;
    }
    if (out[0] * out[1] * out[2] != count)
        return dn_layer_fail(l, DN_ERR_SHAPE, "shape %lld x %lld x %lld holds %lld values, the input %d x %d x %d "
                                              "has %lld", out[0], out[1], out[2], out[0] * out[1] * out[2], l->c, l->h,
                             l->w, count);
    l->out_c = (int)out[0];
    l->out_h = (int)out[1];
    l->out_w = (int)out[2];
    l->inputs = (size_t)count;
    l->outputs = (size_t)count;
    return DN_OK;
}

static dn_status reshape_backward(dn_layer *l, dn_net *net)
{
    float *d = dn_layer_input_delta(net, l);
    if (d) dn_head_pass_delta(l, d); /* input delta += delta, value by value */
    return DN_OK;
}

const dn_layer_ops dn_reshape_ops = {
    .type = "reshape",
    .make = reshape_make,
    .setup = reshape_setup,
    .forward = dn_forward_copy,
    .backward = reshape_backward,
    DN_GPU_OPS(dn_reshape_forward_gpu, dn_reshape_backward_gpu),
};

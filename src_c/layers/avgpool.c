/* avgpool.c - [avgpool]: global average pooling.
 * Input [B][C][H][W], output [B][C][1][1], out[c] = mean over H*W of in[c].
 * Backward: dL/d(in[c][y][x]) += dL/d(out[c]) / (H*W). */
#include "../ops/ops.h"
#include "cuda.h"

static dn_status avgpool_make(dn_layer *l, dn_net *net)
{
    (void)l;
    (void)net;
    return DN_OK;
}

static dn_status avgpool_setup(dn_layer *l, dn_net *net)
{
    (void)net;
    l->out_c = l->c;
    l->out_h = l->out_w = 1;
    return DN_OK;
}

static dn_status avgpool_forward(dn_layer *l, dn_net *net)
{
    const float *in = dn_layer_input(net, l);
    const size_t hw = (size_t)l->h * l->w;
    for (int k = 0; k < l->batch * l->c; ++k) {
        float sum = 0.f;
        for (size_t i = 0; i < hw; ++i) sum += in[(size_t)k * hw + i];
        l->output[k] = sum / hw;
    }
    return DN_OK;
}

static dn_status avgpool_backward(dn_layer *l, dn_net *net)
{
    float *d = dn_layer_input_delta(net, l);
    if (!d) return DN_OK;
    const size_t hw = (size_t)l->h * l->w;
    for (int k = 0; k < l->batch * l->c; ++k) {
        const float g = l->delta[k] / (float)hw;
        for (size_t i = 0; i < hw; ++i) d[(size_t)k * hw + i] += g;
    }
    return DN_OK;
}

const dn_layer_ops dn_avgpool_ops = {
    .type = "avgpool",
    .make = avgpool_make,
    .setup = avgpool_setup,
    .forward = avgpool_forward,
    .backward = avgpool_backward,
    DN_GPU_OPS(dn_avgpool_forward_gpu, dn_avgpool_backward_gpu),
};

/* maxpool.cu - [maxpool] on the device, spatial mode: one thread per output
 * takes the max of its window (pixels outside the image skipped, the first of
 * equal maxima wins, as maxpool.c) and, in training, records the index of its
 * argmax within the image (device slot 0, ints; -1 for a window wholly
 * outside the image). Backward adds each output's delta at its argmax
 * (atomically: windows may overlap). maxpool_depth=1: one thread per output
 * pixel takes the max across channels g, g + out_c, ... (the first of equal
 * maxima wins, as maxpool.c's depth_argmax) with its index within the image;
 * the same backward. */
#include "cuda.h"
#include "../ops/ops.h"

#include <float.h>

__global__ static void maxpool_kernel(const float *in, int batch, int c, int h, int w, int size, int sy, int sx,
                                      int padding, int out_h, int out_w, float *out, int *idx)
{
    const int off = -padding / 2;
    DN_KERNEL_LOOP(o, (size_t)batch * c * out_h * out_w) {
        const int j = (int)(o % out_w), i = (int)(o / out_w % out_h), k = (int)(o / ((size_t)out_w * out_h) % c);
        const size_t b = o / ((size_t)out_w * out_h * c);
        const float *src = in + (b * c + k) * (size_t)h * w;
        const int y0 = off + i * sy, x0 = off + j * sx;
        float best = -FLT_MAX;
        int where = -1;
        for (int n = 0; n < size; ++n) {
            const int y = y0 + n;
            if (y < 0 || y >= h) continue;
            for (int m = 0; m < size; ++m) {
                const int x = x0 + m;
                if (x < 0 || x >= w) continue;
                const float v = src[(size_t)y * w + x];
                if (v > best || where < 0) {
                    best = v > best ? v : best;
                    where = y * w + x;
                }
            }
        }
        out[o] = best;
        if (idx) idx[o] = where < 0 ? -1 : k * h * w + where;
    }
}

__global__ static void depth_kernel(const float *in, int batch, int c, int hw, int out_c, float *out, int *idx)
{
    DN_KERNEL_LOOP(o, (size_t)batch * out_c * hw) {
        const int i = (int)(o % hw), g = (int)(o / hw % out_c);
        const size_t b = o / ((size_t)hw * out_c);
        float best = -FLT_MAX;
        int where = -1;
        for (int k = g; k < c; k += out_c) {
            const float v = in[(b * c + k) * hw + i];
            if (v > best || where < 0) {
                best = v > best ? v : best;
                where = k * hw + i;
            }
        }
        out[o] = best;
        if (idx) idx[o] = where;
    }
}

__global__ static void unpool_kernel(const int *idx, const float *delta, size_t outputs, size_t inputs, size_t n,
                                     float *in_delta)
{
    DN_KERNEL_LOOP(o, n) {
        if (idx[o] >= 0) atomicAdd(in_delta + (o / outputs) * inputs + idx[o], delta[o]);
    }
}

static dn_status maxpool_forward_gpu(dn_layer *l, dn_net *net)
{
    int size, sx, sy, padding, depth;
    dn_status s;
    if ((s = dn_pool_window(l, &size, &sx, &sy, &padding)) || (s = dn_attr_int(l, "maxpool_depth", &depth))) return s;
    const size_t n = (size_t)l->batch * l->outputs;
    float *idx = NULL;
    if (net->train && (s = dn_gpu_buffer(l, 0, n, &idx))) return s;
    if (depth) {
        depth_kernel<<<dn_grid(n), DN_LAUNCH>>>(dn_gpu_input(net, l), l->batch, l->c, l->h * l->w, l->out_c,
                                               l->output_gpu, (int *)idx);
        return DN_OK;
    }
    maxpool_kernel<<<dn_grid(n), DN_LAUNCH>>>(dn_gpu_input(net, l), l->batch, l->c, l->h, l->w, size, sy, sx, padding,
                                             l->out_h, l->out_w, l->output_gpu, (int *)idx);
    return DN_OK;
}

static dn_status maxpool_backward_gpu(dn_layer *l, dn_net *net)
{
    float *d = dn_gpu_input_delta(net, l);
    if (!d) return DN_OK;
    const size_t n = (size_t)l->batch * l->outputs;
    if (l->gpu_cap[0] < n) return dn_layer_fail(l, DN_ERR_STATE, "no training forward pass recorded the max indices");
    unpool_kernel<<<dn_grid(n), DN_LAUNCH>>>((const int *)l->gpu_buf[0], l->delta_gpu, l->outputs, l->inputs, n, d);
    return DN_OK;
}

extern "C" {
dn_status dn_maxpool_forward_gpu(dn_layer *l, dn_net *net) { return maxpool_forward_gpu(l, net); }
dn_status dn_maxpool_backward_gpu(dn_layer *l, dn_net *net) { return maxpool_backward_gpu(l, net); }
}

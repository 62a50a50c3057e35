/* pool.c - 2-D max and average pooling as darknet's maxpool and
 * local_avgpool compute them: window `size`, strides, and `padding` split so
 * the window starts padding/2 pixels before the image; pixels outside the
 * image are skipped (max ignores them, average divides by the count inside). */
#include "internal.h"

#include <float.h>

void dn_pool2d(const float *in, int batch, int channels, int h, int w, int size, int stride_y, int stride_x,
               int padding, int out_h, int out_w, dn_pool_kind kind, float *out)
{
    const int off = -padding / 2;
    for (int bc = 0; bc < batch * channels; ++bc) {
        const float *src = in + (size_t)bc * h * w;
        float *dst = out + (size_t)bc * out_h * out_w;
        for (int i = 0; i < out_h; ++i) {
            const int y0 = off + i * stride_y;
            for (int j = 0; j < out_w; ++j) {
                const int x0 = off + j * stride_x;
                float best = -FLT_MAX, sum = 0.f;
                int count = 0;
                for (int n = 0; n < size; ++n) {
                    const int y = y0 + n;
                    if (y < 0 || y >= h) continue;
                    for (int m = 0; m < size; ++m) {
                        const int x = x0 + m;
                        if (x < 0 || x >= w) continue;
                        const float v = src[(size_t)y * w + x];
                        if (v > best) best = v;
                        sum += v;
                        ++count;
                    }
                }
                dst[(size_t)i * out_w + j] = kind == DN_POOL_MAX ? best : (count ? sum / count : 0.f);
            }
        }
    }
}

dn_status dn_pool_window(const dn_layer *l, int *size, int *stride_x, int *stride_y, int *padding)
{
    dn_status st;
    if ((st = dn_attr_int(l, "size", size)) || (st = dn_attr_int(l, "stride_x", stride_x)) ||
        (st = dn_attr_int(l, "stride_y", stride_y)) || (st = dn_attr_int(l, "padding", padding)))
        return st;
    if (*size < 1 || *stride_x < 1 || *stride_y < 1 || *padding < 0)
        return dn_layer_fail(l, DN_ERR_ARG, "size and strides must be positive and padding >= 0 (size=%d stride_x=%d "
                             "stride_y=%d padding=%d)", *size, *stride_x, *stride_y, *padding);
    return DN_OK;
}

/* pool.c - 2-D max and average pooling as darknet's maxpool and
 * local_avgpool compute them: window `size`, strides, and `padding` split so
 * the window starts padding/2 pixels before the image; pixels outside the
 * image are skipped (max ignores them, average divides by the count inside). */
#include "ops.h"

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

/* Max pooling with a 2x2 window and stride 2 whose windows all lie inside
 * the image (offset 0, 2*out <= size): the common case, without bounds
 * checks. Same comparisons in the same order as dn_pool2d. */
DN_VECTOR_CLONES
void dn_maxpool2x2(const float *in, int planes, int h, int w, int out_h, int out_w, float *out)
{
    for (int p = 0; p < planes; ++p) {
        const float *src = in + (size_t)p * h * w;
        float *dst = out + (size_t)p * out_h * out_w;
        for (int i = 0; i < out_h; ++i) {
            const float *r0 = src + (size_t)(2 * i) * w, *r1 = r0 + w;
            float *d = dst + (size_t)i * out_w;
            for (int j = 0; j < out_w; ++j) {
                float best = -FLT_MAX;
                best = r0[2 * j] > best ? r0[2 * j] : best;
                best = r0[2 * j + 1] > best ? r0[2 * j + 1] : best;
                best = r1[2 * j] > best ? r1[2 * j] : best;
                best = r1[2 * j + 1] > best ? r1[2 * j + 1] : best;
                d[j] = best;
            }
        }
    }
}

/* Max pooling as two one-dimensional passes (rows, then columns): the max of
 * a window is the max of its rows' maxima, so the result is dn_pool2d's
 * exactly (NaN ignored the same way, -FLT_MAX for an empty window), with
 * 2*size comparisons per output instead of size^2. tmp: h * out_w floats. */
void dn_maxpool_separable(const float *in, int planes, int h, int w, int size, int stride_y, int stride_x,
                          int padding, int out_h, int out_w, float *out, float *tmp)
{
    const int off = -padding / 2;
    for (int p = 0; p < planes; ++p) {
        const float *src = in + (size_t)p * h * w;
        float *dst = out + (size_t)p * out_h * out_w;
        for (int y = 0; y < h; ++y) {
            const float *row = src + (size_t)y * w;
            float *t = tmp + (size_t)y * out_w;
            for (int j = 0; j < out_w; ++j) {
                const int x0 = off + j * stride_x;
                const int a = x0 < 0 ? 0 : x0, e = x0 + size < w ? x0 + size : w;
                float best = -FLT_MAX;
                for (int x = a; x < e; ++x)
                    if (row[x] > best) best = row[x];
                t[j] = best;
            }
        }
        for (int i = 0; i < out_h; ++i) {
            const int y0 = off + i * stride_y;
            const int a = y0 < 0 ? 0 : y0, e = y0 + size < h ? y0 + size : h;
            float *d = dst + (size_t)i * out_w;
            for (int j = 0; j < out_w; ++j) d[j] = -FLT_MAX;
            for (int y = a; y < e; ++y) {
                const float *t = tmp + (size_t)y * out_w;
                for (int j = 0; j < out_w; ++j) d[j] = t[j] > d[j] ? t[j] : d[j];
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

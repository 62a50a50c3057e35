/* im2col.c - unrolls image patches into columns so convolution becomes GEMM.
 *
 * im: [channels][height][width]. col: [channels*kh*kw][out_h*out_w], row
 * r = (c*kh + ky)*kw + kx holds, for every output position (oy, ox), the input
 * pixel at (oy*stride_h - pad_h + ky*dilation_h, ox*stride_w - pad_w +
 * kx*dilation_w), or 0 outside the image. */
#include "internal.h"

void dn_im2col(const float *im, int channels, int height, int width, int kh, int kw, int pad_h, int pad_w,
               int stride_h, int stride_w, int dil_h, int dil_w, int out_h, int out_w, float *col)
{
    const size_t plane = (size_t)out_h * out_w;
    for (int c = 0; c < channels; ++c) {
        const float *src = im + (size_t)c * height * width;
        for (int ky = 0; ky < kh; ++ky) {
            for (int kx = 0; kx < kw; ++kx) {
                float *dst = col + ((size_t)(c * kh + ky) * kw + kx) * plane;
                const int x0 = kx * dil_w - pad_w;
                /* the range of ox for which ix = ox*stride_w + x0 falls inside [0, width) */
                int ox_lo = 0, ox_hi = out_w;
                while (ox_lo < out_w && ox_lo * stride_w + x0 < 0) ++ox_lo;
                while (ox_hi > ox_lo && (ox_hi - 1) * stride_w + x0 >= width) --ox_hi;
                for (int oy = 0; oy < out_h; ++oy) {
                    const int iy = oy * stride_h - pad_h + ky * dil_h;
                    float *d = dst + (size_t)oy * out_w;
                    if (iy < 0 || iy >= height) {
                        for (int ox = 0; ox < out_w; ++ox) d[ox] = 0.f;
                        continue;
                    }
                    const float *row = src + (size_t)iy * width;
                    for (int ox = 0; ox < ox_lo; ++ox) d[ox] = 0.f;
                    if (stride_w == 1) {
                        const float *s = row + x0;
                        for (int ox = ox_lo; ox < ox_hi; ++ox) d[ox] = s[ox];
                    } else {
                        for (int ox = ox_lo; ox < ox_hi; ++ox) d[ox] = row[ox * stride_w + x0];
                    }
                    for (int ox = ox_hi; ox < out_w; ++ox) d[ox] = 0.f;
                }
            }
        }
    }
}

/* The adjoint of dn_im2col: adds every column entry back onto the input
 * pixel it was read from (entries that came from the padding are dropped). */
void dn_col2im(const float *col, int channels, int height, int width, int kh, int kw, int pad_h, int pad_w,
               int stride_h, int stride_w, int dil_h, int dil_w, int out_h, int out_w, float *im)
{
    const size_t plane = (size_t)out_h * out_w;
    for (int c = 0; c < channels; ++c) {
        float *dst = im + (size_t)c * height * width;
        for (int ky = 0; ky < kh; ++ky)
            for (int kx = 0; kx < kw; ++kx) {
                const float *src = col + ((size_t)(c * kh + ky) * kw + kx) * plane;
                for (int oy = 0; oy < out_h; ++oy) {
                    const int iy = oy * stride_h - pad_h + ky * dil_h;
                    if (iy < 0 || iy >= height) continue;
                    for (int ox = 0; ox < out_w; ++ox) {
                        const int ix = ox * stride_w - pad_w + kx * dil_w;
                        if (ix >= 0 && ix < width) dst[(size_t)iy * width + ix] += src[(size_t)oy * out_w + ox];
                    }
                }
            }
    }
}

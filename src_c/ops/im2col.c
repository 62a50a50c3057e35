/* im2col.c - unrolls image patches into columns so convolution becomes GEMM.
 *
 * im: [channels][height][width]. col: [channels*kh*kw][out_h*out_w], row
 * r = (c*kh + ky)*kw + kx holds, for every output position (oy, ox), the input
 * pixel at (oy*stride_h - pad_h + ky*dilation_h, ox*stride_w - pad_w +
 * kx*dilation_w), or 0 outside the image. */
#include "ops.h"

#include <string.h>

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

/* One row of the im2col matrix, the tap (ky, kx) of one channel plane
 * `im`, at the output positions n0 <= n < n1 (n = oy*out_w + ox), into dst[0 .. n1-n0). */
void dn_im2col_row(const float *im, int height, int width, int ky, int kx, int pad_h, int pad_w, int stride_h,
                   int stride_w, int dil_h, int dil_w, int out_w, int n0, int n1, float *dst)
{
    const int oy0 = n0 / out_w, oy1 = (n1 - 1) / out_w;
    const int x0 = kx * dil_w - pad_w;
    /* the range of ox for which ix = ox*stride_w + x0 falls inside [0, width) */
    int ox_lo = 0, ox_hi = out_w;
    while (ox_lo < out_w && ox_lo * stride_w + x0 < 0) ++ox_lo;
    while (ox_hi > ox_lo && (ox_hi - 1) * stride_w + x0 >= width) --ox_hi;
    for (int oy = oy0; oy <= oy1; ++oy) {
        const int a = oy == oy0 ? n0 - oy * out_w : 0;     /* first ox in range */
        const int e = oy == oy1 ? n1 - oy * out_w : out_w; /* one past the last */
        float *d = dst + ((size_t)oy * out_w + a - n0);    /* d[ox - a] for ox in [a, e) */
        const int iy = oy * stride_h - pad_h + ky * dil_h;
        if (iy < 0 || iy >= height) {
            memset(d, 0, (size_t)(e - a) * sizeof(float));
            continue;
        }
        const float *row = im + (size_t)iy * width;
        const int lo = ox_lo > a ? (ox_lo < e ? ox_lo : e) : a, hi = ox_hi < e ? ox_hi : e;
        int ox = a;
        for (; ox < lo; ++ox) d[ox - a] = 0.f;
        if (stride_w == 1) {
            if (hi > ox) memcpy(d + (ox - a), row + x0 + ox, (size_t)(hi - ox) * sizeof(float));
            ox = hi > ox ? hi : ox;
        } else {
            for (; ox < hi; ++ox) d[ox - a] = row[ox * stride_w + x0];
        }
        for (; ox < e; ++ox) d[ox - a] = 0.f;
    }
}

/* Spans of one im2col row land in the packed GEMM's B panels ([panel][kc][DN_NR],
 * this row being the kk-th of its K block): position q of the row goes to
 * panel q / DN_NR, lane q % DN_NR. */
static inline float *lane(float *bp, int kc, int kk, int q)
{
    return bp + ((size_t)(q / DN_NR) * kc + kk) * DN_NR + q % DN_NR;
}

static void put_zeros(float *bp, int kc, int kk, int q, int len)
{
    while (len > 0) {
        const int room = DN_NR - q % DN_NR, part = len < room ? len : room;
        float *d = lane(bp, kc, kk, q);
        for (int i = 0; i < part; ++i) d[i] = 0.f;
        q += part;
        len -= part;
    }
}

DN_VECTOR_CLONES
static void put_run(float *bp, int kc, int kk, int q, const float *src, int stride, int len)
{
    while (len > 0) {
        const int room = DN_NR - q % DN_NR, part = len < room ? len : room;
        float *d = lane(bp, kc, kk, q);
        if (stride == 1)
            for (int i = 0; i < part; ++i) d[i] = src[i];
        else if (stride == 2)
            for (int i = 0; i < part; ++i) d[i] = src[2 * i];
        else
            for (int i = 0; i < part; ++i) d[i] = src[(size_t)i * stride];
        q += part;
        len -= part;
        src += (size_t)part * stride;
    }
}

void dn_im2col_row_panels(const float *im, int height, int width, int ky, int kx, int pad_h, int pad_w, int stride_h,
                          int stride_w, int dil_h, int dil_w, int out_w, int n0, int n1, int kc, int kk, float *bp)
{
    const int oy0 = n0 / out_w, oy1 = (n1 - 1) / out_w;
    const int x0 = kx * dil_w - pad_w;
    int ox_lo = 0, ox_hi = out_w;
    while (ox_lo < out_w && ox_lo * stride_w + x0 < 0) ++ox_lo;
    while (ox_hi > ox_lo && (ox_hi - 1) * stride_w + x0 >= width) --ox_hi;
    for (int oy = oy0; oy <= oy1; ++oy) {
        const int a = oy == oy0 ? n0 - oy * out_w : 0;
        const int e = oy == oy1 ? n1 - oy * out_w : out_w;
        const int q = oy * out_w + a - n0; /* position of ox = a in the row */
        const int iy = oy * stride_h - pad_h + ky * dil_h;
        if (iy < 0 || iy >= height) {
            put_zeros(bp, kc, kk, q, e - a);
            continue;
        }
        const int lo = ox_lo > a ? (ox_lo < e ? ox_lo : e) : a, hi = ox_hi < e ? ox_hi : e;
        if (lo > a) put_zeros(bp, kc, kk, q, lo - a);
        if (hi > lo) put_run(bp, kc, kk, q + (lo - a), im + (size_t)iy * width + lo * stride_w + x0, stride_w, hi - lo);
        const int from = hi > lo ? hi : lo;
        if (e > from) put_zeros(bp, kc, kk, q + (from - a), e - from);
    }
    /* the rest of the last panel */
    const int n = n1 - n0, pad = (n + DN_NR - 1) / DN_NR * DN_NR - n;
    if (pad) put_zeros(bp, kc, kk, n, pad);
}

/* dn_im2col restricted to the output positions n0 <= n < n1 (n = oy*out_w + ox):
 * col is [channels*kh*kw][n1 - n0], row r holding what dn_im2col's row r holds
 * at those positions. */
void dn_im2col_range(const float *im, int channels, int height, int width, int kh, int kw, int pad_h, int pad_w,
                     int stride_h, int stride_w, int dil_h, int dil_w, int out_h, int out_w, int n0, int n1, float *col)
{
    (void)out_h;
    const size_t len = (size_t)(n1 - n0);
    for (int c = 0; c < channels; ++c)
        for (int ky = 0; ky < kh; ++ky)
            for (int kx = 0; kx < kw; ++kx)
                dn_im2col_row(im + (size_t)c * height * width, height, width, ky, kx, pad_h, pad_w, stride_h, stride_w,
                              dil_h, dil_w, out_w, n0, n1, col + ((size_t)(c * kh + ky) * kw + kx) * len);
}

void dn_col2im_range(const float *col, int channels, int height, int width, int kh, int kw, int pad_h, int pad_w,
                     int stride_h, int stride_w, int dil_h, int dil_w, int out_w, int n0, int n1, float *im)
{
    const size_t len = (size_t)(n1 - n0);
    const int oy0 = n0 / out_w, oy1 = (n1 - 1) / out_w;
    for (int c = 0; c < channels; ++c) {
        float *plane = im + (size_t)c * height * width;
        for (int ky = 0; ky < kh; ++ky)
            for (int kx = 0; kx < kw; ++kx) {
                const float *src = col + ((size_t)(c * kh + ky) * kw + kx) * len;
                const int x0 = kx * dil_w - pad_w;
                int ox_lo = 0, ox_hi = out_w;
                while (ox_lo < out_w && ox_lo * stride_w + x0 < 0) ++ox_lo;
                while (ox_hi > ox_lo && (ox_hi - 1) * stride_w + x0 >= width) --ox_hi;
                for (int oy = oy0; oy <= oy1; ++oy) {
                    const int iy = oy * stride_h - pad_h + ky * dil_h;
                    if (iy < 0 || iy >= height) continue;
                    const int a = oy == oy0 ? n0 - oy * out_w : 0;
                    const int e = oy == oy1 ? n1 - oy * out_w : out_w;
                    const int lo = ox_lo > a ? ox_lo : a, hi = ox_hi < e ? ox_hi : e;
                    if (hi <= lo) continue;
                    const float *s = src + ((size_t)oy * out_w + lo - n0); /* s[ox - lo] */
                    float *row = plane + (size_t)iy * width + (lo * stride_w + x0);
                    if (stride_w == 1)
                        for (int i = 0; i < hi - lo; ++i) row[i] += s[i];
                    else
                        for (int i = 0; i < hi - lo; ++i) row[(size_t)i * stride_w] += s[i];
                }
            }
    }
}

/* im2col.cu - im2col and its adjoint col2im on the device, for square
 * kernels with equal padding on both axes (what [convolutional] uses).
 *
 * Layouts as im2col.c: im [channels][height][width], col
 * [channels*k*k][out_h*out_w], row r = (c*k + ky)*k + kx holding for each
 * output position (oy, ox) the pixel (oy*stride_h - pad + ky*dilation,
 * ox*stride_w - pad + kx*dilation), 0 outside the image. col2im gathers: each
 * image pixel sums the column entries read from it, so no two threads write
 * the same value. dn_gpu_im2col_images lays out the columns of several
 * images one after the other in one launch (the batched forward);
 * dn_gpu_im2col_interleaved row by row, each row the images' runs one after
 * the other ([K][images][N], for the weight gradient as one GEMM). */
#include "cuda.h"

/* `images` images im_stride floats apart into columns one after the other: a row per (image, channel), a thread
 * per output position writing its k*k column entries (consecutive threads write consecutive entries) */
__global__ static void im2col_kernel(const float *im, size_t images, size_t im_stride, int channels, int height,
                                     int width, int k, int pad, int sh, int sw, int dil, int out_h, int out_w,
                                     size_t col_image, size_t col_row, float *col)
{
    const unsigned plane = (unsigned)out_h * out_w;
    DN_ROW_LOOP(r, p, images * channels, plane) {
        const size_t i = r / (unsigned)channels;
        const int c = (int)(r % (unsigned)channels);
        const int oy = (int)(p / (unsigned)out_w), ox = (int)(p % (unsigned)out_w);
        const float *src = im + i * im_stride + (size_t)c * height * width;
        float *dst = col + i * col_image + (size_t)c * k * k * col_row + p;
        for (int ky = 0; ky < k; ++ky) {
            const int y = oy * sh - pad + ky * dil;
            const bool row_in = y >= 0 && y < height;
            for (int kx = 0; kx < k; ++kx) {
                const int x = ox * sw - pad + kx * dil;
                dst[(size_t)(ky * k + kx) * col_row] = row_in && x >= 0 && x < width ? src[y * width + x] : 0.f;
            }
        }
    }
}

static void im2col_launch(const float *im, int images, size_t im_stride, int channels, int height, int width,
                          int ksize, int pad, int stride_h, int stride_w, int dilation, int out_h, int out_w,
                          int interleave, float *col)
{
    const size_t rows = (size_t)images * channels, plane = (size_t)out_h * out_w;
    const size_t col_image = interleave ? plane : (size_t)channels * ksize * ksize * plane;
    const size_t col_row = interleave ? (size_t)images * plane : plane;
    im2col_kernel<<<dn_row_grid(rows, plane), DN_LAUNCH>>>(im, (size_t)images, im_stride, channels, height, width,
                                                          ksize, pad, stride_h, stride_w, dilation, out_h, out_w,
                                                          col_image, col_row, col);
}

void dn_gpu_im2col_interleaved(const float *im, int images, size_t im_stride, int channels, int height, int width,
                               int ksize, int pad, int stride_h, int stride_w, int dilation, int out_h, int out_w,
                               float *col)
{
    im2col_launch(im, images, im_stride, channels, height, width, ksize, pad, stride_h, stride_w, dilation, out_h,
                  out_w, 1, col);
}

/* dst[(r * images + i) * len + p] = src[i * src_image + r * src_row + p]: rows of several images regrouped row-major
 * by row, then image */
__global__ static void gather_kernel(float *dst, const float *src, size_t images, size_t rows, unsigned len,
                                     size_t src_image, size_t src_row)
{
    DN_ROW_LOOP(q, p, rows * images, len) {
        const size_t r = q / images, i = q % images;
        dst[q * len + p] = src[i * src_image + r * src_row + p];
    }
}

void dn_gpu_gather_images(float *dst, const float *src, int images, size_t rows, size_t len, size_t src_image,
                          size_t src_row)
{
    gather_kernel<<<dn_row_grid(rows * images, len), DN_LAUNCH>>>(dst, src, (size_t)images, rows, (unsigned)len,
                                                                 src_image, src_row);
}

void dn_gpu_im2col_images(const float *im, int images, size_t im_stride, int channels, int height, int width,
                          int ksize, int pad, int stride_h, int stride_w, int dilation, int out_h, int out_w,
                          float *col)
{
    im2col_launch(im, images, im_stride, channels, height, width, ksize, pad, stride_h, stride_w, dilation, out_h,
                  out_w, 0, col);
}

void dn_gpu_im2col(const float *im, int channels, int height, int width, int ksize, int pad, int stride_h,
                   int stride_w, int dilation, int out_h, int out_w, float *col)
{
    dn_gpu_im2col_images(im, 1, 0, channels, height, width, ksize, pad, stride_h, stride_w, dilation, out_h, out_w,
                         col);
}

/* `images` images' columns one after the other into images im_stride floats apart: a row per (image, channel), a
 * thread per pixel gathering the column entries read from it */
__global__ static void col2im_kernel(const float *col, size_t images, size_t im_stride, int channels, int height,
                                     int width, int k, int pad, int sh, int sw, int dil, int out_h, int out_w,
                                     float *im)
{
    const unsigned plane = (unsigned)out_h * out_w, hw = (unsigned)height * width;
    DN_ROW_LOOP(r, t, images * channels, hw) {
        const size_t i = r / (unsigned)channels;
        const int c = (int)(r % (unsigned)channels);
        const float *cols = col + (i * channels + c) * (size_t)k * k * plane;
        const int y = (int)(t / (unsigned)width), x = (int)(t % (unsigned)width);
        float sum = 0.f;
        for (int ky = 0; ky < k; ++ky) {
            const int ny = y + pad - ky * dil; /* = oy * sh */
            if (ny < 0 || ny % sh) continue;
            const int oy = ny / sh;
            if (oy >= out_h) continue;
            for (int kx = 0; kx < k; ++kx) {
                const int nx = x + pad - kx * dil;
                if (nx < 0 || nx % sw) continue;
                const int ox = nx / sw;
                if (ox >= out_w) continue;
                sum += cols[(size_t)(ky * k + kx) * plane + (unsigned)oy * out_w + ox];
            }
        }
        im[i * im_stride + (size_t)c * hw + t] += sum;
    }
}

void dn_gpu_col2im_images(const float *col, int images, size_t im_stride, int channels, int height, int width,
                          int ksize, int pad, int stride_h, int stride_w, int dilation, int out_h, int out_w,
                          float *im)
{
    const size_t rows = (size_t)images * channels;
    col2im_kernel<<<dn_row_grid(rows, (size_t)height * width), DN_LAUNCH>>>(
        col, (size_t)images, im_stride, channels, height, width, ksize, pad, stride_h, stride_w, dilation, out_h, out_w,
        im);
}

void dn_gpu_col2im(const float *col, int channels, int height, int width, int ksize, int pad, int stride_h,
                   int stride_w, int dilation, int out_h, int out_w, float *im)
{
    dn_gpu_col2im_images(col, 1, 0, channels, height, width, ksize, pad, stride_h, stride_w, dilation, out_h, out_w,
                         im);
}

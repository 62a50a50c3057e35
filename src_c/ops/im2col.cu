/* im2col.cu - im2col and its adjoint col2im on the device, for square
 * kernels with equal padding on both axes (what [convolutional] uses).
 *
 * Layouts as im2col.c: im [channels][height][width], col
 * [channels*k*k][out_h*out_w], row r = (c*k + ky)*k + kx holding for each
 * output position (oy, ox) the pixel (oy*stride_h - pad + ky*dilation,
 * ox*stride_w - pad + kx*dilation), 0 outside the image. col2im gathers: each
 * image pixel sums the column entries read from it, so no two threads write
 * the same value. dn_gpu_im2col_images lays out the columns of several
 * images one after the other in one launch (the batched forward). */
#include "cuda.h"

/* `images` images im_stride floats apart into columns one after the other */
__global__ static void im2col_kernel(const float *im, size_t images, size_t im_stride, int channels, int height,
                                     int width, int k, int pad, int sh, int sw, int dil, int out_h, int out_w,
                                     float *col)
{
    const size_t plane = (size_t)out_h * out_w, per = (size_t)channels * k * k * plane;
    DN_KERNEL_LOOP(t, images * per) {
        const size_t i = t / per, u = t % per, r = u / plane, p = u % plane;
        const int c = (int)(r / ((size_t)k * k)), ky = (int)(r / k % k), kx = (int)(r % k);
        const int oy = (int)(p / out_w), ox = (int)(p % out_w);
        const int y = oy * sh - pad + ky * dil, x = ox * sw - pad + kx * dil;
        col[t] = (y >= 0 && y < height && x >= 0 && x < width)
                     ? im[i * im_stride + ((size_t)c * height + y) * width + x]
                     : 0.f;
    }
}

void dn_gpu_im2col_images(const float *im, int images, size_t im_stride, int channels, int height, int width,
                          int ksize, int pad, int stride_h, int stride_w, int dilation, int out_h, int out_w,
                          float *col)
{
    const size_t n = (size_t)images * channels * ksize * ksize * out_h * out_w;
    im2col_kernel<<<dn_grid(n), DN_BLOCK>>>(im, (size_t)images, im_stride, channels, height, width, ksize, pad,
                                            stride_h, stride_w, dilation, out_h, out_w, col);
}

void dn_gpu_im2col(const float *im, int channels, int height, int width, int ksize, int pad, int stride_h,
                   int stride_w, int dilation, int out_h, int out_w, float *col)
{
    dn_gpu_im2col_images(im, 1, 0, channels, height, width, ksize, pad, stride_h, stride_w, dilation, out_h, out_w,
                         col);
}

/* `images` images' columns one after the other into images im_stride floats apart */
__global__ static void col2im_kernel(const float *col, size_t images, size_t im_stride, int channels, int height,
                                     int width, int k, int pad, int sh, int sw, int dil, int out_h, int out_w,
                                     float *im)
{
    const size_t plane = (size_t)out_h * out_w, per_im = (size_t)channels * height * width;
    const size_t per_col = (size_t)channels * k * k * plane;
    DN_KERNEL_LOOP(v, images * per_im) {
        const size_t i = v / per_im, t = v % per_im;
        const float *cols = col + i * per_col;
        const int c = (int)(t / ((size_t)height * width)), y = (int)(t / width % height), x = (int)(t % width);
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
                sum += cols[(((size_t)c * k + ky) * k + kx) * plane + (size_t)oy * out_w + ox];
            }
        }
        im[i * im_stride + t] += sum;
    }
}

void dn_gpu_col2im_images(const float *col, int images, size_t im_stride, int channels, int height, int width,
                          int ksize, int pad, int stride_h, int stride_w, int dilation, int out_h, int out_w,
                          float *im)
{
    const size_t n = (size_t)images * channels * height * width;
    col2im_kernel<<<dn_grid(n), DN_BLOCK>>>(col, (size_t)images, im_stride, channels, height, width, ksize, pad,
                                            stride_h, stride_w, dilation, out_h, out_w, im);
}

void dn_gpu_col2im(const float *col, int channels, int height, int width, int ksize, int pad, int stride_h,
                   int stride_w, int dilation, int out_h, int out_w, float *im)
{
    dn_gpu_col2im_images(col, 1, 0, channels, height, width, ksize, pad, stride_h, stride_w, dilation, out_h, out_w,
                         im);
}

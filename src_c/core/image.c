/* image.c - 8-bit pixels to the network input, resized exactly as darknet
 * resizes: values scaled to 0..1, RGB planes (one grey plane for a network
 * of one channel), then darknet's two-pass
 * bilinear resize (columns first, then rows, sampling at x * (in-1)/(out-1)),
 * either stretched to the network size or letterboxed: scaled to fit with
 * the aspect kept, centred on a 0.5 grey canvas; for classifiers, scaled to
 * a shorter side of the network width and centre-cropped.
 *
 * A network of one channel takes grey images as darknet reads them for it
 * (OpenCV's IMREAD_GRAYSCALE); colour pixels handed to it become grey first,
 * exactly as OpenCV's cvtColor(BGR2GRAY) makes them on 8-bit values:
 * (9798 R + 19235 G + 3735 B + 2^14) >> 15, so resizing sees the 8-bit grey
 * image darknet would. */
#include "internal.h"

#include <stdint.h>
#include <stdlib.h>

void dn_letterbox_dims(int img_w, int img_h, int net_w, int net_h, int *new_w, int *new_h)
{
    if ((float)net_w / img_w < (float)net_h / img_h) {
        *new_w = net_w;
        *new_h = (img_h * net_w) / img_w;
    } else {
        *new_h = net_h;
        *new_w = (img_w * net_h) / img_h;
    }
}

/* value of plane k at (x, y) as darknet reads it: k = 0, 1, 2 for R, G, B,
 * or with planes = 1 the grey value */
static inline float px(const uint8_t *pixels, int stride, int channels, int bgr, int planes, int x, int y, int k)
{
    const uint8_t *p = pixels + (size_t)y * stride + (size_t)x * channels;
    if (channels == 1) return p[0] / 255.f;
    if (planes == 1) {
        const unsigned r = p[bgr ? 2 : 0], g = p[1], b = p[bgr ? 0 : 2];
        return ((9798u * r + 19235u * g + 3735u * b + (1u << 14)) >> 15) / 255.f;
    }
    return p[bgr ? 2 - k : k] / 255.f;
}

/* Resizes the image into dst (`planes` planes of dst_w x dst_h floats, the
 * image placed at column ox and row oy). */
static dn_status resize_into(const uint8_t *pixels, int w, int h, int channels, int stride, int bgr, int planes,
                             int rw, int rh, float *dst, int dst_w, int dst_h, int ox, int oy)
{
    const size_t plane = (size_t)dst_w * dst_h;
    if (rw == w && rh == h) {
        for (int k = 0; k < planes; ++k)
            for (int y = 0; y < h; ++y)
                for (int x = 0; x < w; ++x)
                    dst[k * plane + (size_t)(y + oy) * dst_w + x + ox] =
                        px(pixels, stride, channels, bgr, planes, x, y, k);
        return DN_OK;
    }
    float *part = malloc(sizeof(float) * (size_t)rw * h * planes);
    if (!part) return dn_fail(DN_ERR_NOMEM, "out of memory resizing a %d x %d image", w, h);
    const float w_scale = (float)(w - 1) / (rw - 1);
    const float h_scale = (float)(h - 1) / (rh - 1);
    for (int k = 0; k < planes; ++k)
        for (int r = 0; r < h; ++r)
            for (int c = 0; c < rw; ++c) {
                float val;
                if (c == rw - 1 || w == 1) {
                    val = px(pixels, stride, channels, bgr, planes, w - 1, r, k);
                } else {
                    float sx = c * w_scale;
                    int ix = (int)sx;
                    float dx = sx - ix;
                    val = (1 - dx) * px(pixels, stride, channels, bgr, planes, ix, r, k) +
                          dx * px(pixels, stride, channels, bgr, planes, ix + 1, r, k);
                }
                part[((size_t)k * h + r) * rw + c] = val;
            }
    for (int k = 0; k < planes; ++k)
        for (int r = 0; r < rh; ++r) {
            float sy = r * h_scale;
            int iy = (int)sy;
            float dy = sy - iy;
            float *out = dst + k * plane + (size_t)(r + oy) * dst_w + ox;
            const float *p0 = part + ((size_t)k * h + iy) * rw;
            for (int c = 0; c < rw; ++c) out[c] = (1 - dy) * p0[c];
            if (r == rh - 1 || h == 1) continue;
            const float *p1 = p0 + rw;
            for (int c = 0; c < rw; ++c) out[c] += dy * p1[c];
        }
    free(part);
    return DN_OK;
}

/* the checks both input functions make; *dst: the batch entry's input */
static dn_status check_image(dn_net *net, int batch_index, const uint8_t *pixels, int width, int height, int channels,
                             int stride, float **dst)
{
    if (!net) return dn_fail(DN_ERR_ARG, "network handle is NULL");
    if (!net->finalized) return dn_fail(DN_ERR_STATE, "the network is not finalized");
    if (!pixels) return dn_fail(DN_ERR_ARG, "pixels are NULL");
    if (batch_index < 0 || batch_index >= net->batch)
        return dn_fail(DN_ERR_ARG, "batch index %d out of range (batch %d)", batch_index, net->batch);
    if (width < 1 || height < 1) return dn_fail(DN_ERR_ARG, "bad image size %d x %d", width, height);
    if (channels != 1 && channels != 3)
        return dn_fail(DN_ERR_ARG, "images must have 1 or 3 channels, got %d", channels);
    if (net->c != 1 && net->c != 3)
        return dn_fail(DN_ERR_SHAPE, "the network takes %d channels; images give 1 (grey) or 3 (colour)", net->c);
    if (stride < width * channels) return dn_fail(DN_ERR_ARG, "row stride %d is less than width*channels", stride);
    *dst = net->input_buf + (size_t)batch_index * net->c * net->h * net->w;
    return DN_OK;
}

dn_status dn_net_set_input_image(dn_net *net, int batch_index, const uint8_t *pixels, int width, int height,
                                 int channels, int stride, int bgr, int letterbox)
{
    float *dst = NULL;
    dn_status st = check_image(net, batch_index, pixels, width, height, channels, stride, &dst);
    if (st) return st;
    if (!letterbox)
        return resize_into(pixels, width, height, channels, stride, bgr, net->c, net->w, net->h, dst, net->w, net->h, 0,
                           0);
    int nw, nh;
    dn_letterbox_dims(width, height, net->w, net->h, &nw, &nh);
    if (nw < 1 || nh < 1) return dn_fail(DN_ERR_ARG, "image %d x %d is too thin to letterbox", width, height);
    const size_t n = (size_t)net->c * net->h * net->w;
    for (size_t i = 0; i < n; ++i) dst[i] = .5f;
    return resize_into(pixels, width, height, channels, stride, bgr, net->c, nw, nh, dst, net->w, net->h,
                       (net->w - nw) / 2, (net->h - nh) / 2);
}

/* darknet's classifier input (resize_min, then crop_image): the shorter side
 * scaled to the network width (the other side in proportion, rounded down),
 * then the centred net w x h window, whose rows and columns outside the
 * resized image repeat its edge. */
dn_status dn_net_set_input_image_crop(dn_net *net, int batch_index, const uint8_t *pixels, int width, int height,
                                      int channels, int stride, int bgr)
{
    float *dst = NULL;
    dn_status st = check_image(net, batch_index, pixels, width, height, channels, stride, &dst);
    if (st) return st;
    const int side = net->w;
    int rw, rh;
    if (width < height) {
        rw = side;
        rh = (int)(((int64_t)height * side) / width);
    } else {
        rh = side;
        rw = (int)(((int64_t)width * side) / height);
    }
    if ((int64_t)rw * rh > ((int64_t)1 << 25))
        return dn_fail(DN_ERR_ARG, "image %d x %d is too elongated to resize to a shorter side of %d", width, height,
                       side);
    float *resized = malloc(sizeof(float) * (size_t)rw * rh * net->c);
    if (!resized) return dn_fail(DN_ERR_NOMEM, "out of memory resizing a %d x %d image", width, height);
    st = resize_into(pixels, width, height, channels, stride, bgr, net->c, rw, rh, resized, rw, rh, 0, 0);
    if (!st) {
        const int dx = (rw - net->w) / 2, dy = (rh - net->h) / 2;   /* C division: towards zero, as darknet */
        const size_t plane = (size_t)net->w * net->h, rplane = (size_t)rw * rh;
        for (int k = 0; k < net->c; ++k)
            for (int y = 0; y < net->h; ++y) {
                int r = y + dy < 0 ? 0 : (y + dy >= rh ? rh - 1 : y + dy);
                const float *row = resized + k * rplane + (size_t)r * rw;
                float *out = dst + k * plane + (size_t)y * net->w;
                for (int x = 0; x < net->w; ++x) {
                    int c = x + dx < 0 ? 0 : (x + dx >= rw ? rw - 1 : x + dx);
                    out[x] = row[c];
                }
            }
    }
    free(resized);
    return st;
}

/* pool.c - 2-D max and average pooling as darknet's maxpool and
 * local_avgpool compute them: window `size`, strides, and `padding` split so
 * the window starts padding/2 pixels before the image; pixels outside the
 * image are skipped (max ignores them, average divides by the count inside). */
#include "ops.h"

#include <float.h>
#include <string.h>

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
 * checks. Same comparisons in the same order as dn_pool2d: best starts at
 * -FLT_MAX and takes each of r0[2j], r0[2j+1], r1[2j], r1[2j+1] that is
 * greater (x86's max instructions compute exactly `v > best ? v : best`,
 * NaN and signed zeros included), so the vector rows give the same bits.
 * One output row from input rows r0, r1, columns [j0, out_w) in scalar: */
static void max2x2_row(const float *r0, const float *r1, float *d, int j0, int out_w)
{
    for (int j = j0; j < out_w; ++j) {
        float best = -FLT_MAX;
        best = r0[2 * j] > best ? r0[2 * j] : best;
        best = r0[2 * j + 1] > best ? r0[2 * j + 1] : best;
        best = r1[2 * j] > best ? r1[2 * j] : best;
        best = r1[2 * j + 1] > best ? r1[2 * j + 1] : best;
        d[j] = best;
    }
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

#ifndef DN_NO_AVX512
/* 16 outputs at a time: the even and odd columns of 32 inputs by one permute each */
__attribute__((target("avx512f"))) static void max2x2_row_avx512(const float *r0, const float *r1, float *d, int out_w)
{
    const __m512i even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    const __m512i odd = _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
    const __m512 lowest = _mm512_set1_ps(-FLT_MAX);
    int j = 0;
    for (; j + 16 <= out_w; j += 16) {
        const __m512 a0 = _mm512_loadu_ps(r0 + 2 * j), b0 = _mm512_loadu_ps(r0 + 2 * j + 16);
        const __m512 a1 = _mm512_loadu_ps(r1 + 2 * j), b1 = _mm512_loadu_ps(r1 + 2 * j + 16);
        __m512 best = _mm512_max_ps(_mm512_permutex2var_ps(a0, even, b0), lowest);
        best = _mm512_max_ps(_mm512_permutex2var_ps(a0, odd, b0), best);
        best = _mm512_max_ps(_mm512_permutex2var_ps(a1, even, b1), best);
        best = _mm512_max_ps(_mm512_permutex2var_ps(a1, odd, b1), best);
        _mm512_storeu_ps(d + j, best);
    }
    max2x2_row(r0, r1, d, j, out_w);
}
#endif

/* 8 outputs at a time: shuffles pick even and odd columns within 128-bit
 * lanes, a 64-bit permute puts them in order */
__attribute__((target("avx2"))) static void max2x2_row_avx2(const float *r0, const float *r1, float *d, int out_w)
{
    const __m256 lowest = _mm256_set1_ps(-FLT_MAX);
    int j = 0;
    for (; j + 8 <= out_w; j += 8) {
        const __m256 a0 = _mm256_loadu_ps(r0 + 2 * j), b0 = _mm256_loadu_ps(r0 + 2 * j + 8);
        const __m256 a1 = _mm256_loadu_ps(r1 + 2 * j), b1 = _mm256_loadu_ps(r1 + 2 * j + 8);
#define DN_PICK(a, b, sel) \
    _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(a, b, sel)), _MM_SHUFFLE(3, 1, 2, 0)))
        __m256 best = _mm256_max_ps(DN_PICK(a0, b0, _MM_SHUFFLE(2, 0, 2, 0)), lowest);
        best = _mm256_max_ps(DN_PICK(a0, b0, _MM_SHUFFLE(3, 1, 3, 1)), best);
        best = _mm256_max_ps(DN_PICK(a1, b1, _MM_SHUFFLE(2, 0, 2, 0)), best);
        best = _mm256_max_ps(DN_PICK(a1, b1, _MM_SHUFFLE(3, 1, 3, 1)), best);
#undef DN_PICK
        _mm256_storeu_ps(d + j, best);
    }
    max2x2_row(r0, r1, d, j, out_w);
}
#endif

typedef void (*row_fn)(const float *, const float *, float *, int);

static void max2x2_row_plain(const float *r0, const float *r1, float *d, int out_w) { max2x2_row(r0, r1, d, 0, out_w); }

/* the instruction set of the GEMM kernel in use (dn_cpu_kernel: forcing AVX2
 * to measure it forces it here too), else the best the CPU has */
static row_fn pick_row(void)
{
#if defined(__x86_64__) && defined(__GNUC__)
    const char *kernel = dn_cpu_kernel();
#ifndef DN_NO_AVX512
    if (!strcmp(kernel, "avx512")) return max2x2_row_avx512;
#endif
    if (!strcmp(kernel, "avx2")) return max2x2_row_avx2;
    __builtin_cpu_init();
#ifndef DN_NO_AVX512
    if (__builtin_cpu_supports("avx512f")) return max2x2_row_avx512;
#endif
    if (__builtin_cpu_supports("avx2")) return max2x2_row_avx2;
#endif
    return max2x2_row_plain;
}

void dn_maxpool2x2(const float *in, int planes, int h, int w, int out_h, int out_w, float *out)
{
    const row_fn row = pick_row();
    for (int p = 0; p < planes; ++p) {
        const float *src = in + (size_t)p * h * w;
        float *dst = out + (size_t)p * out_h * out_w;
        for (int i = 0; i < out_h; ++i) {
            const float *r0 = src + (size_t)(2 * i) * w;
            row(r0, r0 + w, dst + (size_t)i * out_w, out_w);
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

/* winograd.c - 3x3 stride-1 convolutions in inference by Winograd's minimal
 * filtering F(4x4, 3x3) (Lavin and Gray, "Fast Algorithms for Convolutional
 * Neural Networks", 2015), on the packed GEMM kernel (gemm_packed.c).
 *
 * The output is cut into 4x4 tiles; tile t reads the 6x6 input patch d
 * starting at (4*ty - pad, 4*tx - pad) of each channel. With the filter g
 * (3x3) of output channel m and input channel c:
 *     U = G g G^T,  V = B^T d B  (6x6 each),
 *     Y = A^T [ sum over c of U (.) V ] A   (4x4: the tile's outputs),
 * so for each of the 36 positions p of the 6x6 transform domain the sum over
 * c is a GEMM: M_p[m][t] = sum_c U_p[m][c] V_p[c][t]. That takes 36
 * multiply-adds per 16 outputs per channel instead of 144.
 *
 *   B^T = [4  0 -5  0  1  0]   G = [ 1/4     0     0]   A^T = [1 1  1 1  1 0]
 *         [0 -4 -4  1  1  0]       [-1/6  -1/6  -1/6]         [0 1 -1 2 -2 0]
 *         [0  4 -4 -1  1  0]       [-1/6   1/6  -1/6]         [0 1  1 4  4 0]
 *         [0 -2 -1  2  1  0]       [1/24  1/12   1/6]         [0 1 -1 8 -8 1]
 *         [0  2 -1 -2  1  0]       [1/24 -1/12   1/6]
 *         [0  4  0 -5  0  1]       [ 0     0      1 ]
 *
 * Passes of a forward call: (1) U for the filters whose weights changed
 * since the last pass (U is kept between passes, as the kernel's packed A
 * panels; tasks over filters) and a copy of the input inside a frame of
 * zeros covering every tile (tasks over channels); (2) tasks over (a panel
 * of 32 tiles, up to 256 filters): for blocks of WG_C channels, V of the
 * block's channels for the 32 tiles goes straight into the kernel's B panels
 * (lanes = tiles), then 36 kernel calls per 8 filters add into M_p; finally
 * A^T M A per filter, with the epilogue act(scale * y + bias), written into
 * the output (tiles past the edge clipped). When few tiles leave the filters
 * cut into several chunks (one task per chunk and tile panel), V is made once
 * per tile panel and channel block beforehand, in a pass of its own, instead
 * of once per task, and a task takes two tile panels, so that each read of U
 * serves both. Work is cut by the shape alone, so results do not depend on
 * the thread count. The arithmetic differs from direct convolution by
 * rounding (transform entries up to 8 and 1/24: about 1e-6 relative in
 * float32). */
#include "ops.h"

#include <stdint.h>
#include <string.h>

#define WG_TILES DN_NR /* tiles per task: one B panel */
#define WG_M 256       /* filters per task (each task transforms its tiles' input once for them) */
#define WG_C 128       /* channels per K block (DN_KC): 64 measured 1-2 % slower as a whole (AVX2), 6 % (AVX-512) */

typedef struct {
    int C, M, oh, ow, th, tw, T, hp, wp, pad, tpanels, mchunk, mchunks;
    int panels; /* tile panels of the batch: image b's panel tp is batch panel b * tpanels + tp */
    int pgroup; /* consecutive batch panels per task (they share each read of U) */
    int shared_v; /* V made beforehand for every panel (several tasks, or several panels, read it) */
} wino_geom;

static wino_geom geom_of(const dn_conv_desc *d)
{
    wino_geom g;
    g.C = d->c;
    g.M = d->filters;
    g.oh = d->out_h;
    g.ow = d->out_w;
    g.th = (g.oh + 3) / 4;
    g.tw = (g.ow + 3) / 4;
    g.T = g.th * g.tw;
    g.pad = d->pad;
    g.hp = 4 * g.th + 2;
    g.wp = 4 * g.tw + 2;
    g.tpanels = (g.T + WG_TILES - 1) / WG_TILES;
    /* filters per task: up to WG_M (each task transforms its tiles' input once
     * for them), fewer when that leaves under 12 tasks to share */
    g.mchunk = g.M < WG_M ? (g.M + DN_MR - 1) / DN_MR * DN_MR : WG_M;
    while (g.mchunk > 32 && g.tpanels * ((g.M + g.mchunk - 1) / g.mchunk) < 12)
        g.mchunk = (g.mchunk / 2 + DN_MR - 1) / DN_MR * DN_MR;
    g.mchunks = (g.M + g.mchunk - 1) / g.mchunk;
    /* With several filter chunks, V is made beforehand and U is the larger
     * stream (4x the weights, from memory in a whole network's pass): tasks
     * take 2 panels, each read of U serving both. yolov4-tiny's 52x52 and
     * 26x26 layers measured 10-15 % faster (AVX2), yolov4 3 % as a whole;
     * with one chunk, each task makes its own V as it goes, which a shared V
     * pass only slows (104x104 layers: 20 % slower). */
    g.panels = d->batch * g.tpanels;
    g.pgroup = g.mchunks > 1 && 2 * g.mchunk <= WG_M && g.panels > 1 ? 2 : 1;
    g.shared_v = g.mchunks > 1;
    return g;
}

static int ntasks(const wino_geom *g) { return (g->panels + g->pgroup - 1) / g->pgroup * g->mchunks; }

int dn_winograd_applies(const dn_conv_desc *d)
{
    if (d->size != 3 || d->stride_x != 1 || d->stride_y != 1 || d->dilation != 1 || d->groups != 1) return 0;
    if (d->pad > 2 || d->c < 8) return 0;
    if (d->out_h != d->h + 2 * d->pad - 2 || d->out_w != d->w + 2 * d->pad - 2) return 0;
    /* Enough tiles that the GEMMs, not the transformed weights, dominate: U is
     * 4x the weights, read once per tile panel. How many depends on the
     * kernel (kernels.h): on yolov4-tiny, 104x104 and 52x52 outputs (676 and
     * 169 tiles) gain 1.2-1.6x over the direct kernel path, 26x26 (49 tiles)
     * gains a little with AVX-512 and more with AVX2, 13x13 (16) loses. */
    const wino_geom g = geom_of(d);
    const int min_tiles = dn_packed_winograd_min_tiles();
    return min_tiles > 0 && g.T >= min_tiles;
}

static size_t fb(size_t n) { return (n * sizeof(float) + 63) / 64 * 64; }

/* V of one image's tile panel for all channels, kept when several filter
 * chunks read it: block after block of WG_C channels, each [36][kc][DN_NR] */
static size_t shared_v_floats(const wino_geom *g) { return (size_t)36 * g->C * WG_TILES; }

void dn_winograd_workspace(const dn_conv_desc *d, size_t *shared, size_t *per_worker)
{
    const wino_geom g = geom_of(d);
    *shared = fb((size_t)d->batch * g.C * g.hp * g.wp) +
              (g.shared_v ? fb((size_t)g.panels * shared_v_floats(&g)) : 0);
    *per_worker = fb((size_t)36 * WG_C * WG_TILES) + fb((size_t)36 * WG_M * WG_TILES) + fb(16 * WG_TILES);
}

/* ---- transforms ---- */

/* U = G g G^T for one filter's n channels: channel i's 9 taps at w + 9i, its
 * 36 values to u[p*ustride + i*DN_MR] (the packed A panels of the kernel,
 * see wino_u_panel). Channels go 16 at a time through a small transpose so
 * the arithmetic runs across them in vector registers. */
#define WG_PAIRS 16
DN_VECTOR_CLONES
static void filter_transform16(const float (*g)[WG_PAIRS], float *u, size_t ustride, int n)
{
    float t[18][WG_PAIRS], o[36][WG_PAIRS];
    for (int j = 0; j < 3; ++j) /* t = G g, column j */
        for (int l = 0; l < WG_PAIRS; ++l) {
            const float g0 = g[j][l], g1 = g[3 + j][l], g2 = g[6 + j][l];
            t[0 + j][l] = g0 * (1.f / 4);
            t[3 + j][l] = (g0 + g1 + g2) * (-1.f / 6);
            t[6 + j][l] = (g0 - g1 + g2) * (-1.f / 6);
            t[9 + j][l] = g0 * (1.f / 24) + g1 * (1.f / 12) + g2 * (1.f / 6);
            t[12 + j][l] = g0 * (1.f / 24) - g1 * (1.f / 12) + g2 * (1.f / 6);
            t[15 + j][l] = g2;
        }
    for (int r = 0; r < 6; ++r) /* U = t G^T, row r */
        for (int l = 0; l < WG_PAIRS; ++l) {
            const float g0 = t[3 * r][l], g1 = t[3 * r + 1][l], g2 = t[3 * r + 2][l];
            o[6 * r + 0][l] = g0 * (1.f / 4);
            o[6 * r + 1][l] = (g0 + g1 + g2) * (-1.f / 6);
            o[6 * r + 2][l] = (g0 - g1 + g2) * (-1.f / 6);
            o[6 * r + 3][l] = g0 * (1.f / 24) + g1 * (1.f / 12) + g2 * (1.f / 6);
            o[6 * r + 4][l] = g0 * (1.f / 24) - g1 * (1.f / 12) + g2 * (1.f / 6);
            o[6 * r + 5][l] = g2;
        }
    for (int p = 0; p < 36; ++p)
        for (int l = 0; l < n; ++l) u[(size_t)p * ustride + (size_t)l * DN_MR] = o[p][l];
}

static void filter_transform(const float *w, int n, float *u, size_t ustride)
{
    float g[9][WG_PAIRS];
    for (int i0 = 0; i0 < n; i0 += WG_PAIRS) {
        const int m = n - i0 < WG_PAIRS ? n - i0 : WG_PAIRS;
        for (int l = 0; l < WG_PAIRS; ++l)
            for (int k = 0; k < 9; ++k) g[k][l] = l < m ? w[(size_t)(i0 + l) * 9 + k] : 0.f;
        filter_transform16((const float(*)[WG_PAIRS])g, u + (size_t)i0 * DN_MR, ustride, m);
    }
}

/* ---- the transformed filters, kept between passes ----
 * The cache block: a header, one fingerprint per filter (of the 9*C weights
 * its U rows were made from), then U ([36][M][C]). A forward pass
 * fingerprints each filter's weights and transforms again only the filters
 * whose fingerprint changed, so weights written by any means (training,
 * loading, a caller writing through dn_layer_param's pointer at any time)
 * are always the ones used. The fingerprint: 4 lanes, each a chain
 * h = (h ^ x) * P over its 64-bit words x (P odd, so each step is one-to-one
 * in h and in x), the lanes then chained the same way: a change of any one
 * word always changes it; several changed words collide with odds near
 * 2^-64. It reads the weights once, a small part of making U again (which
 * reads them, computes 36 values from each 9 and writes 4 times as much). */
typedef struct {
    int filled; /* U and the fingerprints describe the weights of the last pass */
    int pad_[15];
} wino_cache_head;

#define WG_FP_PRIME 0x9E3779B97F4A7C15ull /* odd */

/* U is kept as the kernel's packed A panels: for position p and the block of
 * DN_MR filters from m0, a panel [C][DN_MR] (rows past the last filter zero),
 * so each kernel call reads one contiguous run of it */
static size_t wino_u_floats(int M, int C) { return (size_t)36 * ((M + DN_MR - 1) / DN_MR) * DN_MR * C; }

static const float *wino_u_panel(const float *u, const wino_geom *g, int p, int m0, int c0)
{
    const size_t blocks = (size_t)(g->M + DN_MR - 1) / DN_MR;
    return u + (((size_t)p * blocks + m0 / DN_MR) * g->C + c0) * DN_MR;
}

size_t dn_winograd_cache_bytes(const dn_conv_desc *d)
{
    return sizeof(wino_cache_head) + fb((size_t)d->filters * 2) + fb(wino_u_floats(d->filters, d->c));
}

static uint64_t *cache_fingerprints(void *cache) { return (uint64_t *)((char *)cache + sizeof(wino_cache_head)); }

static float *cache_u(void *cache, int M)
{
    return (float *)((char *)cache_fingerprints(cache) + fb((size_t)M * 2));
}

static uint64_t fingerprint(const float *w, size_t n)
{
    uint64_t h[4] = {1, 2, 3, 4}, x;
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 4; ++k) {
            memcpy(&x, w + i + 2 * k, sizeof(x));
            h[k] = (h[k] ^ x) * WG_FP_PRIME;
        }
    for (; i < n; ++i) {
        uint32_t y;
        memcpy(&y, w + i, sizeof(y));
        h[0] = (h[0] ^ y) * WG_FP_PRIME;
    }
    uint64_t r = n;
    for (int k = 0; k < 4; ++k) r = (r ^ h[k]) * WG_FP_PRIME;
    return r ^ (r >> 29);
}

/* the 6x6 patches of lanes [l0, l0 + n): d[r*6 + s][lane] = src[base[lane] + r*wp + s] */
static void gather_lanes(const float *src, size_t wp, const int *base, float (*d)[WG_TILES], int l0, int n)
{
    for (int r = 0; r < 6; ++r)
        for (int s = 0; s < 6; ++s) {
            const float *p = src + (size_t)r * wp + s;
            for (int l = l0; l < l0 + n; ++l) d[6 * r + s][l] = p[base[l]];
        }
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(DN_NO_PACKED_GEMM)
#include <immintrin.h>
/* The same. Winograd runs only with a packed kernel, so on a CPU with AVX2 at
 * least: 8 lanes that are consecutive tiles of one tile row (their patches
 * 4 columns apart) come from 34 floats of each patch row, 4 vector loads and
 * a transpose of their 8 groups of 4 instead of 48 scalar loads; columns 4
 * and 5 are columns 0 and 1 of the next tile. Other lanes (a tile row's end,
 * the repeated tile of a panel's unused lanes) one by one. */
__attribute__((target("avx2"))) static void gather_patches(const float *src, size_t wp, const int *base,
                                                            float (*d)[WG_TILES])
{
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7), next = _mm256_setr_epi32(1, 2, 3, 4, 5, 6, 7, 7);
    for (int l = 0; l < WG_TILES; l += 8) {
        if (base[l + 7] != base[l] + 28) {
            gather_lanes(src, wp, base, d, l, 8);
            continue;
        }
        for (int r = 0; r < 6; ++r) {
            const float *q = src + (size_t)r * wp + base[l]; /* tile i's row r: q[4i .. 4i + 5] */
            const __m256 a0 = _mm256_loadu_ps(q), a1 = _mm256_loadu_ps(q + 8), a2 = _mm256_loadu_ps(q + 16),
                         a3 = _mm256_loadu_ps(q + 24);
            const __m256 t0 = _mm256_unpacklo_ps(a0, a1), t1 = _mm256_unpackhi_ps(a0, a1);
            const __m256 t2 = _mm256_unpacklo_ps(a2, a3), t3 = _mm256_unpackhi_ps(a2, a3);
            /* column s of tiles 0, 2, 4, 6 | 1, 3, 5, 7, then in tile order */
            const __m256 c0 = _mm256_permutevar8x32_ps(_mm256_shuffle_ps(t0, t2, 0x44), order);
            const __m256 c1 = _mm256_permutevar8x32_ps(_mm256_shuffle_ps(t0, t2, 0xEE), order);
            const __m256 c2 = _mm256_permutevar8x32_ps(_mm256_shuffle_ps(t1, t3, 0x44), order);
            const __m256 c3 = _mm256_permutevar8x32_ps(_mm256_shuffle_ps(t1, t3, 0xEE), order);
            const __m256 c4 = _mm256_blend_ps(_mm256_permutevar8x32_ps(c0, next), _mm256_set1_ps(q[32]), 0x80);
            const __m256 c5 = _mm256_blend_ps(_mm256_permutevar8x32_ps(c1, next), _mm256_set1_ps(q[33]), 0x80);
            _mm256_storeu_ps(&d[6 * r][l], c0);
            _mm256_storeu_ps(&d[6 * r + 1][l], c1);
            _mm256_storeu_ps(&d[6 * r + 2][l], c2);
            _mm256_storeu_ps(&d[6 * r + 3][l], c3);
            _mm256_storeu_ps(&d[6 * r + 4][l], c4);
            _mm256_storeu_ps(&d[6 * r + 5][l], c5);
        }
    }
}
#else
static void gather_patches(const float *src, size_t wp, const int *base, float (*d)[WG_TILES])
{
    gather_lanes(src, wp, base, d, 0, WG_TILES);
}
#endif

/* V = B^T d B for WG_TILES tiles side by side (lane = tile): d[(r*6 + c)][lane],
 * written as row `kk` of the 36 B panels (panel p at vp + p*kc*DN_NR) */
DN_VECTOR_CLONES
static void input_transform(const float (*d)[WG_TILES], float *vp, int kc, int kk)
{
    float t[36][WG_TILES];
    for (int c = 0; c < 6; ++c) { /* t = B^T d, column c */
        const float *d0 = d[c], *d1 = d[6 + c], *d2 = d[12 + c], *d3 = d[18 + c], *d4 = d[24 + c], *d5 = d[30 + c];
        for (int l = 0; l < WG_TILES; ++l) {
            t[c][l] = 4.f * d0[l] - 5.f * d2[l] + d4[l];
            t[6 + c][l] = -4.f * d1[l] - 4.f * d2[l] + d3[l] + d4[l];
            t[12 + c][l] = 4.f * d1[l] - 4.f * d2[l] - d3[l] + d4[l];
            t[18 + c][l] = -2.f * d1[l] - d2[l] + 2.f * d3[l] + d4[l];
            t[24 + c][l] = 2.f * d1[l] - d2[l] - 2.f * d3[l] + d4[l];
            t[30 + c][l] = 4.f * d1[l] - 5.f * d3[l] + d5[l];
        }
    }
    for (int r = 0; r < 6; ++r) { /* V = t B, row r */
        const float *t0 = t[6 * r], *t1 = t[6 * r + 1], *t2 = t[6 * r + 2], *t3 = t[6 * r + 3], *t4 = t[6 * r + 4],
                    *t5 = t[6 * r + 5];
        float *v0 = vp + ((size_t)(6 * r + 0) * kc + kk) * DN_NR, *v1 = vp + ((size_t)(6 * r + 1) * kc + kk) * DN_NR;
        float *v2 = vp + ((size_t)(6 * r + 2) * kc + kk) * DN_NR, *v3 = vp + ((size_t)(6 * r + 3) * kc + kk) * DN_NR;
        float *v4 = vp + ((size_t)(6 * r + 4) * kc + kk) * DN_NR, *v5 = vp + ((size_t)(6 * r + 5) * kc + kk) * DN_NR;
        for (int l = 0; l < WG_TILES; ++l) {
            v0[l] = 4.f * t0[l] - 5.f * t2[l] + t4[l];
            v1[l] = -4.f * t1[l] - 4.f * t2[l] + t3[l] + t4[l];
            v2[l] = 4.f * t1[l] - 4.f * t2[l] - t3[l] + t4[l];
            v3[l] = -2.f * t1[l] - t2[l] + 2.f * t3[l] + t4[l];
            v4[l] = 2.f * t1[l] - t2[l] - 2.f * t3[l] + t4[l];
            v5[l] = 4.f * t1[l] - 5.f * t3[l] + t5[l];
        }
    }
}

/* Y = A^T M A for WG_TILES tiles (lane = tile): m[p] is position p's row
 * (stride WG_TILES within m), y[16][WG_TILES]; then y = act(a*y + b) */
DN_VECTOR_CLONES
static void output_transform(const float *m, size_t pstride, float (*y)[WG_TILES])
{
    float t[24][WG_TILES];
    for (int c = 0; c < 6; ++c) { /* t = A^T M, column c */
        const float *m0 = m + (size_t)c * pstride, *m1 = m + (size_t)(6 + c) * pstride, *m2 = m + (size_t)(12 + c) * pstride;
        const float *m3 = m + (size_t)(18 + c) * pstride, *m4 = m + (size_t)(24 + c) * pstride,
                    *m5 = m + (size_t)(30 + c) * pstride;
        for (int l = 0; l < WG_TILES; ++l) {
            const float a = m1[l] + m2[l], b = m1[l] - m2[l], e = m3[l] + m4[l], f = m3[l] - m4[l];
            t[c][l] = m0[l] + a + e;
            t[6 + c][l] = b + 2.f * f;
            t[12 + c][l] = a + 4.f * e;
            t[18 + c][l] = b + 8.f * f + m5[l];
        }
    }
    for (int r = 0; r < 4; ++r) { /* Y = t A, row r */
        const float *t0 = t[6 * r], *t1 = t[6 * r + 1], *t2 = t[6 * r + 2], *t3 = t[6 * r + 3], *t4 = t[6 * r + 4],
                    *t5 = t[6 * r + 5];
        for (int l = 0; l < WG_TILES; ++l) {
            const float a = t1[l] + t2[l], b = t1[l] - t2[l], e = t3[l] + t4[l], f = t3[l] - t4[l];
            y[4 * r][l] = t0[l] + a + e;
            y[4 * r + 1][l] = b + 2.f * f;
            y[4 * r + 2][l] = a + 4.f * e;
            y[4 * r + 3][l] = b + 8.f * f + t5[l];
        }
    }
}

/* ---- passes ---- */

typedef struct {
    const dn_net *net;
    const dn_layer *l;
    const dn_conv_desc *d;
    wino_geom g;
    const float *input;
    float *output, *u, *padded;
    uint64_t *fingerprints; /* per filter, of the weights U was made from (valid when filled) */
    int filled;
    float *v; /* shared V (several filter chunks) or NULL (each task makes its own) */
    const float *scale, *bias;
    dn_activation act;
} wino_job;

/* filter `task`'s U rows, made again when its weights changed */
static void weights_task(void *ctx, int task, int worker)
{
    (void)worker;
    const wino_job *j = ctx;
    const wino_geom *g = &j->g;
    const float *w = j->d->weights + (size_t)task * g->C * 9;
    const uint64_t fp = fingerprint(w, (size_t)g->C * 9);
    if (j->filled && j->fingerprints[task] == fp) return;
    /* filter m is lane m % DN_MR of its block's panels */
    float *u = (float *)wino_u_panel(j->u, g, 0, task / DN_MR * DN_MR, 0) + task % DN_MR;
    filter_transform(w, g->C, u, wino_u_panel(j->u, g, 1, 0, 0) - j->u);
    j->fingerprints[task] = fp;
}

static void pad_task(void *ctx, int task, int worker)
{
    (void)worker;
    const wino_job *j = ctx;
    const dn_conv_desc *d = j->d;
    const wino_geom *g = &j->g;
    const int b = task / g->C, c = task % g->C;
    const float *src = j->input + ((size_t)b * d->c + c) * d->h * d->w;
    float *dst = j->padded + ((size_t)b * g->C + c) * g->hp * g->wp;
    memset(dst, 0, (size_t)g->hp * g->wp * sizeof(float));
    /* padded (y, x) holds input (y - pad, x - pad): the patch of tile (ty, tx)
     * starts at (4ty, 4tx) here, which is input (4ty - pad, 4tx - pad) */
    for (int y = 0; y < d->h; ++y) {
        const int py = y + g->pad;
        if (py >= g->hp) break;
        const int n = d->w + g->pad <= g->wp ? d->w : g->wp - g->pad;
        memcpy(dst + (size_t)py * g->wp + g->pad, src + (size_t)y * d->w, (size_t)n * sizeof(float));
    }
}

/* where each of the panel's tiles starts in the padded plane (lanes past
 * the last tile repeat the first) */
static void tile_bases(const wino_geom *g, int t0, int nt, int *base)
{
    for (int l = 0; l < WG_TILES; ++l) {
        const int t = t0 + (l < nt ? l : 0);
        base[l] = 4 * (t / g->tw) * g->wp + 4 * (t % g->tw);
    }
}

/* V of channels [c0, c0 + kc) of one image's tile panel into vp ([36][kc][DN_NR]) */
static void transform_block(const wino_job *j, int b, int t0, int nt, int c0, int kc, float *vp)
{
    const wino_geom *g = &j->g;
    int base[WG_TILES];
    tile_bases(g, t0, nt, base);
    const float *pimg = j->padded + (size_t)b * g->C * g->hp * g->wp;
    float d[36][WG_TILES];
    for (int kk = 0; kk < kc; ++kk) {
        gather_patches(pimg + (size_t)(c0 + kk) * g->hp * g->wp, (size_t)g->wp, base, d);
        input_transform((const float(*)[WG_TILES])d, vp, kc, kk);
    }
}

/* the shared V of image b's tile panel tp, the block of channels from c0 */
static float *shared_v_block(const wino_job *j, int b, int tp, int c0)
{
    return j->v + ((size_t)b * j->g.tpanels + tp) * shared_v_floats(&j->g) + (size_t)36 * c0 * WG_TILES;
}

/* shared V: one task per (image, tile panel, block of WG_C channels) */
static void v_task(void *ctx, int task, int worker)
{
    (void)worker;
    const wino_job *j = ctx;
    const wino_geom *g = &j->g;
    const int cblocks = (g->C + WG_C - 1) / WG_C;
    const int bt = task / cblocks, c0 = task % cblocks * WG_C;
    const int tp = bt % g->tpanels, t0 = tp * WG_TILES, nt = g->T - t0 < WG_TILES ? g->T - t0 : WG_TILES;
    const int kc = g->C - c0 < WG_C ? g->C - c0 : WG_C;
    transform_block(j, bt / g->tpanels, t0, nt, c0, kc, shared_v_block(j, bt / g->tpanels, tp, c0));
}

/* the kernel calls of one task: filters [m0, m0 + mn) for the batch panels
 * [q0, q0 + nq), each U panel read once for all of them */
static void tile_task(void *ctx, int task, int worker)
{
    const wino_job *j = ctx;
    const wino_geom *g = &j->g;
    const int q0 = task / g->mchunks * g->pgroup, mc = task % g->mchunks;
    const int nq = g->panels - q0 < g->pgroup ? g->panels - q0 : g->pgroup;
    const int m0 = mc * g->mchunk, mn = g->M - m0 < g->mchunk ? g->M - m0 : g->mchunk;
    float *own = dn_scratch(j->net, j->l, worker);
    /* M_p of panel qi: macc + qi * 36 * pstride, position p's rows from p * pstride */
    const size_t pstride = (size_t)g->mchunk * WG_TILES;
    float *macc = own + fb((size_t)36 * WG_C * WG_TILES) / sizeof(float);
    float(*y)[WG_TILES] = (float(*)[WG_TILES])(macc + fb((size_t)36 * WG_M * WG_TILES) / sizeof(float));
    int b[WG_M / DN_MR], t0[WG_M / DN_MR], nt[WG_M / DN_MR];
    for (int qi = 0; qi < nq; ++qi) {
        b[qi] = (q0 + qi) / g->tpanels;
        t0[qi] = (q0 + qi) % g->tpanels * WG_TILES;
        nt[qi] = g->T - t0[qi] < WG_TILES ? g->T - t0[qi] : WG_TILES;
    }
    for (int c0 = 0; c0 < g->C; c0 += WG_C) {
        const int kc = g->C - c0 < WG_C ? g->C - c0 : WG_C;
        const float *vp[WG_M / DN_MR];
        for (int qi = 0; qi < nq; ++qi)
            vp[qi] = g->shared_v ? shared_v_block(j, b[qi], (q0 + qi) % g->tpanels, c0) : own;
        if (!g->shared_v) transform_block(j, b[0], t0[0], nt[0], c0, kc, own);
        for (int p = 0; p < 36; ++p)
            for (int i0 = 0; i0 < mn; i0 += DN_MR) {
                const int mr = mn - i0 < DN_MR ? mn - i0 : DN_MR;
                const float *ap = wino_u_panel(j->u, g, p, m0 + i0, c0);
                for (int qi = 0; qi < nq; ++qi)
                    dn_kernel(kc, ap, vp[qi] + (size_t)p * kc * DN_NR,
                              macc + (size_t)qi * 36 * pstride + p * pstride + (size_t)i0 * WG_TILES, WG_TILES, mr,
                              nt[qi], c0 > 0, NULL, 0);
            }
    }
    float yt[WG_TILES * 16]; /* [WG_TILES][16]: each tile's 4 x 4 outputs together */
    for (int qi = 0; qi < nq; ++qi) {
        float *out = j->output + (size_t)b[qi] * g->M * g->oh * g->ow;
        for (int i = 0; i < mn; ++i) {
            const int m = m0 + i;
            output_transform(macc + (size_t)qi * 36 * pstride + (size_t)i * WG_TILES, pstride, y);
            const float a = j->scale ? j->scale[m] : 1.f, bb = j->bias ? j->bias[m] : 0.f;
            for (int e = 0; e < 16; ++e) dn_affine_activate(y[e], (size_t)nt[qi], a, bb, j->act);
            for (int h = 0; h * 16 < nt[qi]; ++h)
                dn_transpose16(&y[0][16 * h], WG_TILES, yt + (size_t)16 * 16 * h, 16);
            float *o = out + (size_t)m * g->oh * g->ow;
            for (int l = 0; l < nt[qi]; ++l) {
                const int t = t0[qi] + l, oy = 4 * (t / g->tw), ox = 4 * (t % g->tw);
                const int rh = g->oh - oy < 4 ? g->oh - oy : 4, rw = g->ow - ox < 4 ? g->ow - ox : 4;
                const float *src = yt + (size_t)l * 16;
                if (rw == 4)
                    for (int r = 0; r < rh; ++r)
                        memcpy(o + (size_t)(oy + r) * g->ow + ox, src + 4 * r, 4 * sizeof(float));
                else
                    for (int r = 0; r < rh; ++r)
                        for (int s = 0; s < rw; ++s) o[(size_t)(oy + r) * g->ow + ox + s] = src[4 * r + s];
            }
        }
    }
}

void dn_winograd_forward(const dn_net *net, const dn_layer *l, const dn_conv_desc *d, void *cache,
                         const float *input, float *output, const float *scale, const float *bias, dn_activation act)
{
    wino_job j;
    memset(&j, 0, sizeof(j));
    j.net = net;
    j.l = l;
    j.d = d;
    j.g = geom_of(d);
    j.input = input;
    j.output = output;
    wino_cache_head *head = cache;
    j.u = cache_u(cache, j.g.M);
    j.fingerprints = cache_fingerprints(cache);
    j.filled = head->filled;
    j.padded = dn_scratch(net, l, -1);
    if (j.g.shared_v) j.v = j.padded + fb((size_t)d->batch * j.g.C * j.g.hp * j.g.wp) / sizeof(float);
    j.scale = scale;
    j.bias = bias;
    j.act = act;
    dn_parallel(net, j.g.M, weights_task, &j);
    head->filled = 1;
    dn_parallel(net, d->batch * j.g.C, pad_task, &j);
    if (j.v) dn_parallel(net, d->batch * j.g.tpanels * ((j.g.C + WG_C - 1) / WG_C), v_task, &j);
    dn_parallel(net, ntasks(&j.g), tile_task, &j);
}

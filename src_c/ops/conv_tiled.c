/* conv_tiled.c - a convolution's forward GEMMs cut into tiles for the
 * worker threads, with an optional per-filter epilogue on each tile while
 * it is still in cache.
 *
 * For image b and group g the convolution is C[M x N] = W_g[M x K] * cols[K x N]
 * (convolutional.c explains the shapes). Without the packed kernel (CPUs
 * without AVX-512 or AVX2 + FMA, or DN_SPEED_KERNEL off) each tile is one OpenBLAS call; the
 * plan, chosen from the shape alone:
 *
 *   DIRECT   1x1 kernel, stride 1, no padding: the input is the columns;
 *            C is cut into tiles (dn_gemm_plan).
 *   PRIVATE  small weights (M*K fits easily in a core's cache) and many output
 *            pixels: C is cut into column tiles of `nt` pixels; each task
 *            unrolls just its pixels' columns (K x nt, sized to stay in cache)
 *            into its worker's scratch, runs the GEMM for all M filters and
 *            the epilogue. No full im2col matrix is ever written.
 *   SHARED   otherwise: the whole im2col matrix is built once per image and
 *            group (tasks over channels), then C is cut into tiles.
 *
 * With the packed kernel (gemm_packed.c, DN_SPEED_KERNEL, AVX-512 or AVX2 + FMA CPUs) the
 * im2col matrix is never written as such: its rows are generated straight
 * into the kernel's B panels, one K block at a time, and the weights are read
 * in place (each weight read once per column tile, never copied):
 *
 *   KPRIVATE 16 or more B panels (512+ output pixels): tasks over column
 *            tiles of whole panels; each packs its own B block (K block x
 *            tile, about 256 KiB at most) into its worker's scratch and runs
 *            all M filters on it. Short output rows (< 64) are packed by
 *            gathering from a zero-framed copy of each input channel.
 *   KSHARED  fewer pixels (13 x 13 and so on), usually many filters: the B
 *            panels of the whole image are packed once (tasks over channels,
 *            gathering from zero-framed planes), then tasks over (filter
 *            chunk, column tile) read them.
 *
 * Epilogue (when scale/bias are given): y = act(scale[f] * x + bias[f]) on
 * each tile's rows, i.e. folded inference batch norm, bias and activation in
 * one pass. Every output element is computed the same way (one serial GEMM
 * call over the full K, or the kernel's fixed K blocks) whatever the thread
 * count, so results do not depend on it. */
#include "ops.h"

#include <string.h>

enum { PLAN_DIRECT, PLAN_PRIVATE, PLAN_SHARED };

/* column-tile scratch budget per worker, and the weights size below which a
 * column tile runs all filters at once */
#define PRIVATE_COLS_BYTES (384u * 1024u)
#define PRIVATE_MAX_WEIGHTS_BYTES (256u * 1024u)

typedef struct {
    int plan, M, N, K, mt, nt, m_tiles, n_tiles;
} tile_plan;

static tile_plan make_plan(const dn_conv_desc *d)
{
    tile_plan p;
    memset(&p, 0, sizeof(p));
    p.M = d->filters / d->groups;
    p.N = d->out_h * d->out_w;
    p.K = d->c / d->groups * d->size * d->size;
    const int direct = d->size == 1 && d->stride_x == 1 && d->stride_y == 1 && d->pad == 0;
    if (direct) {
        p.plan = PLAN_DIRECT;
        dn_gemm_plan(p.M, p.N, p.K, &p.mt, &p.nt);
    } else if ((size_t)p.M * p.K * sizeof(float) <= PRIVATE_MAX_WEIGHTS_BYTES && p.N >= 1024) {
        p.plan = PLAN_PRIVATE;
        int nt = (int)(PRIVATE_COLS_BYTES / sizeof(float) / (size_t)p.K) / 32 * 32;
        if (nt < 64) nt = 64;
        if (nt > 4096) nt = 4096;
        /* at least 8 tiles per image to share */
        while (nt > 64 && (p.N + nt - 1) / nt < 8) nt = (nt / 2 + 31) / 32 * 32;
        p.mt = p.M;
        p.nt = nt;
    } else {
        p.plan = PLAN_SHARED;
        dn_gemm_plan(p.M, p.N, p.K, &p.mt, &p.nt);
    }
    p.m_tiles = (p.M + p.mt - 1) / p.mt;
    p.n_tiles = (p.N + p.nt - 1) / p.nt;
    return p;
}

/* ---- plans for the packed kernel ---- */
enum { KPLAN_PRIVATE, KPLAN_SHARED };

typedef struct {
    int plan, direct, M, N, K, mc, nc, m_chunks, n_tiles, cols; /* cols: N rounded up to whole panels */
} kernel_plan;

static int round_panels(int n) { return (n + DN_NR - 1) / DN_NR * DN_NR; }

/* a KPRIVATE task's B block: an eighth of the L2 cache, 64-256 KiB */
static size_t private_b_bytes(void)
{
    size_t b = dn_cpu_l2_bytes() / 8;
    if (b < 65536) b = 65536;
    if (b > 262144) b = 262144;
    return b;
}

/* threads: the workers that will share the tasks (1 sizes the workspace: the
 * widest tiles). Task counts follow it only where the shape alone leaves
 * fewer tasks than workers; cutting never changes a value (see above). */
static kernel_plan make_kernel_plan(const dn_conv_desc *d, int threads)
{
    kernel_plan p;
    memset(&p, 0, sizeof(p));
    p.M = d->filters / d->groups;
    p.N = d->out_h * d->out_w;
    p.K = d->c / d->groups * d->size * d->size;
    p.direct = d->size == 1 && d->stride_x == 1 && d->stride_y == 1 && d->pad == 0;
    p.cols = round_panels(p.N);
    const int panels = (p.N + DN_NR - 1) / DN_NR;
    if (panels >= 16) {
        /* KPRIVATE: column tiles of whole panels, balanced. A tile's B block
         * (kc x tile) stays within an eighth of the core's L2 cache (256 KiB
         * of a 2 MiB L2; yolov4-tiny and yolov7-tiny ran as fast with 128 KiB
         * there, 2-10 % slower with 64 KiB); the weights are read once per
         * tile, so mid-size layers (26 x 26) take only about 4 tiles: that costs
         * less than writing and re-reading a shared B nine times the input's size.
         * Tile widths never change results (each value sums its K blocks in order). */
        p.plan = KPLAN_PRIVATE;
        const int kc = p.K < DN_KC ? p.K : DN_KC;
        int per = (int)(private_b_bytes() / sizeof(float)) / kc / DN_NR; /* panels per tile within the budget */
        if (per > 64) per = 64;
        if (per < 4) per = 4;
        int tiles = (panels + per - 1) / per;
        int want = panels >= 64 ? 16 : 4; /* tasks per image to share, */
        if (want < threads) want = threads; /* or one per worker on many cores */
        if (tiles < want) tiles = want < panels / 2 ? want : panels / 2;
        p.n_tiles = tiles;
        p.nc = (panels + tiles - 1) / tiles * DN_NR; /* the widest tile */
        p.mc = p.M;
    } else {
        /* KSHARED: few positions, many filters: the B panels packed once, tiles
         * over filters. Few large filter chunks (up to 128 filters, at least 2
         * tasks, or one per worker): each task's call overhead and cold start
         * (its first weights come from memory) is paid fewer times; 8 chunks of
         * 32 measured 4-8 % slower on the 13 x 13 layers with 2 threads, but
         * with 16 workers 2-4 chunks of 128 would leave most of them idle. */
        p.plan = KPLAN_SHARED;
        p.nc = p.N <= 256 ? p.N : 256;
        p.mc = p.M <= 128 ? (p.M + DN_MR - 1) / DN_MR * DN_MR : 128;
        const int want = threads > 2 ? threads : 2;
        while (p.mc > 16 && ((p.M + p.mc - 1) / p.mc) * ((p.N + p.nc - 1) / p.nc) < want)
            p.mc = (p.mc / 2 + DN_MR - 1) / DN_MR * DN_MR; /* whole A panels */
        p.n_tiles = (p.N + p.nc - 1) / p.nc;
    }
    p.m_chunks = (p.M + p.mc - 1) / p.mc;
    return p;
}

/* The padded plane of a KSHARED pass: the input channel inside a frame of
 * zeros wide enough for every tap, so each im2col row is a gather at fixed
 * offsets (idx[q] + tap offset) with no bounds checks: the fast way for
 * small planes, whose rows are many short runs. */
typedef struct {
    int hp, wp;   /* padded plane size */
    size_t plane; /* floats of the padded plane */
} padded_geom;

static padded_geom padded_of(const dn_conv_desc *d)
{
    padded_geom g;
    const int need_h = (d->out_h - 1) * d->stride_y + (d->size - 1) * d->dilation + 1;
    const int need_w = (d->out_w - 1) * d->stride_x + (d->size - 1) * d->dilation + 1;
    g.hp = need_h > d->h + d->pad ? need_h : d->h + d->pad;
    g.wp = need_w > d->w + d->pad ? need_w : d->w + d->pad;
    g.plane = (size_t)g.hp * g.wp;
    return g;
}

/* input rows [y0, y1) of a channel into the padded plane's interior (its
 * frame stays zero) */
static void fill_padded(const dn_conv_desc *d, const padded_geom *pg, const float *src, float *pad, int y0, int y1)
{
    for (int y = y0; y < y1; ++y)
        memcpy(pad + (size_t)(y + d->pad) * pg->wp + d->pad, src + (size_t)y * d->w, (size_t)d->w * sizeof(float));
}

static size_t floats_bytes(size_t n) { return (n * sizeof(float) + 63) / 64 * 64; }

/* KPRIVATE packs im2col rows by gathering from a padded plane when the output
 * rows are short (many runs per row), by copying runs otherwise */
static int use_gather(const dn_conv_desc *d, const kernel_plan *p) { return !p->direct && d->out_w < 64; }

void dn_conv_tiled_workspace(const dn_conv_desc *d, size_t *shared, size_t *per_worker)
{
    const tile_plan p = make_plan(d);
    *shared = p.plan == PLAN_SHARED ? (size_t)p.K * p.N * sizeof(float) : 0;
    *per_worker = p.plan == PLAN_PRIVATE ? (size_t)p.K * p.nt * sizeof(float) : 0;
    /* the kernel plans' needs */
    const kernel_plan k = make_kernel_plan(d, 1);
    size_t ks = 0, kw;
    if (k.plan == KPLAN_PRIVATE) {
        const padded_geom pg = padded_of(d);
        kw = floats_bytes((size_t)DN_KC * round_panels(k.nc)) + floats_bytes((pg.plane + 15) / 16 * 16) +
             floats_bytes((size_t)k.nc);
    } else {
        const padded_geom pg = padded_of(d);
        ks = floats_bytes((size_t)k.K * k.cols);
        kw = floats_bytes((pg.plane + 15) / 16 * 16) + floats_bytes((size_t)k.N);
    }
    if (ks > *shared) *shared = ks;
    if (kw > *per_worker) *per_worker = kw;
}

typedef struct {
    const dn_net *net;
    const dn_layer *l;
    const dn_conv_desc *d;
    tile_plan p;
    const float *input;
    float *output;
    const float *scale, *bias;
    dn_activation act;
    int b, g;          /* the image and group of a SHARED pass */
    const float *cols; /* its im2col matrix */
    int chan_grain;
} conv_job;

static void epilogue(const conv_job *j, float *c, int m0, int m1, int n, int ldc)
{
    if (!j->scale) return;
    for (int m = m0; m < m1; ++m) dn_affine_activate(c + (size_t)(m - m0) * ldc, (size_t)n, j->scale[m], j->bias[m], j->act);
}

static const float *image_of(const conv_job *j, int b, int g)
{
    const dn_conv_desc *d = j->d;
    return j->input + ((size_t)b * d->c + (size_t)g * (d->c / d->groups)) * d->h * d->w;
}

static float *output_of(const conv_job *j, int b, int g)
{
    return j->output + ((size_t)b * j->d->groups + g) * (size_t)j->p.M * j->p.N;
}

/* DIRECT and PRIVATE: one task per (image, group, tile) */
static void tile_task(void *ctx, int task, int worker)
{
    const conv_job *j = ctx;
    const dn_conv_desc *d = j->d;
    const tile_plan *p = &j->p;
    const int per_image = d->groups * p->m_tiles * p->n_tiles;
    const int b = task / per_image, r = task % per_image;
    const int g = r / (p->m_tiles * p->n_tiles), t = r % (p->m_tiles * p->n_tiles);
    const int m0 = t / p->n_tiles * p->mt, n0 = t % p->n_tiles * p->nt;
    const int m = p->M - m0 < p->mt ? p->M - m0 : p->mt, n = p->N - n0 < p->nt ? p->N - n0 : p->nt;
    const float *im = image_of(j, b, g);
    const float *w = d->weights + ((size_t)g * p->M + m0) * p->K;
    float *c = output_of(j, b, g) + (size_t)m0 * p->N + n0;
    const float *cols;
    int ldb;
    if (p->plan == PLAN_DIRECT) {
        cols = im + n0;
        ldb = p->N;
    } else {
        float *scratch = dn_scratch(j->net, j->l, worker);
        dn_im2col_range(im, d->c / d->groups, d->h, d->w, d->size, d->size, d->pad, d->pad, d->stride_y, d->stride_x,
                        d->dilation, d->dilation, d->out_h, d->out_w, n0, n0 + n, scratch);
        cols = scratch;
        ldb = n;
    }
    dn_gemm_serial(j->net, 0, 0, m, n, p->K, 1.f, w, p->K, cols, ldb, 0.f, c, p->N);
    epilogue(j, c, (g * p->M) + m0, (g * p->M) + m0 + m, n, p->N);
}

/* SHARED, phase 1: im2col of a block of channels */
static void im2col_task(void *ctx, int task, int worker)
{
    (void)worker;
    const conv_job *j = ctx;
    const dn_conv_desc *d = j->d;
    const int cg = d->c / d->groups;
    const int c0 = task * j->chan_grain, c1 = c0 + j->chan_grain < cg ? c0 + j->chan_grain : cg;
    const size_t plane = (size_t)d->h * d->w, rows = (size_t)d->size * d->size;
    float *cols = (float *)j->cols + (size_t)c0 * rows * j->p.N;
    dn_im2col(image_of(j, j->b, j->g) + (size_t)c0 * plane, c1 - c0, d->h, d->w, d->size, d->size, d->pad, d->pad,
              d->stride_y, d->stride_x, d->dilation, d->dilation, d->out_h, d->out_w, cols);
}

/* SHARED, phase 2: one tile of C */
static void shared_tile_task(void *ctx, int task, int worker)
{
    (void)worker;
    const conv_job *j = ctx;
    const tile_plan *p = &j->p;
    const int m0 = task / p->n_tiles * p->mt, n0 = task % p->n_tiles * p->nt;
    const int m = p->M - m0 < p->mt ? p->M - m0 : p->mt, n = p->N - n0 < p->nt ? p->N - n0 : p->nt;
    const float *w = j->d->weights + ((size_t)j->g * p->M + m0) * p->K;
    float *c = output_of(j, j->b, j->g) + (size_t)m0 * p->N + n0;
    dn_gemm_serial(j->net, 0, 0, m, n, p->K, 1.f, w, p->K, j->cols + n0, p->N, 0.f, c, p->N);
    epilogue(j, c, j->g * p->M + m0, j->g * p->M + m0 + m, n, p->N);
}

/* ---- the packed-kernel path ---- */

typedef struct {
    const dn_net *net;
    const dn_layer *l;
    const dn_conv_desc *d;
    kernel_plan p;
    const float *input;
    float *output;
    dn_epilogue epi;
    int has_epi;
    int b, g;         /* the image and group of a KSHARED pass */
    float *packed;    /* KSHARED: the B panels of that image and group */
    int rows_per_task;
} kconv_job;

/* Row k of image im's im2col matrix at columns [n0, n0 + n), packed as the
 * kk-th row of a K block of kc rows into bp. */
static void pack_conv_row(const kconv_job *j, const float *im, int k, int n0, int n, int kc, int kk, float *bp)
{
    const dn_conv_desc *d = j->d;
    const size_t plane = (size_t)d->h * d->w;
    if (j->p.direct) {
        dn_pack_b_row(im + (size_t)k * plane + n0, n, kc, kk, bp);
        return;
    }
    const int ss = d->size * d->size;
    const int c = k / ss, ky = k % ss / d->size, kx = k % d->size;
    dn_im2col_row_panels(im + (size_t)c * plane, d->h, d->w, ky, kx, d->pad, d->pad, d->stride_y, d->stride_x,
                         d->dilation, d->dilation, d->out_w, n0, n0 + n, kc, kk, bp);
}

static const float *kimage_of(const kconv_job *j, int b, int g)
{
    const dn_conv_desc *d = j->d;
    return j->input + ((size_t)b * d->c + (size_t)g * (d->c / d->groups)) * d->h * d->w;
}

/* Share t of `shares` of the lines of A that rows [m0, m0 + m), K block
 * k1 read (row-major weights, K values a row), prefetched into all caches. */
static void prefetch_next_a(const float *w, int K, int m0, int m, int k1, int t, int shares)
{
    const int kc = K - k1 < DN_KC ? K - k1 : DN_KC;
    const int per_row = (kc + 15) / 16, lines = m * per_row; /* 16 floats a line */
    for (int i = t * lines / shares; i < (t + 1) * lines / shares; ++i)
        __builtin_prefetch(w + (size_t)(m0 + i / per_row) * K + k1 + (i % per_row) * 16, 0, 3);
}

/* K up to this many values: the output is written in rows of micro-tiles
 * (see kernel_block) */
#define ROWS_OUTER_MAX_K (2 * DN_KC)

/* filters [m0, m0 + m) x columns [n0, n0 + n) of C for one K block whose B
 * panels are at bp (kc rows, panels of the tile's columns).
 *
 * A is read in place from the weights (each weight is read from memory once
 * per call and never copied). (Reading a 1x1 convolution's B in place too,
 * rows at the image's stride, measured slower than packing it.)
 *
 * Writing C costs as much as the arithmetic when K is small (1x1 layers: 64
 * to 512 multiply-adds per output value) because a layer's output was last
 * touched one forward pass ago and is out of cache. Two things make those
 * stores cheaper (yolov4-tiny at 416, alternating runs in one process on a
 * busy 2-CPU machine: layer 7, M 64 x N 10816 x K 64, 0.32-0.46 of its time
 * before; layers 15, 23, 36 0.70-0.84; the 3x3 layers unchanged):
 *  - the first K block, which is the first to touch C's lines, prefetches
 *    them for writing (prefetchw) a few micro-tiles before it stores them;
 *  - with K <= ROWS_OUTER_MAX_K the tile runs row group by row group (the
 *    same 8 filters across all its panels, B from L2), so C is written as 8
 *    sequential streams the hardware prefetchers follow, rather than column
 *    panel by column panel (all M rows side by side, B from L1), which stays
 *    the order for larger K, where B's reuse in L1 measured faster.
 * Neither changes any value computed. Both are for KPRIVATE tiles (output
 * rows of 512 pixels or more); the KSHARED layers (13 x 13, small outputs)
 * measured no better with them (cold forward passes slower).
 *
 * A KSHARED tile instead prefetches its weights: every micro-tile of a K
 * block prefetches an equal share of the lines of A the tile's next K block
 * reads (the tile's rows, kc columns on). The weights (512 KiB for a
 * 256 x 512 layer) were last read a forward pass ago, and rows 2 KiB apart
 * read 512 bytes at a time are short streams the hardware prefetchers barely
 * start on. In-process alternating runs (yolov4-tiny, 2 threads): layers 27
 * and 29 3-5 % faster, 26 and 28 (3x3, K 4608 and 2304) 4-7 %. */
static void kernel_block(const kconv_job *j, int g, const float *bp, int k0, int kc, int m0, int m, int n0, int n,
                         float *c)
{
    const kernel_plan *p = &j->p;
    const int last = k0 + kc >= p->K;
    const dn_epilogue *e = j->has_epi && last ? &j->epi : NULL;
    const float *w = j->d->weights + (size_t)g * p->M * p->K;
    const int panels = (n + DN_NR - 1) / DN_NR;
    const int private_tile = p->plan == KPLAN_PRIVATE;
    const int rows_outer = private_tile && p->K <= ROWS_OUTER_MAX_K;
    const int ahead = rows_outer ? 2 : 1; /* panels ahead to prefetch */
    const int outer = rows_outer ? (m + DN_MR - 1) / DN_MR : panels, inner = rows_outer ? panels : (m + DN_MR - 1) / DN_MR;
    for (int o = 0; o < outer; ++o)
        for (int in = 0; in < inner; ++in) {
            const int q = rows_outer ? in : o, i0 = (rows_outer ? o : in) * DN_MR;
            const int nr = n - q * DN_NR < DN_NR ? n - q * DN_NR : DN_NR;
            const int mr = m - i0 < DN_MR ? m - i0 : DN_MR;
            float *ct = c + (size_t)(m0 + i0) * p->N + n0 + q * DN_NR;
            if (private_tile && k0 == 0 && q + ahead < panels) dn_prefetch_tile_for_write(ct + ahead * DN_NR, (size_t)p->N, mr);
            if (!private_tile && k0 + kc < p->K) prefetch_next_a(w, p->K, m0, m, k0 + kc, o * inner + in, outer * inner);
            dn_kernel_rows(kc, w + (size_t)(m0 + i0) * p->K + k0, (size_t)p->K, bp + (size_t)q * kc * DN_NR, ct,
                           (size_t)p->N, mr, nr, k0 > 0, e, g * p->M + m0 + i0);
        }
}

DN_VECTOR_CLONES
static void gather_panels(const float *src, const int *idx, int n, int kc, int kk, float *bp)
{
    /* bp lane q of row kk = src[idx[q]], zero past n up to a whole panel */
    const int panels = (n + DN_NR - 1) / DN_NR;
    for (int p = 0; p < panels; ++p) {
        float *d = bp + ((size_t)p * kc + kk) * DN_NR;
        const int *ix = idx + p * DN_NR;
        const int m = n - p * DN_NR < DN_NR ? n - p * DN_NR : DN_NR;
        if (m == DN_NR)
            for (int i = 0; i < DN_NR; ++i) d[i] = src[ix[i]];
        else {
            for (int i = 0; i < m; ++i) d[i] = src[ix[i]];
            for (int i = m; i < DN_NR; ++i) d[i] = 0.f;
        }
    }
}

static void kprivate_task(void *ctx, int task, int worker)
{
    const kconv_job *j = ctx;
    const kernel_plan *p = &j->p;
    const int per_image = j->d->groups * p->n_tiles;
    const int b = task / per_image, g = task % per_image / p->n_tiles, t = task % p->n_tiles;
    /* tile t: panels [t*P/T, (t+1)*P/T) */
    const int panels = (p->N + DN_NR - 1) / DN_NR;
    const int n0 = t * panels / p->n_tiles * DN_NR, n1 = (t + 1) * panels / p->n_tiles * DN_NR;
    const int n = (n1 < p->N ? n1 : p->N) - n0;
    float *bp = dn_scratch(j->net, j->l, worker);
    float *pad = bp + floats_bytes((size_t)DN_KC * round_panels(p->nc)) / sizeof(float);
    const float *im = kimage_of(j, b, g);
    float *c = j->output + ((size_t)b * j->d->groups + g) * (size_t)p->M * p->N;
    const dn_conv_desc *d = j->d;
    const int gather = use_gather(d, p);
    padded_geom pg = padded_of(d);
    int *idx = (int *)(pad + (pg.plane + 15) / 16 * 16);
    int cur = -1; /* the channel in the padded plane */
    const int ss = d->size * d->size;
    /* the input rows this task's output columns read (each task pads only
     * those: padding whole channels in every task cost yolov4's stride-2
     * layers an eighth of their time) */
    int y0 = 0, y1 = 0;
    if (gather) {
        for (int q = 0; q < n; ++q) idx[q] = (n0 + q) / d->out_w * d->stride_y * pg.wp + (n0 + q) % d->out_w * d->stride_x;
        memset(pad, 0, pg.plane * sizeof(float));
        y0 = n0 / d->out_w * d->stride_y - d->pad;
        y1 = (n0 + n - 1) / d->out_w * d->stride_y + (d->size - 1) * d->dilation + 1 - d->pad;
        y0 = y0 < 0 ? 0 : y0;
        y1 = y1 > d->h ? d->h : y1;
    }
    for (int k0 = 0; k0 < p->K; k0 += DN_KC) {
        const int kc = p->K - k0 < DN_KC ? p->K - k0 : DN_KC;
        for (int kk = 0; kk < kc; ++kk) {
            const int k = k0 + kk;
            if (!gather) {
                pack_conv_row(j, im, k, n0, n, kc, kk, bp);
                continue;
            }
            const int ch = k / ss, t = k % ss;
            if (ch != cur) {
                fill_padded(d, &pg, im + (size_t)ch * d->h * d->w, pad, y0, y1);
                cur = ch;
            }
            gather_panels(pad + (size_t)(t / d->size) * d->dilation * pg.wp + (t % d->size) * d->dilation, idx, n, kc,
                          kk, bp);
        }
        kernel_block(j, g, bp, k0, kc, 0, p->M, n0, n, c);
    }
}

/* KSHARED phase 1: the B panels of whole channels of one image and group */
static void kshared_pack_task(void *ctx, int task, int worker)
{
    const kconv_job *j = ctx;
    const kernel_plan *p = &j->p;
    const dn_conv_desc *d = j->d;
    float *scratch = dn_scratch(j->net, j->l, worker);
    const float *im = kimage_of(j, j->b, j->g);
    const int cg = d->c / d->groups, ss = d->size * d->size;
    const int c0 = task * j->rows_per_task, c1 = c0 + j->rows_per_task < cg ? c0 + j->rows_per_task : cg;
    if (p->direct) {
        for (int k = c0; k < c1; ++k) {
            const int k0 = k / DN_KC * DN_KC, kc = p->K - k0 < DN_KC ? p->K - k0 : DN_KC;
            pack_conv_row(j, im, k, 0, p->N, kc, k - k0, j->packed + (size_t)k0 * p->cols);
        }
        return;
    }
    const padded_geom pg = padded_of(d);
    float *pad = scratch;
    int *idx = (int *)(scratch + (pg.plane + 15) / 16 * 16);
    for (int q = 0; q < p->N; ++q) idx[q] = q / d->out_w * d->stride_y * pg.wp + q % d->out_w * d->stride_x;
    memset(pad, 0, pg.plane * sizeof(float));
    for (int c = c0; c < c1; ++c) {
        fill_padded(d, &pg, im + (size_t)c * d->h * d->w, pad, 0, d->h);
        for (int t = 0; t < ss; ++t) {
            const int k = c * ss + t, ky = t / d->size, kx = t % d->size;
            const int k0 = k / DN_KC * DN_KC, kc = p->K - k0 < DN_KC ? p->K - k0 : DN_KC;
            gather_panels(pad + (size_t)ky * d->dilation * pg.wp + kx * d->dilation, idx, p->N, kc, k - k0,
                          j->packed + (size_t)k0 * p->cols);
        }
    }
}

/* KSHARED phase 2: one (filter chunk, column tile) of C over all K blocks */
static void kshared_tile_task(void *ctx, int task, int worker)
{
    const kconv_job *j = ctx;
    const kernel_plan *p = &j->p;
    const int mi = task / p->n_tiles, t = task % p->n_tiles;
    const int m0 = mi * p->mc, m = p->M - m0 < p->mc ? p->M - m0 : p->mc;
    const int n0 = t * p->nc, n = p->N - n0 < p->nc ? p->N - n0 : p->nc;
    (void)worker;
    float *c = j->output + ((size_t)j->b * j->d->groups + j->g) * (size_t)p->M * p->N;
    for (int k0 = 0; k0 < p->K; k0 += DN_KC) {
        const int kc = p->K - k0 < DN_KC ? p->K - k0 : DN_KC;
        /* the tile's first panel within this K block */
        const float *bp = j->packed + (size_t)k0 * p->cols + (size_t)(n0 / DN_NR) * kc * DN_NR;
        kernel_block(j, j->g, bp, k0, kc, m0, m, n0, n, c);
    }
}

static void conv_kernel_forward(const dn_net *net, const dn_layer *l, const dn_conv_desc *d, const float *input,
                                float *output, const float *scale, const float *bias, dn_activation act)
{
    kconv_job j;
    memset(&j, 0, sizeof(j));
    j.net = net;
    j.l = l;
    j.d = d;
    j.p = make_kernel_plan(d, dn_workers(net));
    j.input = input;
    j.output = output;
    j.has_epi = scale != NULL;
    j.epi.scale = scale;
    j.epi.bias = bias;
    j.epi.act = act;
    if (j.p.plan == KPLAN_PRIVATE) {
        dn_parallel(net, d->batch * d->groups * j.p.n_tiles, kprivate_task, &j);
        return;
    }
    j.packed = dn_scratch(net, l, -1);
    const int cg = d->c / d->groups;
    j.rows_per_task = cg >= 64 ? cg / 32 : 2; /* channels per packing task */
    for (int b = 0; b < d->batch; ++b)
        for (int g = 0; g < d->groups; ++g) {
            j.b = b;
            j.g = g;
            dn_parallel(net, dn_ntasks((size_t)cg, (size_t)j.rows_per_task), kshared_pack_task, &j);
            dn_parallel(net, j.p.m_chunks * j.p.n_tiles, kshared_tile_task, &j);
        }
}

void dn_conv_tiled_forward(const dn_net *net, const dn_layer *l, const dn_conv_desc *d, const float *input,
                           float *output, const float *scale, const float *bias, dn_activation act)
{
    dn_conv_tiled_forward_on(net, l, d, input, output, scale, bias, act,
                             (net->speed & DN_SPEED_KERNEL) && dn_packed_gemm_available());
}

void dn_conv_tiled_forward_on(const dn_net *net, const dn_layer *l, const dn_conv_desc *d, const float *input,
                              float *output, const float *scale, const float *bias, dn_activation act, int packed)
{
    if (packed && dn_packed_gemm_available()) {
        conv_kernel_forward(net, l, d, input, output, scale, bias, act);
        return;
    }
    conv_job j;
    memset(&j, 0, sizeof(j));
    j.net = net;
    j.l = l;
    j.d = d;
    j.p = make_plan(d);
    j.input = input;
    j.output = output;
    j.scale = scale;
    j.bias = bias;
    j.act = act;
    if (j.p.plan != PLAN_SHARED) {
        dn_parallel(net, d->batch * d->groups * j.p.m_tiles * j.p.n_tiles, tile_task, &j);
        return;
    }
    const int cg = d->c / d->groups;
    j.chan_grain = cg >= 32 ? cg / 32 : 1;
    j.cols = dn_scratch(net, l, -1);
    for (int b = 0; b < d->batch; ++b)
        for (int g = 0; g < d->groups; ++g) {
            j.b = b;
            j.g = g;
            dn_parallel(net, dn_ntasks((size_t)cg, (size_t)j.chan_grain), im2col_task, &j);
            dn_parallel(net, j.p.m_tiles * j.p.n_tiles, shared_tile_task, &j);
        }
}

/* ---- the direct convolution: taps read in place from a zero-framed copy ----
 * For stride 1 the im2col row of tap (c, ky, kx) is the input plane c shifted
 * by (ky, kx) * dilation: a strip of DN_NR consecutive output pixels of one
 * output row reads DN_NR consecutive values of one row of the framed copy.
 * So no B panels are packed: the kernel reads B's row k at the strip's
 * origin + boff[k]. The frame holds the padding and widens each row to whole
 * strips (their lanes past the row are computed and not stored). The K
 * blocks, their order and the kernel's arithmetic are the packed path's, so
 * the values are its bits. Tasks: filter chunks x bands of output rows, per
 * image (more bands when there are many workers: the values do not change). */

/* the framed plane: out_h + ext rows, whole strips + ext columns (the padded
 * plane of the other plans, wider) */
static padded_geom direct_of(const dn_conv_desc *d)
{
    padded_geom g;
    const int ext = (d->size - 1) * d->dilation;
    g.hp = d->out_h + ext;
    g.wp = round_panels(d->out_w) + ext;
    /* and room for every input pixel, as padded_of gives (a large padding with dilation can reach past) */
    if (g.hp < d->h + d->pad) g.hp = d->h + d->pad;
    if (g.wp < d->w + d->pad) g.wp = d->w + d->pad;
    g.plane = (size_t)g.hp * g.wp;
    return g;
}

int dn_conv_direct_applies(const dn_conv_desc *d)
{
    /* where it can pay: every 1x1 layer and every 3x3 one over 1152 values of K (128 channels) of
     * yolov3/4/7-tiny measured 1.35-2.7x the packed path's time (the weights are read again for
     * every strip); 3 and 16 channels 0.71 of it, 32-64 0.76-0.99 (Winograd faster there) */
    if (d->stride_x != 1 || d->stride_y != 1 || d->groups != 1 || d->size == 1 || !dn_kernel_rows_at_available())
        return 0;
    if (d->c * d->size * d->size > 1152) return 0;
    const padded_geom g = direct_of(d);
    return (size_t)d->c * g.plane < (size_t)1 << 31; /* offsets are ints */
}

void dn_conv_direct_workspace(const dn_conv_desc *d, size_t *shared, size_t *per_worker)
{
    const padded_geom g = direct_of(d);
    *shared = floats_bytes((size_t)d->c * g.plane) + floats_bytes((size_t)d->c * d->size * d->size);
    *per_worker = 0;
}

typedef struct {
    const dn_conv_desc *d;
    padded_geom g;
    const float *input; /* this image's */
    float *output;      /* this image's */
    float *framed;
    int *boff;
    int K, M, mc, m_chunks, band, bands;
    int has_epi;
    dn_epilogue epi;
} direct_job;

/* channel `task` of the image into its framed plane: zeros where no input pixel lands */
static void direct_frame_task(void *ctx, int task, int worker)
{
    const direct_job *j = ctx;
    (void)worker;
    float *plane = j->framed + (size_t)task * j->g.plane;
    memset(plane, 0, j->g.plane * sizeof(float));
    fill_padded(j->d, &j->g, j->input + (size_t)task * j->d->h * j->d->w, plane, 0, j->d->h);
}

static void direct_task(void *ctx, int task, int worker)
{
    const direct_job *j = ctx;
    const dn_conv_desc *d = j->d;
    (void)worker;
    const int mi = task % j->m_chunks, bi = task / j->m_chunks;
    const int m0 = mi * j->mc, m = j->M - m0 < j->mc ? j->M - m0 : j->mc;
    const int y0 = bi * j->band, y1 = y0 + j->band < d->out_h ? y0 + j->band : d->out_h;
    const size_t N = (size_t)d->out_h * d->out_w;
    for (int y = y0; y < y1; ++y)
        for (int x0 = 0; x0 < d->out_w; x0 += DN_NR) {
            const int nr = d->out_w - x0 < DN_NR ? d->out_w - x0 : DN_NR;
            const float *b = j->framed + (size_t)y * j->g.wp + x0;
            for (int i0 = 0; i0 < m; i0 += DN_MR) {
                const int mr = m - i0 < DN_MR ? m - i0 : DN_MR;
                float *c = j->output + (size_t)(m0 + i0) * N + (size_t)y * d->out_w + x0;
                const float *w = d->weights + (size_t)(m0 + i0) * j->K;
                for (int k0 = 0; k0 < j->K; k0 += DN_KC) {
                    const int kc = j->K - k0 < DN_KC ? j->K - k0 : DN_KC;
                    const dn_epilogue *e = j->has_epi && k0 + kc >= j->K ? &j->epi : NULL;
                    dn_kernel_rows_at(kc, w + k0, (size_t)j->K, b, j->boff + k0, c, N, mr, nr, k0 > 0, e, m0 + i0);
                }
            }
        }
}

void dn_conv_direct_forward(const dn_net *net, const dn_layer *l, const dn_conv_desc *d, const float *input,
                            float *output, const float *scale, const float *bias, dn_activation act)
{
    direct_job j;
    memset(&j, 0, sizeof(j));
    j.d = d;
    j.g = direct_of(d);
    j.K = d->c * d->size * d->size;
    j.M = d->filters;
    j.framed = dn_scratch(net, l, -1);
    j.boff = (int *)((char *)j.framed + floats_bytes((size_t)d->c * j.g.plane));
    for (int ci = 0, k = 0; ci < d->c; ++ci)
        for (int ky = 0; ky < d->size; ++ky)
            for (int kx = 0; kx < d->size; ++kx, ++k)
                j.boff[k] = (int)((size_t)ci * j.g.plane + (size_t)ky * d->dilation * j.g.wp + (size_t)kx * d->dilation);
    j.mc = j.M <= 128 ? (j.M + DN_MR - 1) / DN_MR * DN_MR : 128;
    j.m_chunks = (j.M + j.mc - 1) / j.mc;
    const int threads = dn_workers(net);
    int want = (threads > 8 ? threads : 8) * 2; /* tasks per image */
    int bands = (want + j.m_chunks - 1) / j.m_chunks;
    if (bands > d->out_h) bands = d->out_h;
    j.band = (d->out_h + bands - 1) / bands;
    j.bands = (d->out_h + j.band - 1) / j.band;
    j.has_epi = scale != NULL;
    j.epi.scale = scale;
    j.epi.bias = bias;
    j.epi.act = act;
    for (int b = 0; b < d->batch; ++b) {
        j.input = input + (size_t)b * d->c * d->h * d->w;
        j.output = output + (size_t)b * j.M * d->out_h * d->out_w;
        dn_parallel(net, d->c, direct_frame_task, &j);
        dn_parallel(net, j.m_chunks * j.bands, direct_task, &j);
    }
}

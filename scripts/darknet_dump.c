/* darknet_dump.c - runs darknet (AlexeyAB) itself on a cfg with seeded random
 * parameters and writes what it computed, for pydarknet's test fixtures
 * (scripts/make_darknet_fixtures.py compiles and drives it).
 *
 * Built against a darknet checkout: its include/darknet.h (the layer and
 * network structs are read through the header's own definitions, never
 * through offsets of ours) and its libdarknet.so (make LIBSO=1, GPU=0):
 *     cc -O2 darknet_dump.c -I DARKNET/include -L DARKNET -ldarknet -Wl,-rpath,DARKNET -lm -o darknet_dump
 *
 * Forward:   darknet_dump forward CFG SEED BATCH PREFIX
 *   builds the network for inference with BATCH images, fills every parameter
 *   tensor with seeded values (below), writes PREFIX.weights (darknet's
 *   save_weights), a seeded input in 0..1 to PREFIX.input, runs
 *   network_predict_ptr and writes every layer's output to PREFIX.outputs.
 * Training:  darknet_dump train CFG SEED KIND TRUTHS ROWS PREFIX
 *   builds the network for training (batch and subdivisions from the cfg),
 *   fills the parameters, writes PREFIX.weights and the seeded input for the
 *   whole batch (PREFIX.input), reads the truths (float32, per image: ROWS rows
 *   x y w h class for KIND=detection, or ROWS class scores for
 *   KIND=classification), runs darknet's train_network once (every
 *   mini-batch forward and backward, then one update) and writes the
 *   parameters after the update to PREFIX.trained.weights, the outputs of the
 *   last mini-batch's forward pass to PREFIX.outputs, and prints
 *   "DNDUMP loss <value>" (what train_network returns).
 *
 * Parameters (one splitmix64 stream from SEED, layers in order):
 *   convolutional / connected: weights U(-a, a) with a = sqrt(3 / fan_in) (unit
 *   variance of a weighted sum of unit inputs), biases U(-0.5, 0.5); with
 *   batch_normalize scales U(0.5, 1.5), rolling_mean U(-0.5, 0.5),
 *   rolling_variance U(0.5, 1.5); [batchnorm] the same four over its channels;
 *   weighted [shortcut] weights U(-0.5, 1.5) (some negative, for relu
 *   normalization). Anchors ([yolo]/[region] biases) come from the cfg.
 *
 * PREFIX.input:   float32, batch * net->inputs values.
 * PREFIX.outputs: "DNDUMP01", int32 layer count, int32 batch, then per layer
 *   char[16] type name, int32 out_c, out_h, out_w, outputs (per image), and
 *   outputs * batch float32 values (darknet's l.output, memory order).
 * Everything little-endian, as the machine writes it. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>

#include "darknet.h"

/* exported by libdarknet.so, declared in darknet's internal headers only */
network parse_network_cfg_custom(char *filename, int batch, int time_steps);
void save_weights(network net, char *filename);
float train_network(network net, data d);

/* ---------------------------------------------------------------- generator */

static uint64_t rng_state;

static uint64_t rng_next(void)
{
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static float uniform(float lo, float hi)
{
    double u = (double)(rng_next() >> 11) / 9007199254740992.0;   /* [0, 1) with 53 bits */
    return (float)(lo + (hi - lo) * u);
}

static void fill(float *x, size_t n, float lo, float hi)
{
    if (!x) return;
    for (size_t i = 0; i < n; ++i) x[i] = uniform(lo, hi);
}

static void fill_batchnorm(float *scales, float *mean, float *variance, size_t n)
{
    fill(scales, n, 0.5f, 1.5f);
    fill(mean, n, -0.5f, 0.5f);
    fill(variance, n, 0.5f, 1.5f);
}

static void fill_parameters(network *net)
{
    for (int i = 0; i < net->n; ++i) {
        layer *l = &net->layers[i];
        if (l->type == CONVOLUTIONAL && !l->share_layer) {
            int fan_in = l->size * l->size * l->c / l->groups;
            float a = sqrtf(3.f / (float)fan_in);
            fill(l->weights, (size_t)l->nweights, -a, a);
            fill(l->biases, (size_t)l->n, -0.5f, 0.5f);
            if (l->batch_normalize) fill_batchnorm(l->scales, l->rolling_mean, l->rolling_variance, (size_t)l->n);
        } else if (l->type == CONNECTED) {
            float a = sqrtf(3.f / (float)l->inputs);
            fill(l->weights, (size_t)l->inputs * l->outputs, -a, a);
            fill(l->biases, (size_t)l->outputs, -0.5f, 0.5f);
            if (l->batch_normalize) fill_batchnorm(l->scales, l->rolling_mean, l->rolling_variance, (size_t)l->outputs);
        } else if (l->type == BATCHNORM) {
            fill(l->biases, (size_t)l->c, -0.5f, 0.5f);
            fill_batchnorm(l->scales, l->rolling_mean, l->rolling_variance, (size_t)l->c);
        } else if (l->type == SHORTCUT && l->nweights > 0) {
            fill(l->weights, (size_t)l->nweights, -0.5f, 1.5f);
        }
    }
}

/* ---------------------------------------------------------------- files */

static const char *type_name(LAYER_TYPE t)
{
    switch (t) {
    case CONVOLUTIONAL: return "convolutional";
    case CONNECTED: return "connected";
    case MAXPOOL: return "maxpool";
    case LOCAL_AVGPOOL: return "local_avgpool";
    case SOFTMAX: return "softmax";
    case DROPOUT: return "dropout";
    case ROUTE: return "route";
    case COST: return "cost";
    case AVGPOOL: return "avgpool";
    case SHORTCUT: return "shortcut";
    case SCALE_CHANNELS: return "scale_channels";
    case SAM: return "sam";
    case ACTIVE: return "activation";
    case BATCHNORM: return "batchnorm";
    case REGION: return "region";
    case YOLO: return "yolo";
    case REORG: return "reorg3d";
    case REORG_OLD: return "reorg";
    case UPSAMPLE: return "upsample";
    case EMPTY: return "empty";
    default: return "other";
    }
}

static void die(const char *what, const char *path)
{
    fprintf(stderr, "darknet_dump: %s %s\n", what, path);
    exit(2);
}

static void write_floats(const char *path, const float *x, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(x, sizeof(float), n, f) != n || fclose(f)) die("cannot write", path);
}

static void write_outputs(const char *path, network *net)
{
    FILE *f = fopen(path, "wb");
    if (!f) die("cannot write", path);
    int32_t head[2] = {net->n, net->batch};
    fwrite("DNDUMP01", 1, 8, f);
    fwrite(head, sizeof(int32_t), 2, f);
    for (int i = 0; i < net->n; ++i) {
        layer *l = &net->layers[i];
        char name[16] = {0};
        strncpy(name, type_name(l->type), sizeof(name) - 1);
        int32_t shape[4] = {l->out_c, l->out_h, l->out_w, l->outputs};
        fwrite(name, 1, sizeof(name), f);
        fwrite(shape, sizeof(int32_t), 4, f);
        size_t n = (size_t)l->outputs * l->batch;
        if (fwrite(l->output, sizeof(float), n, f) != n) die("cannot write", path);
    }
    if (fclose(f)) die("cannot write", path);
}

static float *read_floats(const char *path, size_t n)
{
    float *x = calloc(n ? n : 1, sizeof(float));
    FILE *f = fopen(path, "rb");
    if (!f || !x || fread(x, sizeof(float), n, f) != n) die("cannot read (or too short)", path);
    fclose(f);
    return x;
}

static char *path_of(const char *prefix, const char *ext)
{
    char *p = malloc(strlen(prefix) + strlen(ext) + 1);
    strcpy(p, prefix);
    strcat(p, ext);
    return p;
}

static float *seeded_input(size_t n)
{
    float *x = malloc(n * sizeof(float));
    fill(x, n, 0.f, 1.f);
    return x;
}

/* ---------------------------------------------------------------- modes */

static int run_forward(char *cfg, int batch, const char *prefix)
{
    /* parse_network_cfg_custom, not load_network_custom: the latter folds
     * batch normalization into the weights (fuse_conv_batchnorm) */
    network *net = calloc(1, sizeof(network));
    *net = parse_network_cfg_custom(cfg, batch, 1);
    fill_parameters(net);
    save_weights(*net, path_of(prefix, ".weights"));
    size_t n = (size_t)net->batch * net->inputs;
    float *x = seeded_input(n);
    write_floats(path_of(prefix, ".input"), x, n);
    network_predict_ptr(net, x);
    write_outputs(path_of(prefix, ".outputs"), net);
    return 0;
}

static int truths_per_image(network *net, int detection)
{
    for (int i = net->n - 1; i >= 0; --i) {
        layer *l = &net->layers[i];
        if (detection && (l->type == YOLO || l->type == REGION)) return l->truths;
    }
    return detection ? -1 : net->outputs;
}

static int run_train(char *cfg, const char *kind, const char *truth_path, int rows, const char *prefix)
{
    int detection = strcmp(kind, "detection") == 0;
    if (!detection && strcmp(kind, "classification") != 0) die("unknown kind", kind);
    network *net = calloc(1, sizeof(network));
    *net = parse_network_cfg_custom(cfg, 0, 0);   /* for training, batch / subdivisions from the cfg */
    fill_parameters(net);
    save_weights(*net, path_of(prefix, ".weights"));

    int images = net->batch * net->subdivisions;
    int inputs = net->inputs;
    float *x = seeded_input((size_t)images * inputs);
    write_floats(path_of(prefix, ".input"), x, (size_t)images * inputs);

    int cols = truths_per_image(net, detection);
    if (cols < 0) die("no [yolo] or [region] layer in", cfg);
    int given = detection ? 5 : 1;   /* floats per row in the truth file */
    float *t = read_floats(truth_path, (size_t)images * rows * given);
    if (detection && rows * 6 > cols) die("more truth rows than [yolo]/[region] max= holds:", truth_path);
    if (!detection && rows != cols) die("classification truths must have one value per output:", truth_path);

    data d = {0};
    d.X.rows = d.y.rows = images;
    d.X.cols = inputs;
    d.y.cols = cols;
    d.X.vals = calloc(images, sizeof(float *));
    d.y.vals = calloc(images, sizeof(float *));
    for (int b = 0; b < images; ++b) {
        d.X.vals[b] = x + (size_t)b * inputs;
        d.y.vals[b] = calloc(cols, sizeof(float));
        for (int r = 0; r < rows; ++r) {
            if (detection) {
                /* darknet's truth row: x y w h class track_id (truth_size 6) */
                memcpy(d.y.vals[b] + r * 6, t + ((size_t)b * rows + r) * 5, 5 * sizeof(float));
            } else {
                d.y.vals[b][r] = t[(size_t)b * rows + r];
            }
        }
    }
    /* darknet updates only layers with l.train set and zeroes only their deltas
     * before each mini-batch (make_connected_layer, for one, leaves it 0) */
    printf("\nDNDUMP train_flags");
    for (int i = 0; i < net->n; ++i) printf(" %d", net->layers[i].train);
    printf("\n");
    float loss = train_network(*net, d);
    printf("\nDNDUMP loss %.9g\n", loss);
    printf("DNDUMP mini_batch %d subdivisions %d iteration %d\n", net->batch, net->subdivisions,
           (int)*net->cur_iteration);
    fflush(stdout);
    save_weights(*net, path_of(prefix, ".trained.weights"));
    write_outputs(path_of(prefix, ".outputs"), net);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 6 && strcmp(argv[1], "forward") == 0) {
        rng_state = strtoull(argv[3], NULL, 10);
        return run_forward(argv[2], atoi(argv[4]), argv[5]);
    }
    if (argc == 8 && strcmp(argv[1], "train") == 0) {
        rng_state = strtoull(argv[3], NULL, 10);
        return run_train(argv[2], argv[4], argv[5], atoi(argv[6]), argv[7]);
    }
    fprintf(stderr, "usage: darknet_dump forward CFG SEED BATCH PREFIX\n"
                    "       darknet_dump train CFG SEED detection|classification TRUTHS ROWS PREFIX\n");
    return 2;
}

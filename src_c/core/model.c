/* model.c - model files: a network's resolved layers, [net] options, class
 * names and weights in one file that a C program loads without Python.
 * `pydarknet export` writes them (pydarknet/modelfile.py); the loader here
 * replays the stored options through the same builder calls the Python side
 * makes for a parsed cfg (dn_net_add_layer, dn_net_set_*, dn_net_end_layer,
 * dn_net_finalize, and dn_net_set_train_* for the [net] options), so nothing
 * about cfg semantics is written twice.
 *
 * Format version 1. All numbers little-endian.
 *
 *   header, 32 bytes
 *      0  8 bytes  magic "PDNMODEL"
 *      8  u32      format version (1)
 *     12  u32      M, bytes of metadata
 *     16  u64      D, bytes of tensor data; the file is exactly 32 + M + D bytes
 *     24  u32      CRC-32 of the metadata (zlib's crc32)
 *     28  u32      0 (reserved)
 *   metadata, M bytes from offset 32
 *     u32 channels, u32 height, u32 width     the network input
 *     options                                 the [net] options
 *     u32 n, then n strings                   class names (n may be 0)
 *     u32 layer count, then for each layer:
 *       string type, options,
 *       u32 tensor count, then per tensor: string name, u64 float count
 *   tensor data, D bytes from offset 32 + M
 *     the float32 values of every tensor listed, layer after layer, in the
 *     order listed (the builder's parameter order, darknet's weights order)
 *
 *   string   u32 length, then that many bytes (no zero byte)
 *   options  u32 count, then per option: string key, u8 kind, value
 *            kind 0 integer: i32        1 number: f64        2 string: string
 *                 3 integer list: u32 n, n x i32    4 number list: u32 n, n x f64
 *
 * Numbers are stored as f64 so the file keeps the Python side's values
 * exactly; the builder receives them as float, as it does from Python.
 *
 * Loading checks before it allocates: the header against the file length,
 * the metadata checksum, then a dry walk over the whole metadata in which
 * every count and length is checked against the bytes left and the tensor
 * sizes must add up to D. Only then is the network built (each layer's
 * tensors checked against what the builder made), finalized, and the
 * tensor data read straight into the parameters. Errors name the file and
 * byte offset. */
#include "layer.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>

#define MODEL_MAGIC "PDNMODEL"
#define MODEL_VERSION 1u
#define MODEL_HEADER 32u

enum { OPT_INT = 0, OPT_NUMBER = 1, OPT_STRING = 2, OPT_INTS = 3, OPT_NUMBERS = 4 };

/* The fewest bytes an item can take, for counts checked against the bytes left:
 * an option is a key (length + at least 1 byte), a kind and a value of at
 * least 4 bytes; a layer a type (length + 1), an option count and a tensor
 * count; a tensor a name (length + 1) and a float count. */
#define MIN_OPTION 10u
#define MIN_LAYER 13u
#define MIN_TENSOR 13u

/* Where the bytes come from, and the name used in messages. */
typedef struct {
    const char *name;
    FILE *f;            /* a file, or */
    const uint8_t *mem; /* bytes in memory */
    uint64_t size;
} source;

/* A read position in the metadata; messages count offsets from the file start. */
typedef struct {
    const char *name;
    const uint8_t *p;
    size_t size, pos;
} cursor;

static uint32_t le32(const uint8_t *b)
{
    return (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
}

static uint64_t le64(const uint8_t *b) { return (uint64_t)le32(b) | (uint64_t)le32(b + 4) << 32; }

static double f64(const uint8_t *b)
{
    const uint64_t bits = le64(b);
    double d;
    memcpy(&d, &bits, sizeof d);
    return d;
}

static uint32_t crc32(const uint8_t *p, size_t n)
{
    uint32_t crc = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; ++i) {
        crc ^= p[i];
        for (int k = 0; k < 8; ++k) crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
    }
    return ~crc;
}

static dn_status format_error(const cursor *c, size_t at, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

static dn_status format_error(const cursor *c, size_t at, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return dn_fail(DN_ERR_FORMAT, "%s: byte offset %zu: %s", c->name, (size_t)MODEL_HEADER + at, msg);
}

/* The builder's message for a failure while replaying the file, prefixed with where. */
static dn_status builder_error(const cursor *c, size_t at, dn_status s)
{
    char msg[900];
    snprintf(msg, sizeof msg, "%s", dn_last_error());
    return dn_fail(s, "%s: byte offset %zu: %s", c->name, (size_t)MODEL_HEADER + at, msg);
}

static dn_status need(const cursor *c, size_t n, const char *what)
{
    if (c->size - c->pos < n)
        return format_error(c, c->pos, "the metadata ends inside %s (%zu bytes left, %zu needed)", what,
                            c->size - c->pos, n);
    return DN_OK;
}

static dn_status get_u8(cursor *c, const char *what, uint8_t *out)
{
    dn_status s = need(c, 1, what);
    if (s) return s;
    *out = c->p[c->pos++];
    return DN_OK;
}

static dn_status get_u32(cursor *c, const char *what, uint32_t *out)
{
    dn_status s = need(c, 4, what);
    if (s) return s;
    *out = le32(c->p + c->pos);
    c->pos += 4;
    return DN_OK;
}

static dn_status get_u64(cursor *c, const char *what, uint64_t *out)
{
    dn_status s = need(c, 8, what);
    if (s) return s;
    *out = le64(c->p + c->pos);
    c->pos += 8;
    return DN_OK;
}

/* A count of items taking at least `item` bytes each, checked against the bytes left. */
static dn_status get_count(cursor *c, const char *what, size_t item, int *out)
{
    const size_t at = c->pos;
    uint32_t n;
    dn_status s = get_u32(c, what, &n);
    if (s) return s;
    if (n > INT_MAX || (size_t)n > (c->size - c->pos) / item)
        return format_error(c, at, "%s %u does not fit in the %zu bytes of metadata left", what, n, c->size - c->pos);
    *out = (int)n;
    return DN_OK;
}

/* A string as a zero-terminated copy (freed by the caller), or only checked when out is NULL. */
static dn_status get_string(cursor *c, const char *what, char **out)
{
    const size_t at = c->pos;
    uint32_t n;
    dn_status s = get_u32(c, what, &n);
    if (!s) s = need(c, n, what);
    if (s) return s;
    const uint8_t *bytes = c->p + c->pos;
    if (memchr(bytes, 0, n)) return format_error(c, at, "%s holds a zero byte", what);
    c->pos += n;
    if (!out) return DN_OK;
    *out = malloc((size_t)n + 1);
    if (!*out) return dn_fail(DN_ERR_NOMEM, "%s: out of memory reading %s", c->name, what);
    memcpy(*out, bytes, n);
    (*out)[n] = 0;
    return DN_OK;
}

/* Hands one option to the builder: the layer being built, or (train) the [net] options. */
static dn_status set_option(dn_net *net, int train, const char *key, int kind, const int *ints, const float *floats,
                            const char *string, int count)
{
    if (kind == OPT_STRING) return train ? dn_net_set_train_string(net, key, string) : dn_net_set_string(net, key, string);
    if (kind == OPT_INT || kind == OPT_INTS)
        return train ? dn_net_set_train_ints(net, key, ints, count) : dn_net_set_ints(net, key, ints, count);
    return train ? dn_net_set_train_floats(net, key, floats, count) : dn_net_set_floats(net, key, floats, count);
}

/* Reads one option's value (its kind read already) and, with a network, sets it. */
static dn_status option_value(cursor *c, dn_net *net, int train, const char *key, uint8_t kind)
{
    const size_t at = c->pos;
    int count = 1;
    dn_status s = DN_OK;
    if (kind == OPT_STRING) {
        char *value = NULL;
        s = get_string(c, "a string option", net ? &value : NULL);
        if (!s && net && (s = set_option(net, train, key, kind, NULL, NULL, value, 1))) s = builder_error(c, at, s);
        free(value);
        return s;
    }
    if (kind != OPT_INT && kind != OPT_NUMBER && kind != OPT_INTS && kind != OPT_NUMBERS)
        return format_error(c, at - 1, "option '%s' has unknown kind %u", key, kind);
    const size_t width = (kind == OPT_INT || kind == OPT_INTS) ? 4 : 8;
    if ((kind == OPT_INTS || kind == OPT_NUMBERS) && (s = get_count(c, "a list length", width, &count))) return s;
    if ((s = need(c, width * (size_t)count, "an option value"))) return s;
    const uint8_t *b = c->p + c->pos;
    c->pos += width * (size_t)count;
    if (!net) return DN_OK;
    int *ints = NULL;
    float *floats = NULL;
    if (width == 4) {
        ints = malloc(sizeof(int) * (size_t)(count ? count : 1));
        for (int i = 0; ints && i < count; ++i) ints[i] = (int32_t)le32(b + 4 * (size_t)i);
    } else {
        floats = malloc(sizeof(float) * (size_t)(count ? count : 1));
        for (int i = 0; floats && i < count; ++i) floats[i] = (float)f64(b + 8 * (size_t)i);
    }
    if (!ints && !floats) return dn_fail(DN_ERR_NOMEM, "%s: out of memory reading option '%s'", c->name, key);
    s = set_option(net, train, key, kind, ints, floats, NULL, count);
    free(ints);
    free(floats);
    return s ? builder_error(c, at, s) : DN_OK;
}

/* An option list; with a network each option goes to the builder (train: the [net] options). */
static dn_status options(cursor *c, dn_net *net, int train)
{
    int n;
    dn_status s = get_count(c, "the option count", MIN_OPTION, &n);
    for (int i = 0; i < n && !s; ++i) {
        const size_t at = c->pos;
        char *key = NULL;
        uint8_t kind;
        s = get_string(c, "an option name", &key);
        if (!s && (!key[0] || strlen(key) >= DN_MAX_KEY))
            s = format_error(c, at, "option name '%.40s' is empty or longer than %d bytes", key, DN_MAX_KEY - 1);
        if (!s) s = get_u8(c, "an option kind", &kind);
        if (!s) s = option_value(c, net, train, key, kind);
        free(key);
    }
    return s;
}

/* One layer's list of tensors: names and float counts, checked against the
 * builder's parameters when a network is being built; adds the counts to *floats. */
static dn_status tensors(cursor *c, dn_net *net, int layer, uint64_t limit, uint64_t *floats)
{
    const size_t at = c->pos;
    int n;
    dn_status s = get_count(c, "the tensor count", MIN_TENSOR, &n);
    if (s) return s;
    if (net && n != dn_layer_num_params(net, layer))
        return format_error(c, at, "layer %d lists %d parameter tensors; the builder made %d for it", layer, n,
                            dn_layer_num_params(net, layer));
    for (int j = 0; j < n; ++j) {
        const size_t tat = c->pos;
        char *name = NULL;
        uint64_t count;
        s = get_string(c, "a tensor name", &name);
        if (!s) s = get_u64(c, "a tensor size", &count);
        if (!s && count > limit - *floats)
            s = format_error(c, tat, "tensor '%.40s' of layer %d has %llu floats, more than the tensor data holds",
                             name, layer, (unsigned long long)count);
        if (!s && net) {
            const char *pname;
            size_t pcount;
            s = dn_layer_param(net, layer, j, &pname, NULL, &pcount);
            if (!s && (strcmp(pname, name) != 0 || pcount != count))
                s = format_error(c, tat, "layer %d tensor %d is '%.40s' of %llu floats; the builder made '%s' of %zu",
                                 layer, j, name, (unsigned long long)count, pname, pcount);
        }
        free(name);
        if (s) return s;
        *floats += count;
    }
    return DN_OK;
}

static dn_status class_names(cursor *c, dn_net *net)
{
    int n;
    dn_status s = get_count(c, "the class name count", 4, &n);
    if (s || !net) {
        for (int i = 0; i < n && !s; ++i) s = get_string(c, "a class name", NULL);
        return s;
    }
    net->names = calloc((size_t)(n ? n : 1), sizeof(char *));
    if (!net->names) return dn_fail(DN_ERR_NOMEM, "%s: out of memory for %d class names", c->name, n);
    for (int i = 0; i < n && !s; ++i)
        if (!(s = get_string(c, "a class name", &net->names[i]))) net->nnames = i + 1;
    return s;
}

/* The input shape, then the network. Without `out`, checks the structure
 * only (every count against the bytes left, the tensor sizes adding up to
 * `data_floats`); with it, builds and finalizes the network. */
static dn_status walk(cursor *c, uint64_t data_floats, dn_net **out)
{
    uint32_t shape[3];
    dn_status s = DN_OK;
    for (int i = 0; i < 3 && !s; ++i) s = get_u32(c, "the input shape", &shape[i]);
    if (s) return s;
    for (int i = 0; i < 3; ++i)
        if (shape[i] < 1 || shape[i] > INT_MAX)
            return format_error(c, 4 * (size_t)i, "input size %u x %u x %u (channels x height x width) is not positive",
                                shape[0], shape[1], shape[2]);
    dn_net *net = NULL;
    if (out && (s = dn_net_create(1, (int)shape[0], (int)shape[1], (int)shape[2], &net))) return builder_error(c, 0, s);
    s = options(c, net, 1);
    if (!s) s = class_names(c, net);
    int nlayers = 0;
    const size_t count_at = c->pos;
    if (!s) s = get_count(c, "the layer count", MIN_LAYER, &nlayers);
    if (!s && nlayers < 1) s = format_error(c, count_at, "the model has no layers");
    uint64_t floats = 0;
    for (int i = 0; i < nlayers && !s; ++i) {
        const size_t at = c->pos;
        char *type = NULL;
        s = get_string(c, "a layer type", net ? &type : NULL);
        if (!s && net && (s = dn_net_add_layer(net, type))) s = builder_error(c, at, s);
        free(type);
        if (!s) s = options(c, net, 0);
        if (!s && net && (s = dn_net_end_layer(net))) s = builder_error(c, at, s);
        if (!s) s = tensors(c, net, i, data_floats, &floats);
    }
    if (!s && c->pos != c->size)
        s = format_error(c, c->pos, "%zu bytes of metadata left after the last layer", c->size - c->pos);
    if (!s && floats != data_floats)
        s = format_error(c, count_at, "the layers list %llu floats of tensors; the tensor data holds %llu",
                         (unsigned long long)floats, (unsigned long long)data_floats);
    if (!s && net && (s = dn_net_finalize(net))) s = builder_error(c, count_at, s);
    if (s) {
        dn_net_free(net);
        return s;
    }
    if (out) *out = net;
    return DN_OK;
}

static dn_status read_at(const source *src, uint64_t offset, void *dst, size_t n)
{
    if (src->mem) {
        memcpy(dst, src->mem + offset, n);
        return DN_OK;
    }
    if (fseeko(src->f, (off_t)offset, SEEK_SET) != 0 || fread(dst, 1, n, src->f) != n)
        return dn_fail(DN_ERR_IO, "%s: cannot read %zu bytes at byte offset %llu (the file changed while loading?)",
                       src->name, n, (unsigned long long)offset);
    return DN_OK;
}

static int little_endian_host(void)
{
    const uint16_t one = 1;
    return *(const uint8_t *)&one == 1;
}

/* Reads the tensor data into the parameters, in the order the metadata listed them. */
static dn_status read_tensors(const source *src, uint64_t offset, dn_net *net)
{
    for (int i = 0; i < dn_net_num_layers(net); ++i)
        for (int j = 0; j < dn_layer_num_params(net, i); ++j) {
            float *data;
            size_t count;
            dn_status s = dn_layer_param(net, i, j, NULL, &data, &count);
            if (!s) s = read_at(src, offset, data, count * sizeof(float));
            if (s) return s;
            if (!little_endian_host())
                for (size_t k = 0; k < count; ++k) {
                    const uint32_t v = le32((const uint8_t *)&data[k]);
                    memcpy(&data[k], &v, sizeof v);
                }
            offset += (uint64_t)count * sizeof(float);
        }
    return DN_OK;
}

static dn_status load(const source *src, dn_net **out)
{
    uint8_t head[MODEL_HEADER];
    const size_t have = src->size < MODEL_HEADER ? (size_t)src->size : MODEL_HEADER;
    dn_status s = read_at(src, 0, head, have);
    if (s) return s;
    if (memcmp(head, MODEL_MAGIC, have < 8 ? have : 8) != 0 || have == 0)
        return dn_fail(DN_ERR_FORMAT, "%s: byte offset 0: not a pydarknet model file (no \"%s\" magic; "
                       "`pydarknet export <cfg> <weights> -o <file>` writes one)", src->name, MODEL_MAGIC);
    if (have < MODEL_HEADER)
        return dn_fail(DN_ERR_FORMAT, "%s: the file is %zu bytes, too short for a model file header (%u bytes)",
                       src->name, have, MODEL_HEADER);
    const uint32_t version = le32(head + 8), meta_size = le32(head + 12), crc = le32(head + 24);
    const uint64_t data_size = le64(head + 16);
    if (version != MODEL_VERSION)
        return dn_fail(DN_ERR_FORMAT, "%s: byte offset 8: model format version %u; this library reads version %u",
                       src->name, version, MODEL_VERSION);
    const uint64_t body = src->size - MODEL_HEADER;
    if (meta_size > body || data_size != body - meta_size || data_size % sizeof(float))
        return dn_fail(DN_ERR_FORMAT, "%s: byte offset 12: the header announces %u bytes of metadata and %llu of "
                       "tensor data, but %llu bytes follow it (a truncated or damaged file)", src->name, meta_size,
                       (unsigned long long)data_size, (unsigned long long)body);
    uint8_t *meta = malloc(meta_size ? meta_size : 1);
    if (!meta) return dn_fail(DN_ERR_NOMEM, "%s: out of memory for %u bytes of metadata", src->name, meta_size);
    s = read_at(src, MODEL_HEADER, meta, meta_size);
    if (!s && crc32(meta, meta_size) != crc)
        s = dn_fail(DN_ERR_FORMAT, "%s: byte offset %u: the metadata does not match its checksum (a damaged file)",
                    src->name, MODEL_HEADER);
    cursor check = {src->name, meta, meta_size, 0}, build = check;
    dn_net *net = NULL;
    if (!s) s = walk(&check, data_size / sizeof(float), NULL);
    if (!s) s = walk(&build, data_size / sizeof(float), &net);
    free(meta);
    if (!s) s = read_tensors(src, (uint64_t)MODEL_HEADER + meta_size, net);
    if (s) {
        dn_net_free(net);
        return s;
    }
    *out = net;
    return DN_OK;
}

dn_status dn_net_load(const char *path, dn_net **out)
{
    if (!out) return dn_fail(DN_ERR_ARG, "output pointer is NULL");
    *out = NULL;
    if (!path) return dn_fail(DN_ERR_ARG, "model file path is NULL");
    FILE *f = fopen(path, "rb");
    if (!f) return dn_fail(DN_ERR_IO, "%s: cannot open model file: %s", path, strerror(errno));
    struct stat st;
    dn_status s = DN_OK;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode))
        s = dn_fail(DN_ERR_IO, "%s: cannot read model file: not a regular file", path);
    if (!s) {
        const source src = {path, f, NULL, (uint64_t)st.st_size};
        s = load(&src, out);
    }
    fclose(f);
    return s;
}

dn_status dn_net_load_memory(const void *data, size_t size, dn_net **out)
{
    if (!out) return dn_fail(DN_ERR_ARG, "output pointer is NULL");
    *out = NULL;
    if (!data) return dn_fail(DN_ERR_ARG, "model data is NULL");
    const source src = {"<memory>", NULL, data, size};
    return load(&src, out);
}

int dn_net_num_names(const dn_net *net) { return net ? net->nnames : 0; }

dn_status dn_net_name(const dn_net *net, int class_id, const char **name)
{
    if (!net) return dn_fail(DN_ERR_ARG, "network handle is NULL");
    if (!name) return dn_fail(DN_ERR_ARG, "output pointer is NULL");
    if (class_id < 0 || class_id >= net->nnames)
        return dn_fail(DN_ERR_ARG, "class %d has no name (the model has %d names)", class_id, net->nnames);
    *name = net->names[class_id];
    return DN_OK;
}

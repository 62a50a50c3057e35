/* detect.c - a complete C program embedding pydarknet: loads a model file
 * written by `pydarknet export`, reads an 8-bit binary PPM image (P6 colour,
 * or P5 grey), detects objects and prints one line per detection, most
 * confident first:
 *
 *     <class id> <confidence> <x> <y> <w> <h> <name>
 *
 * (box centre and size in image pixels; the name is the model's class name,
 * or "-" when the model stores none). Nothing else goes to standard output.
 *
 *     pydarknet export yolov4-tiny.cfg yolov4-tiny.weights -names coco.names -o yolov4-tiny.pdn
 *     cc examples/detect.c $(python -m pydarknet --cflags --libs) -o detect
 *     ./detect yolov4-tiny.pdn dog.ppm -thresh 0.25 -threads 4
 *
 * Exit status: 0 on success; 1 when the model or image cannot be used (the
 * reason on standard error); 2 for a command line that does not parse. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pydarknet.h"

typedef struct {
    unsigned char *pixels;
    size_t size;
    int width, height, channels;
} image;

/* The next number of a PPM header, skipping white space and # comments. */
static int ppm_number(FILE *f, int *out)
{
    int c = fgetc(f);
    for (;;) {
        while (c == ' ' || c == '\t' || c == '\n' || c == '\r') c = fgetc(f);
        if (c != '#') break;
        while (c != '\n' && c != EOF) c = fgetc(f);
    }
    long v = 0;
    if (c < '0' || c > '9') return 0;
    for (; c >= '0' && c <= '9'; c = fgetc(f)) {
        v = v * 10 + (c - '0');
        if (v > 1 << 20) return 0;
    }
    *out = (int)v;
    return c == ' ' || c == '\t' || c == '\n' || c == '\r'; /* one white-space byte ends the header */
}

/* Reads a binary PPM (P6) or PGM (P5) with 8-bit samples; 0 and a message on failure. */
static int read_ppm(const char *path, image *img, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "%s: cannot open image file", path);
        return 0;
    }
    char magic[2] = {0, 0};
    int maxval = 0, ok = fread(magic, 1, 2, f) == 2 && magic[0] == 'P' && (magic[1] == '6' || magic[1] == '5');
    ok = ok && ppm_number(f, &img->width) && ppm_number(f, &img->height) && ppm_number(f, &maxval);
    if (!ok || img->width < 1 || img->height < 1 || maxval != 255) {
        snprintf(err, errlen, "%s: not an 8-bit binary PPM (P6) or PGM (P5) image", path);
        fclose(f);
        return 0;
    }
    img->channels = magic[1] == '6' ? 3 : 1;
    img->size = (size_t)img->width * img->height * img->channels;
    img->pixels = malloc(img->size);
    ok = img->pixels && fread(img->pixels, 1, img->size, f) == img->size;
    fclose(f);
    if (!ok) {
        snprintf(err, errlen, "%s: the image data ends before %d x %d pixels", path, img->width, img->height);
        free(img->pixels);
        img->pixels = NULL;
    }
    return ok;
}

static int usage(const char *message)
{
    fprintf(stderr, "detect: %s\nusage: detect <model.pdn> <image.ppm> [-thresh 0.25] [-nms 0.45] [-threads 1]\n",
            message);
    return 2;
}

/* The value after a flag, a number from lo to hi. */
static int number_arg(int argc, char **argv, int *i, double lo, double hi, double *out)
{
    char *end;
    if (*i + 1 >= argc) return 0;
    *out = strtod(argv[++*i], &end);
    return *end == 0 && end != argv[*i] && *out >= lo && *out <= hi;
}

int main(int argc, char **argv)
{
    const char *model = NULL, *path = NULL;
    double thresh = .25, nms = .45, threads = 1;
    for (int i = 1; i < argc; ++i) {
        int ok = 1;
        if (!strcmp(argv[i], "-thresh")) ok = number_arg(argc, argv, &i, 0, 1, &thresh);
        else if (!strcmp(argv[i], "-nms")) ok = number_arg(argc, argv, &i, 0, 1, &nms);
        else if (!strcmp(argv[i], "-threads")) ok = number_arg(argc, argv, &i, 1, 1024, &threads);
        else if (argv[i][0] == '-') return usage("unknown flag");
        else if (!model) model = argv[i];
        else if (!path) path = argv[i];
        else return usage("too many arguments");
        if (!ok) return usage("a flag needs a number in range after it");
    }
    if (!model || !path) return usage("a model file and an image are needed");

    char err[512];
    image img = {NULL, 0, 0, 0, 0};
    if (!read_ppm(path, &img, err, sizeof err)) {
        fprintf(stderr, "detect: %s\n", err);
        return 1;
    }
    dn_net *net = NULL;
    const dn_detection *dets = NULL;
    int count = 0;
    dn_status s = dn_net_load(model, &net);
    if (!s) s = dn_net_set_threads(net, (int)threads);
    if (!s)
        s = dn_net_detect(net, img.pixels, img.size, img.width, img.height, img.channels, 0, 0, -1, (float)thresh,
                          (float)nms, &dets, &count);
    for (int i = 0; !s && i < count; ++i) {
        const char *name = "-";
        if (dets[i].class_id < dn_net_num_names(net)) dn_net_name(net, dets[i].class_id, &name);
        printf("%d %.6f %.3f %.3f %.3f %.3f %s\n", dets[i].class_id, dets[i].confidence, dets[i].x, dets[i].y,
               dets[i].w, dets[i].h, name);
    }
    if (s) fprintf(stderr, "detect: %s\n", dn_last_error());
    dn_net_free(net);
    free(img.pixels);
    return s ? 1 : 0;
}

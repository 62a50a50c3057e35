/* tuning.c - choices measured on the machine that runs them, once, and kept.
 *
 * Where the fastest way to compute something depends on the CPU (its cache
 * sizes, how wide its FMA units really are, how OpenBLAS's kernel for it
 * compares with the project's own), fixed rules tuned on one CPU lose on
 * another. A layer with such a choice (today: the inference convolution's
 * algorithm, layers/convolutional.c) measures its alternatives on the first
 * pass that needs them and keeps the fastest, under a key naming the shape
 * and everything else the timing depends on. The choices live in memory for
 * the process and in a text file for later ones, one line each:
 *
 *   <machine> TAB <key> TAB <choice> TAB <seconds of each alternative>
 *
 * <machine> names the CPU (brand, family/model, cache sizes, logical CPUs),
 * so one file can serve several machines (a shared home folder); other
 * machines' lines are left as they are. Lines are appended (one write each),
 * so processes sharing the file do not lose each other's lines; when a key
 * appears twice the last line wins. Deleting the file measures again.
 *
 * Where: PYDARKNET_TUNING (read when first needed) names the file, or is
 * "off" (no measuring: the fixed rules, as the tests use); unset, the file is
 * $XDG_CACHE_HOME/pydarknet/cpu-tuning.txt or ~/.cache/pydarknet/cpu-tuning.txt;
 * dn_set_tuning changes it at run time. A line that cannot be read is
 * reported once (file and line) and ignored; a file that cannot be written
 * is reported once and the choices stay in memory. */
#include "internal.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

#define LINE_MAX_CHARS 1024

typedef struct {
    char *key, *choice;
} entry;

static struct {
    pthread_mutex_t lock;
    int ready;       /* the settings have been read */
    int loaded;      /* and the file (at the first use by a network, whose log hears of bad lines) */
    int off;
    char *path;      /* NULL: memory only */
    int write_failed;
    entry *items;
    int count, capacity;
    char machine[256];
    unsigned generation; /* counts settle()s: a choice a layer remembers holds while it is unchanged */
} T = {.lock = PTHREAD_MUTEX_INITIALIZER};

/* The CPU's name as the file keys it: brand string, family/model/stepping,
 * L2 and L3 sizes and the logical CPUs (VMs often show a generic brand). */
static void describe_machine(char *out, size_t n)
{
    char brand[49] = "cpu";
    unsigned fam = 0, model = 0, step = 0;
#if defined(__x86_64__) || defined(__i386__)
    unsigned r[12], a, b, c, d;
    if (__get_cpuid(0x80000000u, &a, &b, &c, &d) && a >= 0x80000004u) {
        for (unsigned i = 0; i < 3; ++i) __get_cpuid(0x80000002u + i, &r[4 * i], &r[4 * i + 1], &r[4 * i + 2], &r[4 * i + 3]);
        memcpy(brand, r, 48);
        brand[48] = 0;
    }
    if (__get_cpuid(1, &a, &b, &c, &d)) {
        step = a & 15;
        model = (a >> 4) & 15;
        fam = (a >> 8) & 15;
        if (fam == 15) fam += (a >> 20) & 255;
        if (fam == 6 || fam >= 15) model |= ((a >> 16) & 15) << 4;
    }
#endif
    /* trim, and no tabs or line ends in a field */
    char *s = brand;
    while (*s == ' ') ++s;
    size_t len = strlen(s);
    while (len && s[len - 1] == ' ') s[--len] = 0;
    for (char *p = s; *p; ++p)
        if (*p == '\t' || *p == '\n' || *p == '\r') *p = ' ';
    long l2 = -1, l3 = -1;
#ifdef _SC_LEVEL2_CACHE_SIZE
    l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);
    l3 = sysconf(_SC_LEVEL3_CACHE_SIZE);
#endif
    const long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    snprintf(out, n, "%s (%u/%u/%u) L2 %ldK L3 %ldK %ld cpus", *s ? s : "cpu", fam, model, step,
             l2 > 0 ? l2 / 1024 : 0, l3 > 0 ? l3 / 1024 : 0, cpus);
}

static void clear_entries(void)
{
    for (int i = 0; i < T.count; ++i) {
        free(T.items[i].key);
        free(T.items[i].choice);
    }
    free(T.items);
    T.items = NULL;
    T.count = T.capacity = 0;
}

/* in memory; a key already there takes the new choice */
static int put(const char *key, const char *choice)
{
    for (int i = 0; i < T.count; ++i)
        if (!strcmp(T.items[i].key, key)) {
            char *c = strdup(choice);
            if (!c) return -1;
            free(T.items[i].choice);
            T.items[i].choice = c;
            return 0;
        }
    if (T.count == T.capacity) {
        const int cap = T.capacity ? 2 * T.capacity : 64;
        entry *e = realloc(T.items, (size_t)cap * sizeof(*e));
        if (!e) return -1;
        T.items = e;
        T.capacity = cap;
    }
    char *k = strdup(key), *c = strdup(choice);
    if (!k || !c) {
        free(k);
        free(c);
        return -1;
    }
    T.items[T.count].key = k;
    T.items[T.count].choice = c;
    ++T.count;
    return 0;
}

static char *default_path(void)
{
    const char *xdg = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
    char buf[4096];
    if (xdg && xdg[0] == '/')
        snprintf(buf, sizeof buf, "%s/pydarknet/cpu-tuning.txt", xdg);
    else if (home && home[0] == '/')
        snprintf(buf, sizeof buf, "%s/.cache/pydarknet/cpu-tuning.txt", home);
    else
        return NULL;
    return strdup(buf);
}

/* every line of this machine; a line that is not one is reported once */
static void load(const dn_net *net)
{
    if (!T.path) return;
    FILE *f = fopen(T.path, "r");
    if (!f) {
        if (errno != ENOENT) {
            /* nor written, then: one message */
            T.write_failed = 1;
            dn_log(net, DN_LOG_WARN, "tuning file %s: cannot read (%s); this process measures again and keeps its "
                   "choices in memory", T.path, strerror(errno));
        }
        return;
    }
    char line[LINE_MAX_CHARS + 2];
    int lineno = 0, bad = 0, first = 0;
    const char *why = NULL;
    const size_t mlen = strlen(T.machine);
    while (fgets(line, sizeof line, f)) {
        ++lineno;
        size_t len = strlen(line);
        if (len && line[len - 1] != '\n' && !feof(f)) {
            /* longer than any line this file holds: skip the rest of it */
            int ch;
            while ((ch = fgetc(f)) != EOF && ch != '\n') {}
            if (!bad++) first = lineno, why = "longer than any tuning line";
            continue;
        }
        while (len && (line[len - 1] == '\n' || line[len - 1] == '\r')) line[--len] = 0;
        if (!len || line[0] == '#') continue;
        char *t1 = strchr(line, '\t'), *t2 = t1 ? strchr(t1 + 1, '\t') : NULL;
        char *t3 = t2 ? strchr(t2 + 1, '\t') : NULL;
        if (!t1 || !t2 || t1 == line || t2 == t1 + 1 || (t3 ? t3 == t2 + 1 : !t2[1])) {
            if (!bad++) first = lineno, why = "not <machine> TAB <key> TAB <choice> [TAB <times>]";
            continue;
        }
        if ((size_t)(t1 - line) != mlen || memcmp(line, T.machine, mlen)) continue; /* another machine's */
        *t2 = 0;
        if (t3) *t3 = 0;
        put(t1 + 1, t2 + 1);
    }
    if (bad)
        dn_log(net, DN_LOG_WARN, "tuning file %s line %d: %s; ignored (%d such line%s)", T.path, first, why, bad,
               bad > 1 ? "s" : "");
    fclose(f);
}

static int mkdirs(const char *file)
{
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", file);
    char *slash = strrchr(dir, '/');
    if (!slash || slash == dir) return 0;
    *slash = 0;
    for (char *p = dir + 1; *p; ++p)
        if (*p == '/') {
            *p = 0;
            if (mkdir(dir, 0755) && errno != EEXIST) return -1;
            *p = '/';
        }
    return mkdir(dir, 0755) && errno != EEXIST ? -1 : 0;
}

static void settle(const char *where, int from_env)
{
    clear_entries();
    free(T.path);
    T.path = NULL;
    T.off = 0;
    T.write_failed = 0;
    if (!T.machine[0]) describe_machine(T.machine, sizeof T.machine);
    if (where && (!strcmp(where, "off") || (from_env && !strcmp(where, "0"))))
        T.off = 1;
    else if (where && *where)
        T.path = strdup(where);
    else
        T.path = default_path();
    T.ready = 1;
    T.loaded = 0;
    __atomic_add_fetch(&T.generation, 1, __ATOMIC_RELEASE);
}

unsigned dn_tuning_generation(void) { return __atomic_load_n(&T.generation, __ATOMIC_ACQUIRE); }

static void ready(const dn_net *net)
{
    if (!T.ready) settle(getenv("PYDARKNET_TUNING"), 1);
    if (net && !T.loaded) {
        T.loaded = 1;
        if (!T.off) load(net);
    }
}

int dn_tuning_on(const dn_net *net)
{
    pthread_mutex_lock(&T.lock);
    ready(net);
    const int on = !T.off;
    pthread_mutex_unlock(&T.lock);
    return on;
}

int dn_tuning_find(const dn_net *net, const char *key, char *choice, size_t n)
{
    int found = 0;
    pthread_mutex_lock(&T.lock);
    ready(net);
    for (int i = 0; !T.off && i < T.count; ++i)
        if (!strcmp(T.items[i].key, key)) {
            snprintf(choice, n, "%s", T.items[i].choice);
            found = 1;
            break;
        }
    pthread_mutex_unlock(&T.lock);
    return found;
}

void dn_tuning_keep(const dn_net *net, const char *key, const char *choice, const char *times)
{
    pthread_mutex_lock(&T.lock);
    ready(net);
    if (T.off || put(key, choice)) {
        pthread_mutex_unlock(&T.lock);
        return;
    }
    if (T.path && !T.write_failed) {
        char line[LINE_MAX_CHARS + 1];
        const int len = snprintf(line, sizeof line, "%s\t%s\t%s\t%s\n", T.machine, key, choice, times ? times : "");
        FILE *f = NULL;
        int err = 0;
        if (len >= (int)sizeof line)
            err = ENAMETOOLONG;
        else if (mkdirs(T.path) || !(f = fopen(T.path, "a")))
            err = errno;
        else {
            /* one write for the whole line (O_APPEND): processes sharing the file keep each other's lines */
            setvbuf(f, NULL, _IOFBF, sizeof line);
            if (fputs(line, f) == EOF) err = errno ? errno : EIO;
            if (fclose(f) && !err) err = errno ? errno : EIO;
        }
        if (err) {
            T.write_failed = 1;
            dn_log(net, DN_LOG_WARN, "tuning file %s: cannot write (%s); this process keeps its choices in memory",
                   T.path, strerror(err));
        }
    }
    pthread_mutex_unlock(&T.lock);
}

void dn_tuning_announce(dn_net *net, const char *what)
{
    if (!net || net->tuning_told) return;
    net->tuning_told = 1;
    pthread_mutex_lock(&T.lock);
    ready(net);
    char where[4200];
    if (T.path && !T.write_failed)
        snprintf(where, sizeof where, "kept in %s", T.path);
    else
        snprintf(where, sizeof where, "kept in memory");
    pthread_mutex_unlock(&T.lock);
    dn_log(net, DN_LOG_INFO, "measuring %s on this CPU, once for each shape (%s; PYDARKNET_TUNING=off: fixed rules)",
           what, where);
}

/* ---- public ---- */

dn_status dn_set_tuning(const char *where)
{
    pthread_mutex_lock(&T.lock);
    settle(where, 0);
    pthread_mutex_unlock(&T.lock);
    return DN_OK;
}

const char *dn_tuning_file(void)
{
    static char copy[4096];
    pthread_mutex_lock(&T.lock);
    ready(NULL);
    const char *r = NULL;
    if (!T.off) {
        snprintf(copy, sizeof copy, "%s", T.path ? T.path : "");
        r = copy;
    }
    pthread_mutex_unlock(&T.lock);
    return r;
}

const char *dn_tuning_machine(void)
{
    pthread_mutex_lock(&T.lock);
    if (!T.machine[0]) describe_machine(T.machine, sizeof T.machine);
    pthread_mutex_unlock(&T.lock);
    return T.machine;
}

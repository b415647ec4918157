/*
 * Reads the flat form of the simulated machine (see machine.h and machine_file.py):
 *
 *   genv-machine-flat 1
 *   json SIZE MTIME_NS                 the JSON file it was made from
 *   boot BOOT_ID|-                     or: error MESSAGE (%-encoded), then end
 *   devices N
 *   TOTAL UUID NAME                    N lines; texts %-encoded; index = position
 *   processes M
 *   DEVICE PID USED|- START|-          M lines
 *   end
 *
 * Everything in the file is checked as if an enemy wrote it: numbers, counts, lengths.
 */
#define _GNU_SOURCE

#include "machine.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define FLAT_MAGIC "genv-machine-flat 1"
#define FLAT_SUFFIX ".flat"
#define MAX_FLAT_BYTES (64LL * 1024 * 1024)
#define MAX_DEVICES 4096
#define MAX_PROCESSES (1ULL << 20)
#define PID_MAX 4194304ULL /* PID_MAX_LIMIT on 64-bit Linux */
#define NOT_AVAILABLE 0xFFFFFFFFFFFFFFFFULL
/* A flat file that does not match its JSON is most often one being replaced this very
 * moment (the writer renames the two files one after the other): look again a few times. */
#define STALE_RETRIES 50
#define STALE_PAUSE_NS 2000000L

#define HIDDEN __attribute__((visibility("hidden")))

static void say(char *reason, size_t cap, const char *format, ...)
    __attribute__((format(printf, 3, 4)));
static void say(char *reason, size_t cap, const char *format, ...)
{
    va_list args;
    if (!reason || !cap)
        return;
    va_start(args, format);
    vsnprintf(reason, cap, format, args);
    va_end(args);
}

HIDDEN char *sim_path(void)
{
    const char *value = getenv("GENV_FAKE_MACHINE");
    const char *start, *end;
    char *path;
    if (!value)
        return NULL;
    start = value;
    while (*start == ' ' || *start == '\t' || *start == '\n' || *start == '\r')
        start++;
    end = start + strlen(start);
    while (end > start && (end[-1] == ' ' || end[-1] == '\t' || end[-1] == '\n' || end[-1] == '\r'))
        end--;
    if (end == start)
        return NULL;
    path = malloc((size_t)(end - start) + 1);
    if (!path)
        return NULL;
    memcpy(path, start, (size_t)(end - start));
    path[end - start] = '\0';
    return path;
}

static char *flat_path_of(const char *path)
{
    size_t n = strlen(path);
    char *flat = malloc(n + sizeof FLAT_SUFFIX);
    if (flat) {
        memcpy(flat, path, n);
        memcpy(flat + n, FLAT_SUFFIX, sizeof FLAT_SUFFIX);
    }
    return flat;
}

static long long mtime_ns(const struct stat *st)
{
    return (long long)st->st_mtim.tv_sec * 1000000000LL + st->st_mtim.tv_nsec;
}

static void identity_of(const struct stat *st, struct sim_identity *id)
{
    id->valid = 1;
    id->dev = st->st_dev;
    id->ino = st->st_ino;
    id->size = st->st_size;
    id->mtime = st->st_mtim;
}

static int same_identity(const struct stat *st, const struct sim_identity *id)
{
    return id->valid && id->dev == st->st_dev && id->ino == st->st_ino &&
           id->size == st->st_size && id->mtime.tv_sec == st->st_mtim.tv_sec &&
           id->mtime.tv_nsec == st->st_mtim.tv_nsec;
}

/* The whole file, NUL-terminated. 0: read; -1: errno says why (EFBIG: too large). */
static int read_whole(const char *path, char **data, size_t *size, struct sim_identity *id)
{
    struct stat st;
    size_t got = 0, room;
    char *buffer;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0)
        return -1;
    if (fstat(fd, &st) != 0) {
        int saved = errno;
        close(fd);
        errno = saved;
        return -1;
    }
    if (!S_ISREG(st.st_mode) || st.st_size > MAX_FLAT_BYTES) {
        close(fd);
        errno = S_ISREG(st.st_mode) ? EFBIG : EINVAL;
        return -1;
    }
    room = (size_t)st.st_size + 1;
    buffer = malloc(room + 1);
    if (!buffer) {
        close(fd);
        errno = ENOMEM;
        return -1;
    }
    for (;;) {
        ssize_t n = read(fd, buffer + got, room - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            int saved = errno;
            free(buffer);
            close(fd);
            errno = saved;
            return -1;
        }
        if (n == 0)
            break;
        got += (size_t)n;
        if (got == room) { /* it grew while being read: not the file that was renamed in */
            free(buffer);
            close(fd);
            errno = EAGAIN;
            return -1;
        }
    }
    close(fd);
    buffer[got] = '\0';
    *data = buffer;
    *size = got;
    identity_of(&st, id);
    return 0;
}

/* ---- taking lines and fields apart ---- */

struct cursor {
    char *p;
    char *end;
};

/* The next line, its newline replaced by NUL; NULL at the end or for an unterminated line. */
static char *next_line(struct cursor *c)
{
    char *line = c->p, *newline;
    if (c->p >= c->end)
        return NULL;
    newline = memchr(c->p, '\n', (size_t)(c->end - c->p));
    if (!newline)
        return NULL;
    *newline = '\0';
    c->p = newline + 1;
    if (memchr(line, '\0', (size_t)(newline - line)))
        return NULL; /* a NUL inside a line */
    return line;
}

/* The next space-separated field of *s (NULL when none is left). */
static char *next_field(char **s)
{
    char *field = *s, *space;
    if (!field || !*field)
        return NULL;
    space = strchr(field, ' ');
    if (space) {
        *space = '\0';
        *s = space + 1;
    } else {
        *s = field + strlen(field);
    }
    return *field ? field : NULL;
}

static int whole(const char *text, unsigned long long *value)
{
    unsigned long long v = 0;
    size_t n = 0;
    if (!text || !*text)
        return -1;
    for (; *text; text++, n++) {
        unsigned int d;
        if (*text < '0' || *text > '9' || n >= 20)
            return -1;
        d = (unsigned int)(*text - '0');
        if (v > (NOT_AVAILABLE - d) / 10)
            return -1;
        v = v * 10 + d;
    }
    *value = v;
    return 0;
}

static int signed_whole(const char *text, long long *value)
{
    unsigned long long v;
    int negative = text && *text == '-';
    if (whole(negative ? text + 1 : text, &v) || v > 9223372036854775807ULL)
        return -1;
    *value = negative ? -(long long)v : (long long)v;
    return 0;
}

static int hex(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* A %-encoded text into out (cap bytes with the NUL); no control characters allowed. */
static int decode(const char *text, char *out, size_t cap)
{
    size_t n = 0;
    if (!text)
        return -1;
    for (; *text; text++) {
        unsigned char c = (unsigned char)*text;
        if (c == '%') {
            int high = hex(text[1]), low = high < 0 ? -1 : hex(text[2]);
            if (low < 0)
                return -1;
            c = (unsigned char)(high * 16 + low);
            text += 2;
        } else if (c <= ' ' || c > '~') {
            return -1;
        }
        if (c < 0x20 || c == 0x7F || n + 1 >= cap)
            return -1;
        out[n++] = (char)c;
    }
    out[n] = '\0';
    return 0;
}

static int keyword(char **line, const char *word)
{
    char *field = next_field(line);
    return field && strcmp(field, word) == 0 ? 0 : -1;
}

/* ---- the flat form ---- */

static int fail(char *reason, size_t cap, const char *flat, const char *what)
{
    say(reason, cap, "%s is not a valid flat machine file (%s)", flat, what);
    return SIM_INVALID;
}

static int parse_flat(char *data, size_t size, struct sim_machine *m, const char *flat,
                      char *reason, size_t cap)
{
    struct cursor c = {data, data + size};
    unsigned long long n, value;
    char *line, *field;

    line = next_line(&c);
    if (!line || strcmp(line, FLAT_MAGIC) != 0)
        return fail(reason, cap, flat, "first line");
    line = next_line(&c);
    if (!line || keyword(&line, "json") || signed_whole(next_field(&line), &m->json_size) ||
        signed_whole(next_field(&line), &m->json_mtime_ns) || *line)
        return fail(reason, cap, flat, "json line");

    line = next_line(&c);
    field = line ? next_field(&line) : NULL;
    if (field && strcmp(field, "error") == 0) {
        char message[2048];
        if (decode(next_field(&line), message, sizeof message) || *line)
            return fail(reason, cap, flat, "error line");
        if (!(line = next_line(&c)) || strcmp(line, "end") != 0)
            return fail(reason, cap, flat, "no end");
        say(reason, cap, "%s", message);
        return SIM_INVALID;
    }
    if (!field || strcmp(field, "boot") != 0 || !(field = next_field(&line)) || *line)
        return fail(reason, cap, flat, "boot line");
    if (strcmp(field, "-") != 0) {
        size_t len = strlen(field);
        if (len >= sizeof m->boot_id)
            return fail(reason, cap, flat, "boot id");
        for (size_t i = 0; i < len; i++)
            if (field[i] <= ' ' || field[i] > '~')
                return fail(reason, cap, flat, "boot id");
        memcpy(m->boot_id, field, len + 1);
    }

    line = next_line(&c);
    if (!line || keyword(&line, "devices") || whole(next_field(&line), &n) || *line ||
        n > MAX_DEVICES)
        return fail(reason, cap, flat, "devices line");
    m->devices = calloc(n ? n : 1, sizeof *m->devices);
    if (!m->devices)
        return SIM_NO_MEMORY;
    for (m->ndevices = 0; m->ndevices < n; m->ndevices++) {
        struct sim_device *d = &m->devices[m->ndevices];
        line = next_line(&c);
        if (!line || whole(next_field(&line), &d->total) || d->total == NOT_AVAILABLE ||
            decode(next_field(&line), d->uuid, sizeof d->uuid) || !d->uuid[0] ||
            decode(next_field(&line), d->name, sizeof d->name) || !d->name[0] || *line)
            return fail(reason, cap, flat, "device line");
        for (size_t i = 0; i < m->ndevices; i++)
            if (strcmp(m->devices[i].uuid, d->uuid) == 0)
                return fail(reason, cap, flat, "two devices with one uuid");
    }

    line = next_line(&c);
    if (!line || keyword(&line, "processes") || whole(next_field(&line), &n) || *line ||
        n > MAX_PROCESSES || n > (unsigned long long)(c.end - c.p) / 8)
        return fail(reason, cap, flat, "processes line");
    m->processes = calloc(n ? n : 1, sizeof *m->processes);
    if (!m->processes)
        return SIM_NO_MEMORY;
    for (m->nprocesses = 0; m->nprocesses < n; m->nprocesses++) {
        struct sim_process *p = &m->processes[m->nprocesses];
        line = next_line(&c);
        if (!line || whole(next_field(&line), &p->device) || whole(next_field(&line), &p->pid) ||
            p->pid == 0)
            return fail(reason, cap, flat, "process line");
        field = next_field(&line);
        if (field && strcmp(field, "-") == 0)
            p->used_known = 0;
        else if (!whole(field, &p->used) && p->used != NOT_AVAILABLE)
            p->used_known = 1;
        else
            return fail(reason, cap, flat, "process line");
        field = next_field(&line);
        if (field && strcmp(field, "-") == 0)
            p->start_known = 0;
        else if (!whole(field, &value) && value <= 9223372036854775807ULL)
            p->start = value, p->start_known = 1;
        else
            return fail(reason, cap, flat, "process line");
        if (*line)
            return fail(reason, cap, flat, "process line");
    }
    if (!(line = next_line(&c)) || strcmp(line, "end") != 0 || c.p != c.end)
        return fail(reason, cap, flat, "no end");
    return SIM_OK;
}

HIDDEN void sim_free(struct sim_machine *m)
{
    free(m->devices);
    free(m->processes);
    memset(m, 0, sizeof *m);
}

HIDDEN int sim_load(const char *path, struct sim_machine *out, char *reason, size_t cap)
{
    char *flat = flat_path_of(path);
    int status = SIM_INVALID;
    if (!flat)
        return SIM_NO_MEMORY;
    memset(out, 0, sizeof *out);
    for (int attempt = 0; attempt <= STALE_RETRIES; attempt++) {
        struct stat json;
        struct sim_machine m;
        char *data;
        size_t size;
        int read_error;

        if (attempt) {
            struct timespec pause = {0, STALE_PAUSE_NS};
            nanosleep(&pause, NULL);
        }
        if (stat(path, &json) != 0) {
            say(reason, cap, "cannot read %s: %s", path, strerror(errno));
            status = SIM_NO_MACHINE;
            break;
        }
        memset(&m, 0, sizeof m);
        if (read_whole(flat, &data, &size, &m.flat) != 0) {
            read_error = errno;
            if (read_error == ENOENT || read_error == EAGAIN) {
                say(reason, cap,
                    "%s has no flat form (%s.flat): write it with genv's write_machine, or "
                    "run: python -m genv.backends.machine_file %s", path, path, path);
                status = SIM_INVALID;
                continue;
            }
            say(reason, cap, "cannot read %s: %s", flat,
                read_error == EFBIG ? "too large" : strerror(read_error));
            status = read_error == ENOMEM ? SIM_NO_MEMORY : SIM_INVALID;
            break;
        }
        status = parse_flat(data, size, &m, flat, reason, cap);
        free(data);
        if (status != SIM_OK && !m.json_mtime_ns && !m.json_size) {
            sim_free(&m);
            break; /* not even its header could be read: no use looking again */
        }
        if (m.json_size != (long long)json.st_size || m.json_mtime_ns != mtime_ns(&json)) {
            sim_free(&m);
            say(reason, cap,
                "%s changed since its flat form was written: run "
                "python -m genv.backends.machine_file %s", path, path);
            status = SIM_INVALID;
            continue;
        }
        if (status == SIM_OK)
            *out = m;
        else
            sim_free(&m);
        break;
    }
    free(flat);
    return status;
}

HIDDEN void sim_files_now(const char *path, struct sim_files *files)
{
    struct stat st;
    char *flat = flat_path_of(path);
    memset(files, 0, sizeof *files);
    if (stat(path, &st) == 0)
        identity_of(&st, &files->json);
    if (flat && stat(flat, &st) == 0)
        identity_of(&st, &files->flat);
    free(flat);
}

static int same_ids(const struct sim_identity *a, const struct sim_identity *b)
{
    if (!a->valid || !b->valid)
        return a->valid == b->valid;
    return a->dev == b->dev && a->ino == b->ino && a->size == b->size &&
           a->mtime.tv_sec == b->mtime.tv_sec && a->mtime.tv_nsec == b->mtime.tv_nsec;
}

HIDDEN int sim_files_same(const struct sim_files *a, const struct sim_files *b)
{
    return same_ids(&a->json, &b->json) && same_ids(&a->flat, &b->flat);
}

HIDDEN int sim_flat_unchanged(const char *path, const struct sim_machine *m)
{
    char *flat = flat_path_of(path);
    struct stat st;
    int same = flat && stat(flat, &st) == 0 && same_identity(&st, &m->flat);
    free(flat);
    return same;
}

HIDDEN int sim_json_unchanged(const char *path, const struct sim_machine *m)
{
    struct stat st;
    return stat(path, &st) == 0 && m->json_size == (long long)st.st_size &&
           m->json_mtime_ns == mtime_ns(&st);
}

/* ---- which process an entry stands for ---- */

HIDDEN int sim_read_process(unsigned long long pid, unsigned long long *start)
{
    char path[48], line[1024], *paren, *p;
    ssize_t n;
    int fd;

    if (pid == 0 || pid > PID_MAX)
        return 0;
    snprintf(path, sizeof path, "/proc/%llu/stat", pid);
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    n = read(fd, line, sizeof line - 1);
    close(fd);
    if (n <= 0)
        return 0;
    line[n] = '\0';
    /* "pid (comm) S ...": the process names itself, so count from the last ')' */
    paren = strrchr(line, ')');
    if (!paren || paren[1] != ' ' || !paren[2] || strchr("ZXx", paren[2]))
        return 0;
    p = paren + 2;
    /* the state is field 3; the start is field 22, 19 fields further */
    for (int field = 0; field < 19; field++) {
        p = strchr(p, ' ');
        if (!p)
            return 0;
        p++;
    }
    {
        unsigned long long value = 0;
        int digits = 0;
        for (; *p >= '0' && *p <= '9'; p++, digits++)
            value = value * 10 + (unsigned long long)(*p - '0');
        if (!digits || digits > 19 || (*p != ' ' && *p != '\n' && *p))
            return 0;
        *start = value;
    }
    return 1;
}

HIDDEN long long sim_written_tick(const struct sim_machine *m)
{
    struct timespec real, boot;
    long long hz = sysconf(_SC_CLK_TCK);
    __int128 boot_ns, ticks;
    if (hz <= 0)
        hz = 100;
    clock_gettime(CLOCK_REALTIME, &real);
    clock_gettime(CLOCK_BOOTTIME, &boot);
    boot_ns = (__int128)m->json_mtime_ns -
              (((__int128)real.tv_sec - boot.tv_sec) * 1000000000 + (real.tv_nsec - boot.tv_nsec));
    ticks = boot_ns * hz;
    /* floor division, as Python's // */
    ticks = ticks >= 0 ? ticks / 1000000000 : -((-ticks + 999999999) / 1000000000);
    ticks += 1;
    if (ticks > 9223372036854775807LL)
        return 9223372036854775807LL;
    if (ticks < -9223372036854775807LL)
        return -9223372036854775807LL;
    return (long long)ticks;
}

HIDDEN const char *sim_boot_id(void)
{
    static char id[SIM_BOOT_ID];
    static int known;
    if (!known) {
        FILE *file = fopen("/proc/sys/kernel/random/boot_id", "re");
        id[0] = '\0';
        if (file) {
            if (fgets(id, sizeof id, file))
                id[strcspn(id, " \t\r\n")] = '\0';
            fclose(file);
        }
        known = 1;
    }
    return id;
}

HIDDEN int sim_counts(const struct sim_machine *m, const struct sim_process *p,
                      unsigned long long start, long long written)
{
    if (p->start_known) {
        if (start != p->start)
            return 0;
        if (m->boot_id[0])
            return strcmp(m->boot_id, sim_boot_id()) == 0;
    }
    return written >= 0 && start <= (unsigned long long)written;
}

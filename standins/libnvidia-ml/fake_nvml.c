/*
 * A stand-in for NVIDIA's libnvidia-ml.so.1 that presents a simulated machine.
 *
 * The machine is described by the JSON file named in GENV_FAKE_MACHINE:
 *
 *   {"devices":   [{"total_memory": "80gi", "uuid": "optional", "name": "optional"}, ...],
 *    "processes": [{"pid": 1234, "device": 0, "used_memory": "7295mi"}, ...]}
 *
 * The rules (standins/README.md has them all) are those of genv's fake backend
 * (src/genv/backends/fake.py), so that every view of the machine agrees. In short: memory is
 * a whole number and an optional unit b k m g ki mi gi, or a JSON integer (bytes); a device's
 * index is its position, its uuid defaults to GPU-00000000-0000-0000-0000-<index, 12 hex
 * digits> and its name to "Simulated GPU"; a process that is gone or a zombie is not
 * reported; a used_memory that is missing or null is unknown (NVML's "not available"); a
 * device's used memory is the sum of the known memory of its live processes.
 *
 * The description is read again on every nvmlDeviceGetCount and, for the other calls,
 * whenever the file changed (inode, size or mtime), so devices can appear and disappear
 * while a program runs. A handle stands for a uuid: when that uuid leaves the description,
 * calls on the handle answer NVML_ERROR_GPU_IS_LOST; when it comes back the handle works
 * again. Write the file atomically (write a temporary file, rename it over).
 *
 * Errors: no description at nvmlInit (variable unset, file missing or invalid) gives
 * NVML_ERROR_DRIVER_NOT_LOADED; after init a missing file gives the same and an invalid one
 * NVML_ERROR_UNKNOWN (the last good description is kept). Set GENV_FAKE_NVML_DEBUG=1 to
 * have the reason printed on stderr.
 *
 * Only the calls that nvidia-ml-py makes for devices, memory and processes are answered;
 * a program that looks up any other symbol gets NVML_ERROR_FUNCTION_NOT_FOUND from pynvml.
 */

#define _GNU_SOURCE /* syscall(), for pidfd_open */

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

#define EXPORT __attribute__((visibility("default")))

/* ---- NVML's types, as in nvml.h (ABI-compatible re-declarations) ---- */

typedef int nvmlReturn_t;

enum {
    NVML_SUCCESS = 0,
    NVML_ERROR_UNINITIALIZED = 1,
    NVML_ERROR_INVALID_ARGUMENT = 2,
    NVML_ERROR_NOT_SUPPORTED = 3,
    NVML_ERROR_NO_PERMISSION = 4,
    NVML_ERROR_ALREADY_INITIALIZED = 5,
    NVML_ERROR_NOT_FOUND = 6,
    NVML_ERROR_INSUFFICIENT_SIZE = 7,
    NVML_ERROR_INSUFFICIENT_POWER = 8,
    NVML_ERROR_DRIVER_NOT_LOADED = 9,
    NVML_ERROR_TIMEOUT = 10,
    NVML_ERROR_IRQ_ISSUE = 11,
    NVML_ERROR_LIBRARY_NOT_FOUND = 12,
    NVML_ERROR_FUNCTION_NOT_FOUND = 13,
    NVML_ERROR_CORRUPTED_INFOROM = 14,
    NVML_ERROR_GPU_IS_LOST = 15,
    NVML_ERROR_RESET_REQUIRED = 16,
    NVML_ERROR_OPERATING_SYSTEM = 17,
    NVML_ERROR_LIB_RM_VERSION_MISMATCH = 18,
    NVML_ERROR_IN_USE = 19,
    NVML_ERROR_MEMORY = 20,
    NVML_ERROR_NO_DATA = 21,
    NVML_ERROR_VGPU_ECC_NOT_SUPPORTED = 22,
    NVML_ERROR_INSUFFICIENT_RESOURCES = 23,
    NVML_ERROR_FREQ_NOT_SUPPORTED = 24,
    NVML_ERROR_ARGUMENT_VERSION_MISMATCH = 25,
    NVML_ERROR_DEPRECATED = 26,
    NVML_ERROR_NOT_READY = 27,
    NVML_ERROR_GPU_NOT_FOUND = 28,
    NVML_ERROR_INVALID_STATE = 29,
    NVML_ERROR_RESET_TYPE_NOT_SUPPORTED = 30,
    NVML_ERROR_UNKNOWN = 999
};

typedef struct nvmlDevice_st *nvmlDevice_t;

typedef struct {
    unsigned long long total;
    unsigned long long free;
    unsigned long long used;
} nvmlMemory_t;

typedef struct {
    unsigned int version;
    unsigned long long total;
    unsigned long long reserved;
    unsigned long long free;
    unsigned long long used;
} nvmlMemory_v2_t;

#define NVML_STRUCT_VERSION(size, ver) ((unsigned int)(size) | ((unsigned int)(ver) << 24U))
#define nvmlMemory_v2 NVML_STRUCT_VERSION(sizeof(nvmlMemory_v2_t), 2)

/* nvmlDeviceGet*RunningProcesses (no suffix): the original two-field record. */
typedef struct {
    unsigned int pid;
    unsigned long long usedGpuMemory;
} nvmlProcessInfo_v1_t;

/* The _v2 and _v3 entry points: the record with MIG instance ids (nvml.h's nvmlProcessInfo_t). */
typedef struct {
    unsigned int pid;
    unsigned long long usedGpuMemory;
    unsigned int gpuInstanceId;
    unsigned int computeInstanceId;
} nvmlProcessInfo_v2_t;

typedef struct {
    unsigned int gpu;
    unsigned int memory;
} nvmlUtilization_t;

#define NVML_TEMPERATURE_GPU 0
#define NVML_DEVICE_UUID_V2_BUFFER_SIZE 96
#define NVML_DEVICE_NAME_V2_BUFFER_SIZE 96
#define NVML_VALUE_NOT_AVAILABLE_UINT 0xFFFFFFFFU
#define NVML_VALUE_NOT_AVAILABLE_ULL 0xFFFFFFFFFFFFFFFFULL

/* ---- what the simulated machine reports ---- */

#define FAKE_DRIVER_VERSION "535.183.01"
#define FAKE_NVML_VERSION "12.535.183.01"
#define FAKE_CUDA_DRIVER_VERSION 12020
#define FAKE_TEMPERATURE 30
#define DEFAULT_NAME "Simulated GPU"
#define MAX_DESCRIPTION_BYTES (16 * 1024 * 1024)
#define MAX_JSON_DEPTH 64

/* A handle: stands for one uuid, lives as long as the process (never freed). */
struct nvmlDevice_st {
    char uuid[NVML_DEVICE_UUID_V2_BUFFER_SIZE];
    struct nvmlDevice_st *next;
};

struct fake_device {
    unsigned long long total;
    char uuid[NVML_DEVICE_UUID_V2_BUFFER_SIZE];
    char name[NVML_DEVICE_NAME_V2_BUFFER_SIZE];
    struct nvmlDevice_st *handle;
};

struct fake_process {
    unsigned long long pid;
    unsigned long long device;
    unsigned long long used;
    int used_known; /* used_memory missing or null: unknown, reported as not available */
    unsigned long long alive_generation; /* the snapshot generation `alive` was found in */
    int alive;
};

struct machine {
    struct fake_device *devices;
    size_t ndevices, devices_capacity;
    struct fake_process *processes;
    size_t nprocesses, processes_capacity;
};

struct file_identity {
    int valid;
    dev_t dev;
    ino_t ino;
    off_t size;
    struct timespec mtime;
};

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned int g_init_count;
static char *g_path;
static struct machine g_machine;
static struct file_identity g_identity;
static struct nvmlDevice_st *g_handles;

static void debug(const char *what, const char *detail)
{
    const char *flag = getenv("GENV_FAKE_NVML_DEBUG");
    if (flag && *flag && strcmp(flag, "0") != 0)
        fprintf(stderr, "fake NVML: %s%s%s\n", what, detail ? ": " : "", detail ? detail : "");
}

/* ======================================================================================
 * A small JSON reader for the fixed schema above. Strict JSON; unknown keys are skipped.
 * ====================================================================================== */

struct parser {
    const char *p;
    const char *end;
    char error[160];
};

static int fail(struct parser *ps, const char *message)
{
    if (!ps->error[0])
        snprintf(ps->error, sizeof ps->error, "%s", message);
    return -1;
}

static void skip_ws(struct parser *ps)
{
    while (ps->p < ps->end && (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r'))
        ps->p++;
}

static int expect(struct parser *ps, char c)
{
    skip_ws(ps);
    if (ps->p >= ps->end || *ps->p != c) {
        char message[64];
        snprintf(message, sizeof message, "expected '%c'", c);
        return fail(ps, message);
    }
    ps->p++;
    return 0;
}

static int peek(struct parser *ps)
{
    skip_ws(ps);
    return ps->p < ps->end ? (unsigned char)*ps->p : -1;
}

static int hex4(struct parser *ps, unsigned int *out)
{
    unsigned int value = 0;
    if (ps->end - ps->p < 4)
        return fail(ps, "truncated \\u escape");
    for (int i = 0; i < 4; i++) {
        char c = *ps->p++;
        value <<= 4;
        if (c >= '0' && c <= '9')
            value |= (unsigned int)(c - '0');
        else if (c >= 'a' && c <= 'f')
            value |= (unsigned int)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            value |= (unsigned int)(c - 'A' + 10);
        else
            return fail(ps, "bad \\u escape");
    }
    *out = value;
    return 0;
}

/* Appends one byte to out (capacity cap) unless out is NULL; counts it in *len either way. */
static void put(char *out, size_t cap, size_t *len, char c)
{
    if (out && *len + 1 < cap)
        out[*len] = c;
    (*len)++;
}

/*
 * Reads a string. With out != NULL, stores it NUL-terminated; *len gets its length in
 * bytes (UTF-8), which may exceed cap - 1 (the caller decides whether that is an error).
 */
static int parse_string(struct parser *ps, char *out, size_t cap, size_t *len)
{
    size_t n = 0;
    if (expect(ps, '"'))
        return -1;
    for (;;) {
        if (ps->p >= ps->end)
            return fail(ps, "unterminated string");
        unsigned char c = (unsigned char)*ps->p++;
        if (c == '"')
            break;
        if (c < 0x20)
            return fail(ps, "control character in string");
        if (c != '\\') {
            put(out, cap, &n, (char)c);
            continue;
        }
        if (ps->p >= ps->end)
            return fail(ps, "unterminated string");
        c = (unsigned char)*ps->p++;
        switch (c) {
        case '"': case '\\': case '/':
            put(out, cap, &n, (char)c);
            break;
        case 'b': put(out, cap, &n, '\b'); break;
        case 'f': put(out, cap, &n, '\f'); break;
        case 'n': put(out, cap, &n, '\n'); break;
        case 'r': put(out, cap, &n, '\r'); break;
        case 't': put(out, cap, &n, '\t'); break;
        case 'u': {
            unsigned int cp;
            if (hex4(ps, &cp))
                return -1;
            if (cp >= 0xD800 && cp <= 0xDBFF && ps->end - ps->p >= 6 && ps->p[0] == '\\' &&
                ps->p[1] == 'u') {
                unsigned int low;
                const char *mark = ps->p;
                ps->p += 2;
                if (hex4(ps, &low))
                    return -1;
                if (low >= 0xDC00 && low <= 0xDFFF)
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
                else
                    ps->p = mark; /* read the next escape on its own */
            }
            if (cp >= 0xD800 && cp <= 0xDFFF)
                cp = 0xFFFD; /* a lone surrogate (Python's json keeps it; no byte form here) */
            if (cp < 0x80) {
                put(out, cap, &n, (char)cp);
            } else if (cp < 0x800) {
                put(out, cap, &n, (char)(0xC0 | (cp >> 6)));
                put(out, cap, &n, (char)(0x80 | (cp & 0x3F)));
            } else if (cp < 0x10000) {
                put(out, cap, &n, (char)(0xE0 | (cp >> 12)));
                put(out, cap, &n, (char)(0x80 | ((cp >> 6) & 0x3F)));
                put(out, cap, &n, (char)(0x80 | (cp & 0x3F)));
            } else {
                put(out, cap, &n, (char)(0xF0 | (cp >> 18)));
                put(out, cap, &n, (char)(0x80 | ((cp >> 12) & 0x3F)));
                put(out, cap, &n, (char)(0x80 | ((cp >> 6) & 0x3F)));
                put(out, cap, &n, (char)(0x80 | (cp & 0x3F)));
            }
            break;
        }
        default:
            return fail(ps, "bad escape in string");
        }
    }
    if (out && cap)
        out[n < cap ? n : cap - 1] = '\0';
    if (len)
        *len = n;
    return 0;
}

static int is_digit(char c)
{
    return c >= '0' && c <= '9';
}

/*
 * Reads a JSON number. *is_integer tells whether it was a plain non-negative integer that
 * fits in 64 bits; then *value holds it.
 */
static int parse_number(struct parser *ps, int *is_integer, unsigned long long *value)
{
    int negative = 0, fraction = 0, overflow = 0;
    unsigned long long v = 0;

    skip_ws(ps);
    if (ps->p < ps->end && *ps->p == '-') {
        negative = 1;
        ps->p++;
    }
    if (ps->p >= ps->end || !is_digit(*ps->p))
        return fail(ps, "bad number");
    if (*ps->p == '0' && ps->p + 1 < ps->end && is_digit(ps->p[1]))
        return fail(ps, "bad number (leading zero)");
    while (ps->p < ps->end && is_digit(*ps->p)) {
        unsigned int d = (unsigned int)(*ps->p++ - '0');
        if (v > (ULLONG_MAX - d) / 10)
            overflow = 1;
        else
            v = v * 10 + d;
    }
    if (ps->p < ps->end && *ps->p == '.') {
        fraction = 1;
        ps->p++;
        if (ps->p >= ps->end || !is_digit(*ps->p))
            return fail(ps, "bad number");
        while (ps->p < ps->end && is_digit(*ps->p))
            ps->p++;
    }
    if (ps->p < ps->end && (*ps->p == 'e' || *ps->p == 'E')) {
        fraction = 1;
        ps->p++;
        if (ps->p < ps->end && (*ps->p == '+' || *ps->p == '-'))
            ps->p++;
        if (ps->p >= ps->end || !is_digit(*ps->p))
            return fail(ps, "bad number");
        while (ps->p < ps->end && is_digit(*ps->p))
            ps->p++;
    }
    *is_integer = !negative && !fraction && !overflow;
    *value = v;
    return 0;
}

static int parse_literal(struct parser *ps, const char *word)
{
    size_t n = strlen(word);
    skip_ws(ps);
    if ((size_t)(ps->end - ps->p) < n || memcmp(ps->p, word, n) != 0)
        return fail(ps, "unexpected character");
    ps->p += n;
    return 0;
}

static int skip_value(struct parser *ps, int depth);

static int skip_container(struct parser *ps, int depth, char open, char close)
{
    if (depth > MAX_JSON_DEPTH)
        return fail(ps, "nested too deeply");
    if (expect(ps, open))
        return -1;
    if (peek(ps) == close) {
        ps->p++;
        return 0;
    }
    for (;;) {
        if (open == '{') {
            if (parse_string(ps, NULL, 0, NULL) || expect(ps, ':'))
                return -1;
        }
        if (skip_value(ps, depth + 1))
            return -1;
        int c = peek(ps);
        if (c == ',') {
            ps->p++;
            continue;
        }
        return expect(ps, close);
    }
}

static int skip_value(struct parser *ps, int depth)
{
    int c = peek(ps), is_integer;
    unsigned long long ignored;
    switch (c) {
    case '{': return skip_container(ps, depth, '{', '}');
    case '[': return skip_container(ps, depth, '[', ']');
    case '"': return parse_string(ps, NULL, 0, NULL);
    case 't': return parse_literal(ps, "true");
    case 'f': return parse_literal(ps, "false");
    case 'n': return parse_literal(ps, "null");
    /* Python's json takes these too */
    case 'N': return parse_literal(ps, "NaN");
    case 'I': return parse_literal(ps, "Infinity");
    default:
        if (c == '-' && ps->end - ps->p > 1 && ps->p[1] == 'I') {
            ps->p++;
            return parse_literal(ps, "Infinity");
        }
        if (c == '-' || (c >= '0' && c <= '9'))
            return parse_number(ps, &is_integer, &ignored);
        return fail(ps, c < 0 ? "unexpected end of file" : "unexpected character");
    }
}

static int is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

/* "4g", " 42 MI ", "44040192": a whole number and an optional unit, like genv. */
static int memory_from_text(const char *text, unsigned long long *bytes)
{
    static const struct { const char *unit; unsigned long long factor; } units[] = {
        {"b", 1ULL}, {"k", 1000ULL}, {"m", 1000ULL * 1000}, {"g", 1000ULL * 1000 * 1000},
        {"ki", 1024ULL}, {"mi", 1024ULL * 1024}, {"gi", 1024ULL * 1024 * 1024},
    };
    const char *s = text;
    unsigned long long v = 0, factor = 1;
    char unit[3] = {0};
    size_t n = 0;

    while (is_space(*s))
        s++;
    if (!is_digit(*s))
        return -1;
    while (is_digit(*s)) {
        unsigned int d = (unsigned int)(*s++ - '0');
        if (v > (ULLONG_MAX - d) / 10)
            return -1;
        v = v * 10 + d;
    }
    while (is_space(*s))
        s++;
    while (((*s | 0x20) >= 'a' && (*s | 0x20) <= 'z')) {
        if (n == 2)
            return -1;
        unit[n++] = (char)(*s++ | 0x20);
    }
    while (is_space(*s))
        s++;
    if (*s)
        return -1;
    if (n) {
        size_t i;
        for (i = 0; i < sizeof units / sizeof units[0]; i++)
            if (strcmp(unit, units[i].unit) == 0)
                break;
        if (i == sizeof units / sizeof units[0])
            return -1;
        factor = units[i].factor;
    }
    if (v > ULLONG_MAX / factor)
        return -1;
    *bytes = v * factor;
    return 0;
}

static int parse_memory(struct parser *ps, unsigned long long *bytes, const char *what)
{
    char message[96];
    int c = peek(ps);
    snprintf(message, sizeof message, "%s: not a memory amount (like \"80gi\")", what);
    if (c == '"') {
        char text[64];
        size_t len;
        if (parse_string(ps, text, sizeof text, &len))
            return -1;
        if (len >= sizeof text || memory_from_text(text, bytes))
            return fail(ps, message);
        return 0;
    }
    if (c == '-' || (c >= '0' && c <= '9')) {
        int is_integer;
        if (parse_number(ps, &is_integer, bytes))
            return -1;
        return is_integer ? 0 : fail(ps, message);
    }
    return fail(ps, message);
}

static int parse_uint(struct parser *ps, unsigned long long *value, const char *what)
{
    char message[96];
    int c = peek(ps), is_integer;
    snprintf(message, sizeof message, "%s: not a whole number", what);
    if (c != '-' && !(c >= '0' && c <= '9'))
        return fail(ps, message);
    if (parse_number(ps, &is_integer, value))
        return -1;
    return is_integer ? 0 : fail(ps, message);
}

/*
 * An optional text: a string or null. Surrounding blanks are dropped; null or only blanks
 * leaves out empty (the caller's default applies). A text longer than cap - 1 bytes is an
 * error, or with truncate cut to fit (at a UTF-8 character boundary).
 */
static int parse_optional_text(struct parser *ps, char *out, size_t cap, int truncate,
                               const char *what)
{
    char message[96], text[1024];
    size_t len, start = 0;
    out[0] = '\0';
    if (peek(ps) == 'n')
        return parse_literal(ps, "null");
    snprintf(message, sizeof message, "%s: not a string", what);
    if (peek(ps) != '"')
        return fail(ps, message);
    if (parse_string(ps, text, sizeof text, &len))
        return -1;
    if (len >= sizeof text)
        len = sizeof text - 1; /* kept: the first 1023 bytes */
    if (memchr(text, '\0', len))
        return fail(ps, "NUL character in string");
    while (start < len && is_space(text[start]))
        start++;
    while (len > start && is_space(text[len - 1]))
        len--;
    len -= start;
    if (len >= cap) {
        snprintf(message, sizeof message, "%s: longer than %zu bytes", what, cap - 1);
        if (!truncate)
            return fail(ps, message);
        len = cap - 1;
        while (len && ((unsigned char)text[start + len] & 0xC0) == 0x80)
            len--; /* do not cut a character in two */
    }
    memcpy(out, text + start, len);
    out[len] = '\0';
    return 0;
}

/* Room for one more item: returns the (maybe moved) array, or NULL when out of memory. */
static void *grow(void *items, size_t count, size_t *capacity, size_t size)
{
    if (count < *capacity)
        return items;
    size_t wanted = *capacity ? *capacity * 2 : 8;
    void *bigger = realloc(items, wanted * size);
    if (bigger)
        *capacity = wanted;
    return bigger;
}

/* Calls item(ps, m) for each element of an array. */
static int parse_array(struct parser *ps, struct machine *m,
                       int (*item)(struct parser *, struct machine *))
{
    if (expect(ps, '['))
        return -1;
    if (peek(ps) == ']') {
        ps->p++;
        return 0;
    }
    for (;;) {
        if (item(ps, m))
            return -1;
        if (peek(ps) == ',') {
            ps->p++;
            continue;
        }
        return expect(ps, ']');
    }
}

/* Calls field(ps, key, target) for each member of an object, with the value still to read. */
static int parse_object(struct parser *ps, void *target,
                        int (*field)(struct parser *, const char *, void *))
{
    if (expect(ps, '{'))
        return -1;
    if (peek(ps) == '}') {
        ps->p++;
        return 0;
    }
    for (;;) {
        char key[32];
        size_t len;
        if (parse_string(ps, key, sizeof key, &len) || expect(ps, ':'))
            return -1;
        if (len >= sizeof key)
            key[0] = '\0'; /* too long to be one of ours: an unknown key */
        if (field(ps, key, target))
            return -1;
        if (peek(ps) == ',') {
            ps->p++;
            continue;
        }
        return expect(ps, '}');
    }
}

struct device_fields {
    struct fake_device *device;
    int has_total;
};

static int device_field(struct parser *ps, const char *key, void *target)
{
    struct device_fields *f = target;
    if (strcmp(key, "total_memory") == 0) {
        f->has_total = 1;
        return parse_memory(ps, &f->device->total, "devices[].total_memory");
    }
    if (strcmp(key, "uuid") == 0)
        return parse_optional_text(ps, f->device->uuid, sizeof f->device->uuid, 0,
                                   "devices[].uuid");
    if (strcmp(key, "name") == 0)
        return parse_optional_text(ps, f->device->name, sizeof f->device->name, 1,
                                   "devices[].name");
    return skip_value(ps, 1);
}

static int device_item(struct parser *ps, struct machine *m)
{
    struct fake_device device;
    struct device_fields f = {&device, 0};
    memset(&device, 0, sizeof device);
    if (peek(ps) != '{')
        return fail(ps, "devices[]: not an object");
    if (parse_object(ps, &f, device_field))
        return -1;
    if (!f.has_total)
        return fail(ps, "devices[]: total_memory is missing");
    size_t index = m->ndevices;
    if (!device.uuid[0])
        snprintf(device.uuid, sizeof device.uuid, "GPU-00000000-0000-0000-0000-%012zx", index);
    if (!device.name[0])
        snprintf(device.name, sizeof device.name, "%s", DEFAULT_NAME);
    for (size_t i = 0; i < m->ndevices; i++)
        if (strcmp(m->devices[i].uuid, device.uuid) == 0)
            return fail(ps, "devices[]: two devices with the same uuid");
    struct fake_device *devices = grow(m->devices, m->ndevices, &m->devices_capacity, sizeof device);
    if (!devices)
        return fail(ps, "out of memory");
    m->devices = devices;
    m->devices[m->ndevices++] = device;
    return 0;
}

struct process_fields {
    struct fake_process *process;
    int has_pid, has_device;
};

static int process_field(struct parser *ps, const char *key, void *target)
{
    struct process_fields *f = target;
    unsigned long long value;
    if (strcmp(key, "pid") == 0) {
        if (parse_uint(ps, &value, "processes[].pid"))
            return -1;
        if (value == 0)
            return fail(ps, "processes[].pid: must be at least 1");
        f->process->pid = value;
        f->has_pid = 1;
        return 0;
    }
    if (strcmp(key, "device") == 0) {
        f->has_device = 1;
        return parse_uint(ps, &f->process->device, "processes[].device");
    }
    if (strcmp(key, "used_memory") == 0) {
        if (peek(ps) == 'n') {
            f->process->used_known = 0;
            return parse_literal(ps, "null");
        }
        f->process->used_known = 1;
        return parse_memory(ps, &f->process->used, "processes[].used_memory");
    }
    return skip_value(ps, 1);
}

static int process_item(struct parser *ps, struct machine *m)
{
    struct fake_process process;
    struct process_fields f = {&process, 0, 0};
    memset(&process, 0, sizeof process);
    if (peek(ps) != '{')
        return fail(ps, "processes[]: not an object");
    if (parse_object(ps, &f, process_field))
        return -1;
    if (!f.has_pid)
        return fail(ps, "processes[]: pid is missing");
    if (!f.has_device)
        return fail(ps, "processes[]: device is missing");
    for (size_t i = 0; i < m->nprocesses; i++)
        if (m->processes[i].pid == process.pid && m->processes[i].device == process.device)
            return fail(ps, "processes[]: the same pid twice on one device");
    struct fake_process *processes =
        grow(m->processes, m->nprocesses, &m->processes_capacity, sizeof process);
    if (!processes)
        return fail(ps, "out of memory");
    m->processes = processes;
    m->processes[m->nprocesses++] = process;
    return 0;
}

struct top_fields {
    struct machine *machine;
    int seen_devices;
};

static int top_field(struct parser *ps, const char *key, void *target)
{
    struct top_fields *f = target;
    /* a key given twice: the last one counts, as in Python's json */
    if (strcmp(key, "devices") == 0) {
        f->seen_devices = 1;
        f->machine->ndevices = 0;
        if (peek(ps) != '[')
            return fail(ps, "\"devices\": not an array");
        return parse_array(ps, f->machine, device_item);
    }
    if (strcmp(key, "processes") == 0) {
        f->machine->nprocesses = 0;
        if (peek(ps) == 'n')
            return parse_literal(ps, "null"); /* null: no processes */
        if (peek(ps) != '[')
            return fail(ps, "\"processes\": not an array");
        return parse_array(ps, f->machine, process_item);
    }
    return skip_value(ps, 1);
}

static void machine_free(struct machine *m)
{
    free(m->devices);
    free(m->processes);
    memset(m, 0, sizeof *m);
}

static int parse_machine(const char *text, size_t size, struct machine *m, char *error, size_t cap)
{
    struct parser ps;
    struct top_fields f = {m, 0};
    memset(&ps, 0, sizeof ps);
    memset(m, 0, sizeof *m);
    ps.p = text;
    ps.end = text + size;
    if (peek(&ps) != '{')
        fail(&ps, "the description is not a JSON object");
    else if (parse_object(&ps, &f, top_field) == 0 && peek(&ps) != -1)
        fail(&ps, "unexpected text after the JSON object");
    else if (!ps.error[0] && !f.seen_devices)
        fail(&ps, "\"devices\" is missing");
    if (ps.error[0]) {
        const char *line_start = text;
        size_t line = 1;
        for (const char *q = text; q < ps.p && q < ps.end; q++)
            if (*q == '\n') {
                line++;
                line_start = q + 1;
            }
        snprintf(error, cap, "%s (line %zu, column %zu)", ps.error, line,
                 (size_t)(ps.p - line_start) + 1);
        machine_free(m);
        return -1;
    }
    return 0;
}

/* ======================================================================================
 * State: the description, re-read when it changes, and the handles.
 * ====================================================================================== */

static struct nvmlDevice_st *handle_for(const char *uuid)
{
    struct nvmlDevice_st *h;
    for (h = g_handles; h; h = h->next)
        if (strcmp(h->uuid, uuid) == 0)
            return h;
    h = calloc(1, sizeof *h);
    if (!h)
        return NULL;
    snprintf(h->uuid, sizeof h->uuid, "%s", uuid);
    h->next = g_handles;
    g_handles = h;
    return h;
}

/* Reads the file at g_path into a new machine. Returns an NVML code. */
static nvmlReturn_t load(const struct stat *st)
{
    char error[256];
    struct machine m;
    FILE *file;
    char *text;
    size_t size;

    if (st->st_size > MAX_DESCRIPTION_BYTES) {
        debug("description too large", g_path);
        return NVML_ERROR_UNKNOWN;
    }
    file = fopen(g_path, "rb");
    if (!file) {
        debug("cannot open the description", strerror(errno));
        return errno == ENOENT ? NVML_ERROR_DRIVER_NOT_LOADED : NVML_ERROR_UNKNOWN;
    }
    text = malloc((size_t)st->st_size + 1);
    if (!text) {
        fclose(file);
        return NVML_ERROR_MEMORY;
    }
    /* read to the end even if the file grew since stat */
    size = fread(text, 1, (size_t)st->st_size + 1, file);
    if (size > (size_t)st->st_size || ferror(file)) {
        free(text);
        fclose(file);
        debug("the description changed while being read", g_path);
        return NVML_ERROR_UNKNOWN;
    }
    fclose(file);
    if (parse_machine(text, size, &m, error, sizeof error)) {
        free(text);
        debug("invalid description", error);
        return NVML_ERROR_UNKNOWN;
    }
    free(text);
    for (size_t i = 0; i < m.ndevices; i++) {
        m.devices[i].handle = handle_for(m.devices[i].uuid);
        if (!m.devices[i].handle) {
            machine_free(&m);
            return NVML_ERROR_MEMORY;
        }
    }
    machine_free(&g_machine);
    g_machine = m;
    return NVML_SUCCESS;
}

/* Makes g_machine current: reads the file when forced or when it changed. */
static nvmlReturn_t refresh(int force)
{
    struct stat st;
    nvmlReturn_t ret;

    if (stat(g_path, &st) != 0) {
        debug("cannot read the description", strerror(errno));
        g_identity.valid = 0;
        return NVML_ERROR_DRIVER_NOT_LOADED;
    }
    if (!force && g_identity.valid && g_identity.dev == st.st_dev && g_identity.ino == st.st_ino &&
        g_identity.size == st.st_size && g_identity.mtime.tv_sec == st.st_mtim.tv_sec &&
        g_identity.mtime.tv_nsec == st.st_mtim.tv_nsec)
        return NVML_SUCCESS;
    ret = load(&st);
    if (ret != NVML_SUCCESS) {
        g_identity.valid = 0;
        return ret;
    }
    g_identity.valid = 1;
    g_identity.dev = st.st_dev;
    g_identity.ino = st.st_ino;
    g_identity.size = st.st_size;
    g_identity.mtime = st.st_mtim;
    return NVML_SUCCESS;
}

/*
 * Whether a process still holds its GPU memory: it exists (kill(pid, 0) does not fail with
 * ESRCH; EPERM means it exists) and is not a zombie, which has given its memory back.
 */
static int pid_alive(unsigned long long pid)
{
    char path[48], stat_line[512];
    FILE *file;
    size_t n;
    char *close;

    if (pid > INT_MAX)
        return 0;
    if (kill((pid_t)pid, 0) != 0 && errno == ESRCH)
        return 0;
    snprintf(path, sizeof path, "/proc/%llu/stat", pid);
    file = fopen(path, "re");
    if (!file)
        return errno != ENOENT && errno != ESRCH;
    n = fread(stat_line, 1, sizeof stat_line - 1, file);
    fclose(file);
    stat_line[n] = '\0';
    /* "pid (comm) S ...": the state follows the last ')' (comm may hold anything) */
    close = strrchr(stat_line, ')');
    if (close && close[1] == ' ' && (close[2] == 'Z' || close[2] == 'X'))
        return 0;
    return 1;
}

/*
 * Liveness is found once per snapshot generation: a generation starts at each
 * nvmlDeviceGetCount, which is how every reader begins a pass over the devices. A real driver
 * knows its processes without reading /proc; so that the stand-in's own cost does not swamp
 * what a benchmark of its callers measures, a process found alive is then followed through a
 * pidfd (readable once it exits), and one poll() per generation tells which of them exited.
 * Processes nobody asked about during a generation are let go.
 */
#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif

struct watch {
    unsigned long long pid; /* 0: empty slot */
    int fd;
    unsigned long long seen; /* the last generation it was asked about */
};

static unsigned long long g_generation = 1;
static struct watch *g_watch;
static size_t g_watch_capacity, g_watch_count;
static struct pollfd *g_pollfds;

static struct watch *watch_slot(struct watch *table, size_t capacity, unsigned long long pid)
{
    size_t i = (size_t)(pid * 2654435761ULL) & (capacity - 1);
    while (table[i].pid && table[i].pid != pid)
        i = (i + 1) & (capacity - 1);
    return &table[i];
}

/* Start a generation: drop the processes that exited or that nobody asked about. */
static void watch_new_generation(void)
{
    size_t n = 0, kept = 0, capacity = 64;
    struct watch *table;

    g_generation++;
    if (!g_watch_count)
        return;
    free(g_pollfds);
    g_pollfds = calloc(g_watch_count, sizeof *g_pollfds);
    if (!g_pollfds)
        return;
    for (size_t i = 0; i < g_watch_capacity; i++)
        if (g_watch[i].pid) {
            g_pollfds[n].fd = g_watch[i].fd;
            g_pollfds[n].events = POLLIN;
            n++;
        }
    if (poll(g_pollfds, (nfds_t)n, 0) < 0)
        for (size_t i = 0; i < n; i++)
            g_pollfds[i].revents = POLLIN; /* cannot tell: look again the slow way */
    while (capacity < 4 * g_watch_count)
        capacity *= 2;
    table = calloc(capacity, sizeof *table);
    if (!table)
        return;
    n = 0;
    for (size_t i = 0; i < g_watch_capacity; i++) {
        struct watch *w = &g_watch[i];
        if (!w->pid)
            continue;
        if ((g_pollfds[n++].revents & (POLLIN | POLLHUP | POLLERR | POLLNVAL)) ||
            w->seen + 1 < g_generation) {
            close(w->fd);
            continue;
        }
        *watch_slot(table, capacity, w->pid) = *w;
        kept++;
    }
    free(g_watch);
    g_watch = table;
    g_watch_capacity = capacity;
    g_watch_count = kept;
}

static void watch_add(unsigned long long pid)
{
    int fd;
    if (!g_watch || 4 * (g_watch_count + 1) > g_watch_capacity) {
        size_t capacity = g_watch_capacity ? g_watch_capacity * 2 : 64;
        struct watch *table = calloc(capacity, sizeof *table);
        if (!table)
            return;
        for (size_t i = 0; i < g_watch_capacity; i++)
            if (g_watch[i].pid)
                *watch_slot(table, capacity, g_watch[i].pid) = g_watch[i];
        free(g_watch);
        g_watch = table;
        g_watch_capacity = capacity;
    }
    fd = (int)syscall(SYS_pidfd_open, (pid_t)pid, 0);
    if (fd < 0)
        return; /* no pidfds (old kernel, no descriptors left): the slow way every time */
    if (!pid_alive(pid)) { /* it exited, or was replaced, meanwhile */
        close(fd);
        return;
    }
    struct watch *slot = watch_slot(g_watch, g_watch_capacity, pid);
    slot->pid = pid;
    slot->fd = fd;
    slot->seen = g_generation;
    g_watch_count++;
}

static void watch_close(void)
{
    for (size_t i = 0; i < g_watch_capacity; i++)
        if (g_watch[i].pid)
            close(g_watch[i].fd);
    free(g_watch);
    free(g_pollfds);
    g_watch = NULL;
    g_pollfds = NULL;
    g_watch_capacity = g_watch_count = 0;
}

static int process_alive(struct fake_process *p)
{
    if (p->alive_generation != g_generation) {
        struct watch *w = g_watch ? watch_slot(g_watch, g_watch_capacity, p->pid) : NULL;
        if (w && w->pid) {
            p->alive = 1; /* its pidfd was not readable when this generation began */
            w->seen = g_generation;
        } else {
            p->alive = pid_alive(p->pid);
            if (p->alive && p->pid <= INT_MAX)
                watch_add(p->pid);
        }
        p->alive_generation = g_generation;
    }
    return p->alive;
}

/* Locks, checks init, refreshes. On success the caller holds g_lock. */
static nvmlReturn_t enter(int force)
{
    nvmlReturn_t ret;
    pthread_mutex_lock(&g_lock);
    if (!g_init_count) {
        pthread_mutex_unlock(&g_lock);
        return NVML_ERROR_UNINITIALIZED;
    }
    if (force)
        watch_new_generation();
    ret = refresh(force);
    if (ret != NVML_SUCCESS)
        pthread_mutex_unlock(&g_lock);
    return ret;
}

static nvmlReturn_t leave(nvmlReturn_t ret)
{
    pthread_mutex_unlock(&g_lock);
    return ret;
}

/* Locks and finds the device a handle stands for now. On success the caller holds g_lock. */
static nvmlReturn_t enter_device(nvmlDevice_t handle, size_t *index)
{
    struct nvmlDevice_st *h;
    nvmlReturn_t ret = enter(0);
    if (ret != NVML_SUCCESS)
        return ret;
    for (h = g_handles; h && h != handle; h = h->next)
        ;
    if (!h || !handle)
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    for (size_t i = 0; i < g_machine.ndevices; i++)
        if (g_machine.devices[i].handle == handle) {
            *index = i;
            return NVML_SUCCESS;
        }
    return leave(NVML_ERROR_GPU_IS_LOST);
}

static unsigned long long used_memory(size_t index)
{
    unsigned long long used = 0;
    for (size_t i = 0; i < g_machine.nprocesses; i++) {
        struct fake_process *p = &g_machine.processes[i];
        if (p->device == index && p->used_known && process_alive(p))
            used += p->used;
    }
    return used;
}

static nvmlReturn_t copy_text(const char *text, char *out, unsigned int length)
{
    if (!out)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (strlen(text) + 1 > length)
        return NVML_ERROR_INSUFFICIENT_SIZE;
    memcpy(out, text, strlen(text) + 1);
    return NVML_SUCCESS;
}

/* ======================================================================================
 * The NVML entry points.
 * ====================================================================================== */

EXPORT nvmlReturn_t nvmlInitWithFlags(unsigned int flags)
{
    nvmlReturn_t ret;
    const char *path;
    (void)flags;

    pthread_mutex_lock(&g_lock);
    if (g_init_count) {
        /* NVML counts nested inits; each needs its shutdown */
        g_init_count++;
        return leave(NVML_SUCCESS);
    }
    path = getenv("GENV_FAKE_MACHINE");
    while (path && is_space(*path))
        path++;
    if (!path || !*path) {
        debug("GENV_FAKE_MACHINE is not set", NULL);
        return leave(NVML_ERROR_DRIVER_NOT_LOADED);
    }
    g_path = strdup(path);
    if (!g_path)
        return leave(NVML_ERROR_MEMORY);
    for (size_t n = strlen(g_path); n && is_space(g_path[n - 1]); n--)
        g_path[n - 1] = '\0';
    ret = refresh(1);
    if (ret != NVML_SUCCESS) {
        free(g_path);
        g_path = NULL;
        return leave(NVML_ERROR_DRIVER_NOT_LOADED);
    }
    g_init_count = 1;
    return leave(NVML_SUCCESS);
}

EXPORT nvmlReturn_t nvmlInit_v2(void)
{
    return nvmlInitWithFlags(0);
}

EXPORT nvmlReturn_t nvmlInit(void)
{
    return nvmlInitWithFlags(0);
}

EXPORT nvmlReturn_t nvmlShutdown(void)
{
    pthread_mutex_lock(&g_lock);
    if (!g_init_count)
        return leave(NVML_ERROR_UNINITIALIZED);
    if (--g_init_count == 0) {
        machine_free(&g_machine);
        free(g_path);
        g_path = NULL;
        g_identity.valid = 0;
        watch_close();
    }
    return leave(NVML_SUCCESS);
}

EXPORT const char *nvmlErrorString(nvmlReturn_t result)
{
    switch (result) {
    case NVML_SUCCESS: return "Success";
    case NVML_ERROR_UNINITIALIZED: return "Uninitialized";
    case NVML_ERROR_INVALID_ARGUMENT: return "Invalid Argument";
    case NVML_ERROR_NOT_SUPPORTED: return "Not Supported";
    case NVML_ERROR_NO_PERMISSION: return "Insufficient Permissions";
    case NVML_ERROR_ALREADY_INITIALIZED: return "Already Initialized";
    case NVML_ERROR_NOT_FOUND: return "Not Found";
    case NVML_ERROR_INSUFFICIENT_SIZE: return "Insufficient Size";
    case NVML_ERROR_INSUFFICIENT_POWER: return "Insufficient External Power";
    case NVML_ERROR_DRIVER_NOT_LOADED: return "Driver Not Loaded";
    case NVML_ERROR_TIMEOUT: return "Timeout";
    case NVML_ERROR_IRQ_ISSUE: return "Interrupt Request Issue";
    case NVML_ERROR_LIBRARY_NOT_FOUND: return "NVML Shared Library Not Found";
    case NVML_ERROR_FUNCTION_NOT_FOUND: return "Function Not Found";
    case NVML_ERROR_CORRUPTED_INFOROM: return "Corrupted infoROM";
    case NVML_ERROR_GPU_IS_LOST: return "GPU is lost";
    case NVML_ERROR_RESET_REQUIRED: return "GPU requires restart";
    case NVML_ERROR_OPERATING_SYSTEM: return "The operating system has blocked the request.";
    case NVML_ERROR_LIB_RM_VERSION_MISMATCH: return "RM has detected an NVML/RM version mismatch.";
    case NVML_ERROR_IN_USE: return "In use by another client";
    case NVML_ERROR_MEMORY: return "Insufficient Memory";
    case NVML_ERROR_NO_DATA: return "No data";
    case NVML_ERROR_VGPU_ECC_NOT_SUPPORTED:
        return "The requested vgpu operation is not available on target device, because ECC is enabled";
    case NVML_ERROR_INSUFFICIENT_RESOURCES: return "Ran out of critical resources, other than memory";
    case NVML_ERROR_FREQ_NOT_SUPPORTED: return "The requested frequency is not supported";
    case NVML_ERROR_ARGUMENT_VERSION_MISMATCH: return "Argument version mismatch";
    case NVML_ERROR_DEPRECATED: return "Deprecated";
    case NVML_ERROR_NOT_READY: return "Not Ready";
    case NVML_ERROR_GPU_NOT_FOUND: return "GPU not found";
    case NVML_ERROR_INVALID_STATE: return "Invalid state";
    case NVML_ERROR_RESET_TYPE_NOT_SUPPORTED: return "Reset type not supported";
    default: return "Unknown Error";
    }
}

EXPORT nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length)
{
    return copy_text(FAKE_DRIVER_VERSION, version, length);
}

EXPORT nvmlReturn_t nvmlSystemGetNVMLVersion(char *version, unsigned int length)
{
    return copy_text(FAKE_NVML_VERSION, version, length);
}

EXPORT nvmlReturn_t nvmlSystemGetCudaDriverVersion(int *cudaDriverVersion)
{
    if (!cudaDriverVersion)
        return NVML_ERROR_INVALID_ARGUMENT;
    *cudaDriverVersion = FAKE_CUDA_DRIVER_VERSION;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlSystemGetCudaDriverVersion_v2(int *cudaDriverVersion)
{
    return nvmlSystemGetCudaDriverVersion(cudaDriverVersion);
}

EXPORT nvmlReturn_t nvmlSystemGetProcessName(unsigned int pid, char *name, unsigned int length)
{
    char path[64], comm[256];
    FILE *file;
    size_t n;

    if (!name || !length)
        return NVML_ERROR_INVALID_ARGUMENT;
    snprintf(path, sizeof path, "/proc/%u/comm", pid);
    file = fopen(path, "r");
    if (!file)
        return NVML_ERROR_NOT_FOUND;
    n = fread(comm, 1, sizeof comm - 1, file);
    fclose(file);
    while (n && (comm[n - 1] == '\n' || comm[n - 1] == '\0'))
        n--;
    comm[n] = '\0';
    /* NVML truncates to the buffer it is given */
    snprintf(name, length, "%s", comm);
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *deviceCount)
{
    nvmlReturn_t ret;
    if (!deviceCount)
        return NVML_ERROR_INVALID_ARGUMENT;
    ret = enter(1);
    if (ret != NVML_SUCCESS)
        return ret;
    *deviceCount = (unsigned int)g_machine.ndevices;
    return leave(NVML_SUCCESS);
}

EXPORT nvmlReturn_t nvmlDeviceGetCount(unsigned int *deviceCount)
{
    return nvmlDeviceGetCount_v2(deviceCount);
}

EXPORT nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device)
{
    nvmlReturn_t ret;
    if (!device)
        return NVML_ERROR_INVALID_ARGUMENT;
    ret = enter(0);
    if (ret != NVML_SUCCESS)
        return ret;
    if (index >= g_machine.ndevices)
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    *device = g_machine.devices[index].handle;
    return leave(NVML_SUCCESS);
}

EXPORT nvmlReturn_t nvmlDeviceGetHandleByIndex(unsigned int index, nvmlDevice_t *device)
{
    return nvmlDeviceGetHandleByIndex_v2(index, device);
}

EXPORT nvmlReturn_t nvmlDeviceGetHandleByUUID(const char *uuid, nvmlDevice_t *device)
{
    nvmlReturn_t ret;
    if (!uuid || !device)
        return NVML_ERROR_INVALID_ARGUMENT;
    ret = enter(0);
    if (ret != NVML_SUCCESS)
        return ret;
    for (size_t i = 0; i < g_machine.ndevices; i++)
        if (strcmp(g_machine.devices[i].uuid, uuid) == 0) {
            *device = g_machine.devices[i].handle;
            return leave(NVML_SUCCESS);
        }
    return leave(NVML_ERROR_NOT_FOUND);
}

EXPORT nvmlReturn_t nvmlDeviceGetIndex(nvmlDevice_t device, unsigned int *index)
{
    size_t i;
    nvmlReturn_t ret;
    if (!index)
        return NVML_ERROR_INVALID_ARGUMENT;
    ret = enter_device(device, &i);
    if (ret != NVML_SUCCESS)
        return ret;
    *index = (unsigned int)i;
    return leave(NVML_SUCCESS);
}

EXPORT nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned int length)
{
    size_t i;
    nvmlReturn_t ret = enter_device(device, &i);
    if (ret != NVML_SUCCESS)
        return ret;
    return leave(copy_text(g_machine.devices[i].uuid, uuid, length));
}

EXPORT nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int length)
{
    size_t i;
    nvmlReturn_t ret = enter_device(device, &i);
    if (ret != NVML_SUCCESS)
        return ret;
    return leave(copy_text(g_machine.devices[i].name, name, length));
}

static void memory_of(size_t index, unsigned long long *total, unsigned long long *used,
                      unsigned long long *free_)
{
    *total = g_machine.devices[index].total;
    *used = used_memory(index);
    *free_ = *used < *total ? *total - *used : 0;
}

EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t *memory)
{
    size_t i;
    nvmlReturn_t ret;
    if (!memory)
        return NVML_ERROR_INVALID_ARGUMENT;
    ret = enter_device(device, &i);
    if (ret != NVML_SUCCESS)
        return ret;
    memory_of(i, &memory->total, &memory->used, &memory->free);
    return leave(NVML_SUCCESS);
}

EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t device, nvmlMemory_v2_t *memory)
{
    size_t i;
    nvmlReturn_t ret;
    if (!memory)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (memory->version != nvmlMemory_v2)
        return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    ret = enter_device(device, &i);
    if (ret != NVML_SUCCESS)
        return ret;
    memory->reserved = 0;
    memory_of(i, &memory->total, &memory->used, &memory->free);
    return leave(NVML_SUCCESS);
}

EXPORT nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t device, nvmlUtilization_t *utilization)
{
    size_t i;
    nvmlReturn_t ret;
    if (!utilization)
        return NVML_ERROR_INVALID_ARGUMENT;
    ret = enter_device(device, &i);
    if (ret != NVML_SUCCESS)
        return ret;
    utilization->gpu = 0;
    utilization->memory = 0;
    return leave(NVML_SUCCESS);
}

EXPORT nvmlReturn_t nvmlDeviceGetTemperature(nvmlDevice_t device, int sensorType, unsigned int *temp)
{
    size_t i;
    nvmlReturn_t ret;
    if (!temp)
        return NVML_ERROR_INVALID_ARGUMENT;
    ret = enter_device(device, &i);
    if (ret != NVML_SUCCESS)
        return ret;
    if (sensorType != NVML_TEMPERATURE_GPU)
        return leave(NVML_ERROR_NOT_SUPPORTED);
    *temp = FAKE_TEMPERATURE;
    return leave(NVML_SUCCESS);
}

/*
 * The two-call protocol of nvmlDeviceGet*RunningProcesses: when *infoCount is smaller than
 * the number of processes, *infoCount gets that number and the answer is
 * NVML_ERROR_INSUFFICIENT_SIZE (infos may be NULL); otherwise the records are written,
 * *infoCount gets their number and the answer is NVML_SUCCESS (0 processes, a count of 0
 * and NULL infos included). record_size selects the v1 (16-byte) or v2/v3 (24-byte) record.
 */
static nvmlReturn_t running_processes(nvmlDevice_t device, unsigned int *infoCount, void *infos,
                                      size_t record_size, int graphics)
{
    size_t index, live = 0;
    nvmlReturn_t ret;

    if (!infoCount)
        return NVML_ERROR_INVALID_ARGUMENT;
    ret = enter_device(device, &index);
    if (ret != NVML_SUCCESS)
        return ret;
    if (!graphics)
        for (size_t i = 0; i < g_machine.nprocesses; i++)
            if (g_machine.processes[i].device == index && process_alive(&g_machine.processes[i]))
                live++;
    if (*infoCount < live) {
        *infoCount = (unsigned int)live;
        return leave(NVML_ERROR_INSUFFICIENT_SIZE);
    }
    if (live && !infos)
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    size_t written = 0;
    for (size_t i = 0; i < g_machine.nprocesses && written < live; i++) {
        struct fake_process *p = &g_machine.processes[i];
        if (p->device != index || !process_alive(p))
            continue;
        unsigned long long memory = p->used_known ? p->used : NVML_VALUE_NOT_AVAILABLE_ULL;
        if (record_size == sizeof(nvmlProcessInfo_v1_t)) {
            nvmlProcessInfo_v1_t *r = (nvmlProcessInfo_v1_t *)infos + written;
            r->pid = (unsigned int)p->pid;
            r->usedGpuMemory = memory;
        } else {
            nvmlProcessInfo_v2_t *r = (nvmlProcessInfo_v2_t *)infos + written;
            r->pid = (unsigned int)p->pid;
            r->usedGpuMemory = memory;
            /* not a MIG device */
            r->gpuInstanceId = NVML_VALUE_NOT_AVAILABLE_UINT;
            r->computeInstanceId = NVML_VALUE_NOT_AVAILABLE_UINT;
        }
        written++;
    }
    /* a process can end between the two counts: report only what was written */
    *infoCount = (unsigned int)written;
    return leave(NVML_SUCCESS);
}

EXPORT nvmlReturn_t nvmlDeviceGetComputeRunningProcesses(nvmlDevice_t device, unsigned int *infoCount,
                                                         nvmlProcessInfo_v1_t *infos)
{
    return running_processes(device, infoCount, infos, sizeof *infos, 0);
}

EXPORT nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v2(nvmlDevice_t device, unsigned int *infoCount,
                                                            nvmlProcessInfo_v2_t *infos)
{
    return running_processes(device, infoCount, infos, sizeof *infos, 0);
}

EXPORT nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t device, unsigned int *infoCount,
                                                            nvmlProcessInfo_v2_t *infos)
{
    return running_processes(device, infoCount, infos, sizeof *infos, 0);
}

/* No MPS on the simulated machine: the MPS lists are empty. */
EXPORT nvmlReturn_t nvmlDeviceGetMPSComputeRunningProcesses(nvmlDevice_t device, unsigned int *infoCount,
                                                            nvmlProcessInfo_v1_t *infos)
{
    return running_processes(device, infoCount, infos, sizeof *infos, 1);
}

EXPORT nvmlReturn_t nvmlDeviceGetMPSComputeRunningProcesses_v2(nvmlDevice_t device, unsigned int *infoCount,
                                                               nvmlProcessInfo_v2_t *infos)
{
    return running_processes(device, infoCount, infos, sizeof *infos, 1);
}

EXPORT nvmlReturn_t nvmlDeviceGetMPSComputeRunningProcesses_v3(nvmlDevice_t device, unsigned int *infoCount,
                                                               nvmlProcessInfo_v2_t *infos)
{
    return running_processes(device, infoCount, infos, sizeof *infos, 1);
}

/* No graphics on the simulated machine: the graphics lists are empty. */
EXPORT nvmlReturn_t nvmlDeviceGetGraphicsRunningProcesses(nvmlDevice_t device, unsigned int *infoCount,
                                                          nvmlProcessInfo_v1_t *infos)
{
    return running_processes(device, infoCount, infos, sizeof *infos, 1);
}

EXPORT nvmlReturn_t nvmlDeviceGetGraphicsRunningProcesses_v2(nvmlDevice_t device, unsigned int *infoCount,
                                                             nvmlProcessInfo_v2_t *infos)
{
    return running_processes(device, infoCount, infos, sizeof *infos, 1);
}

EXPORT nvmlReturn_t nvmlDeviceGetGraphicsRunningProcesses_v3(nvmlDevice_t device, unsigned int *infoCount,
                                                             nvmlProcessInfo_v2_t *infos)
{
    return running_processes(device, infoCount, infos, sizeof *infos, 1);
}

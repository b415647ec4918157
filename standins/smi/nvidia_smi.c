/*
 * A stand-in for NVIDIA's nvidia-smi that shows the simulated machine described in
 * GENV_FAKE_MACHINE (read through its flat form: ../common/machine.c; rules in
 * standins/README.md, the same the NVML stand-in and genv's fake backend apply).
 *
 * Supported:
 *   nvidia-smi                                    the classic 79-column table
 *   nvidia-smi -L | --list-gpus
 *   nvidia-smi --query-gpu=FIELDS --format=csv[,noheader][,nounits]
 *   nvidia-smi --query-compute-apps=FIELDS --format=csv[,noheader][,nounits]
 *   -i | --id ID[,ID...]                          index, uuid or PCI bus id; with any of the above
 *   -h | --help, --version
 * Exit status: 0 ok; 2 bad arguments; 6 no devices found (as NVIDIA's); 9 no (valid)
 * description, with NVIDIA's "couldn't communicate with the NVIDIA driver".
 *
 * Compiled, it costs about a millisecond a call: less than NVIDIA's own (10-20 ms).
 */
#define _GNU_SOURCE

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../common/machine.h"

#define DRIVER_VERSION "535.183.01"
#define NVML_VERSION "12.535.183.01"
#define CUDA_VERSION "12.2"
#define TEMPERATURE 30
#define UTILIZATION 0
#define MIB (1024ULL * 1024)

#define DRIVER_FAILED                                                                          \
    "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "           \
    "Make sure that the latest NVIDIA driver is installed and running."
#define BAD_ARGUMENTS "Invalid combination of input arguments. Please run 'nvidia-smi -h' for help."

static const char USAGE[] =
    "nvidia-smi (stand-in for a simulated machine, described by $GENV_FAKE_MACHINE)\n"
    "\n"
    "Usage:\n"
    "    nvidia-smi [-i ID[,ID...]]\n"
    "    nvidia-smi -L\n"
    "    nvidia-smi --query-gpu=FIELD[,FIELD...] --format=csv[,noheader][,nounits] [-i ID]\n"
    "    nvidia-smi --query-compute-apps=FIELD[,FIELD...] --format=csv[,noheader][,nounits] "
    "[-i ID]\n"
    "\n"
    "--query-gpu fields: index, uuid (gpu_uuid), name (gpu_name), memory.total, memory.used,\n"
    "    memory.free, utilization.gpu, temperature.gpu, pci.bus_id (gpu_bus_id), "
    "driver_version,\n"
    "    count\n"
    "--query-compute-apps fields: gpu_uuid, gpu_name, gpu_bus_id, pid, process_name (name),\n"
    "    used_gpu_memory (used_memory)\n";

/* ---- output: one buffer, written at the end ---- */

static char *g_out;
static size_t g_out_len, g_out_cap;

static void out(const char *format, ...) __attribute__((format(printf, 1, 2)));
static void out(const char *format, ...)
{
    va_list args;
    int n;
    for (;;) {
        size_t room = g_out_cap - g_out_len;
        va_start(args, format);
        n = vsnprintf(g_out ? g_out + g_out_len : NULL, g_out ? room : 0, format, args);
        va_end(args);
        if (n < 0)
            return;
        if (g_out && (size_t)n < room) {
            g_out_len += (size_t)n;
            return;
        }
        size_t wanted = g_out_cap ? g_out_cap : 8192;
        while (wanted < g_out_len + (size_t)n + 1)
            wanted *= 2;
        char *bigger = realloc(g_out, wanted);
        if (!bigger) {
            fputs("nvidia-smi: out of memory\n", stderr);
            exit(1);
        }
        g_out = bigger;
        g_out_cap = wanted;
    }
}

static int exit_with(int status, const char *message, int to_stdout)
{
    FILE *stream = to_stdout ? stdout : stderr;
    fputs(message, stream);
    fputc('\n', stream);
    fflush(stream);
    return status;
}

static char g_message[2048];

static int driver_failed(const char *reason)
{
    snprintf(g_message, sizeof g_message, "%s\n(simulated machine: %s)", DRIVER_FAILED, reason);
    return exit_with(9, g_message, 0);
}

static int bad_arguments(const char *reason)
{
    snprintf(g_message, sizeof g_message, "%s\n(%s)", BAD_ARGUMENTS, reason);
    return exit_with(2, g_message, 0);
}

static int no_devices(void)
{
    return exit_with(6, "No devices were found", 1);
}

/* ---- the machine, with the processes that run ---- */

struct shown_process {
    size_t device; /* index */
    unsigned long long pid;
    unsigned long long used;
    int used_known;
};

static struct sim_machine g_machine;
static struct shown_process *g_processes;
static size_t g_nprocesses;
static unsigned long long *g_used; /* by device */

static void bus_id(size_t index, char *out_, size_t cap)
{
    snprintf(out_, cap, "00000000:%02zX:00.0", index + 1);
}

static int load_machine(void)
{
    char reason[1536];
    char *path = sim_path();
    long long written;
    int status;

    if (!path)
        return driver_failed("GENV_FAKE_MACHINE is not set");
    status = sim_load(path, &g_machine, reason, sizeof reason);
    free(path);
    if (status != SIM_OK)
        return driver_failed(reason);
    g_processes = calloc(g_machine.nprocesses ? g_machine.nprocesses : 1, sizeof *g_processes);
    g_used = calloc(g_machine.ndevices ? g_machine.ndevices : 1, sizeof *g_used);
    if (!g_processes || !g_used)
        return driver_failed("out of memory");
    written = sim_written_tick(&g_machine);
    for (size_t i = 0; i < g_machine.nprocesses; i++) {
        const struct sim_process *p = &g_machine.processes[i];
        unsigned long long start;
        /* a process on a device that is not described is ignored, one that ended too */
        if (p->device >= g_machine.ndevices || !sim_read_process(p->pid, &start) ||
            !sim_counts(&g_machine, p, start, written))
            continue;
        g_processes[g_nprocesses++] = (struct shown_process){
            (size_t)p->device, p->pid, p->used, p->used_known};
        if (p->used_known)
            g_used[p->device] += p->used;
    }
    return 0;
}

static void process_name(unsigned long long pid, char *name, size_t cap)
{
    char path[48];
    ssize_t n;
    int fd;
    snprintf(path, sizeof path, "/proc/%llu/comm", pid);
    fd = open(path, O_RDONLY | O_CLOEXEC);
    n = fd < 0 ? -1 : read(fd, name, cap - 1);
    if (fd >= 0)
        close(fd);
    if (n < 0) {
        snprintf(name, cap, "[Not Found]");
        return;
    }
    while (n && (name[n - 1] == '\n' || name[n - 1] == '\0'))
        n--;
    name[n] = '\0';
}

/* The devices named by -i (in the machine's order), as flags in chosen; all when ids is NULL. */
static int select_devices(const char *ids, unsigned char *chosen)
{
    size_t n = g_machine.ndevices;
    if (!ids) {
        memset(chosen, 1, n);
        return 0;
    }
    memset(chosen, 0, n);
    const char *item = ids;
    for (;;) {
        const char *comma = strchr(item, ',');
        size_t len = comma ? (size_t)(comma - item) : strlen(item);
        while (len && (*item == ' ' || *item == '\t'))
            item++, len--;
        while (len && (item[len - 1] == ' ' || item[len - 1] == '\t'))
            len--;
        int found = 0;
        for (size_t i = 0; i < n && !found; i++) {
            char index[24], bus[40];
            snprintf(index, sizeof index, "%zu", i);
            bus_id(i, bus, sizeof bus);
            const char *names[] = {index, g_machine.devices[i].uuid, bus};
            for (int k = 0; k < 3; k++)
                if (strlen(names[k]) == len && memcmp(names[k], item, len) == 0) {
                    chosen[i] = 1;
                    found = 1;
                    break;
                }
        }
        if (!found)
            return -1;
        if (!comma)
            return 0;
        item = comma + 1;
    }
}

/* ---- CSV queries ---- */

enum gpu_field {
    G_INDEX, G_UUID, G_NAME, G_BUS_ID, G_DRIVER_VERSION, G_COUNT, G_MEMORY_TOTAL, G_MEMORY_USED,
    G_MEMORY_FREE, G_UTILIZATION, G_TEMPERATURE
};
enum app_field { A_GPU_UUID, A_GPU_NAME, A_GPU_BUS_ID, A_PID, A_PROCESS_NAME, A_USED_MEMORY };

struct field {
    const char *name;
    const char *alias;
    const char *unit;
};

static const struct field GPU_FIELDS[] = {
    [G_INDEX] = {"index", NULL, NULL},
    [G_UUID] = {"uuid", "gpu_uuid", NULL},
    [G_NAME] = {"name", "gpu_name", NULL},
    [G_BUS_ID] = {"pci.bus_id", "gpu_bus_id", NULL},
    [G_DRIVER_VERSION] = {"driver_version", NULL, NULL},
    [G_COUNT] = {"count", NULL, NULL},
    [G_MEMORY_TOTAL] = {"memory.total", NULL, "MiB"},
    [G_MEMORY_USED] = {"memory.used", NULL, "MiB"},
    [G_MEMORY_FREE] = {"memory.free", NULL, "MiB"},
    [G_UTILIZATION] = {"utilization.gpu", NULL, "%"},
    [G_TEMPERATURE] = {"temperature.gpu", NULL, NULL},
};

static const struct field APP_FIELDS[] = {
    [A_GPU_UUID] = {"gpu_uuid", NULL, NULL},
    [A_GPU_NAME] = {"gpu_name", NULL, NULL},
    [A_GPU_BUS_ID] = {"gpu_bus_id", NULL, NULL},
    [A_PID] = {"pid", NULL, NULL},
    [A_PROCESS_NAME] = {"process_name", "name", NULL},
    [A_USED_MEMORY] = {"used_gpu_memory", "used_memory", "MiB"},
};

#define MAX_FIELDS 64

/* Field names (comma-separated, any case, blanks around) into indices of known[]. */
static int parse_fields(const char *text, const struct field *known, size_t nknown, int *fields,
                        size_t *nfields)
{
    const char *item = text;
    *nfields = 0;
    for (;;) {
        const char *comma = strchr(item, ',');
        size_t len = comma ? (size_t)(comma - item) : strlen(item);
        char name[64];
        size_t k;
        while (len && (*item == ' ' || *item == '\t'))
            item++, len--;
        while (len && (item[len - 1] == ' ' || item[len - 1] == '\t'))
            len--;
        for (k = 0; k < len && k < sizeof name - 1; k++)
            name[k] = (char)(item[k] >= 'A' && item[k] <= 'Z' ? item[k] + 32 : item[k]);
        name[k] = '\0';
        for (k = 0; k < nknown; k++)
            if (len < sizeof name && (strcmp(name, known[k].name) == 0 ||
                                      (known[k].alias && strcmp(name, known[k].alias) == 0)))
                break;
        if (k == nknown || *nfields == MAX_FIELDS) {
            snprintf(g_message, sizeof g_message,
                     "Field \"%.*s\" is not a valid field to query.\n\n%s",
                     (int)(len > 200 ? 200 : len), item, BAD_ARGUMENTS);
            return exit_with(2, g_message, 0);
        }
        fields[(*nfields)++] = (int)k;
        if (!comma)
            return 0;
        item = comma + 1;
    }
}

static int parse_format(const char *text, int *header, int *units)
{
    const char *item = text;
    int csv = 0;
    *header = *units = 1;
    for (;;) {
        const char *comma = strchr(item, ',');
        size_t len = comma ? (size_t)(comma - item) : strlen(item);
        char option[16];
        size_t k;
        while (len && (*item == ' ' || *item == '\t'))
            item++, len--;
        while (len && (item[len - 1] == ' ' || item[len - 1] == '\t'))
            len--;
        for (k = 0; k < len && k < sizeof option - 1; k++)
            option[k] = (char)(item[k] >= 'A' && item[k] <= 'Z' ? item[k] + 32 : item[k]);
        option[k] = '\0';
        if (len < sizeof option && strcmp(option, "csv") == 0)
            csv = 1;
        else if (len < sizeof option && strcmp(option, "noheader") == 0)
            *header = 0;
        else if (len < sizeof option && strcmp(option, "nounits") == 0)
            *units = 0;
        else
            csv = -1000;
        if (!comma)
            break;
        item = comma + 1;
    }
    if (csv <= 0) {
        char reason[256];
        snprintf(reason, sizeof reason, "--format takes csv[,noheader][,nounits], not '%.200s'",
                 text);
        return bad_arguments(reason);
    }
    return 0;
}

static void csv_header(const struct field *known, const int *fields, size_t nfields)
{
    for (size_t i = 0; i < nfields; i++) {
        const struct field *f = &known[fields[i]];
        if (f->unit)
            out("%s%s [%s]", i ? ", " : "", f->name, f->unit);
        else
            out("%s%s", i ? ", " : "", f->name);
    }
    out("\n");
}

/* One value: with its unit after it when units are shown ("[N/A]" has none). */
static void csv_value(size_t i, const char *value, const char *unit, int units)
{
    if (units && unit && value[0] != '[')
        out("%s%s %s", i ? ", " : "", value, unit);
    else
        out("%s%s", i ? ", " : "", value);
}

static void query_gpu(const unsigned char *chosen, const int *fields, size_t nfields, int header,
                      int units)
{
    size_t shown = 0;
    for (size_t d = 0; d < g_machine.ndevices; d++)
        shown += chosen[d];
    if (header)
        csv_header(GPU_FIELDS, fields, nfields);
    for (size_t d = 0; d < g_machine.ndevices; d++) {
        const struct sim_device *device = &g_machine.devices[d];
        unsigned long long used = g_used[d];
        if (!chosen[d])
            continue;
        for (size_t i = 0; i < nfields; i++) {
            char value[128];
            switch (fields[i]) {
            case G_INDEX: snprintf(value, sizeof value, "%zu", d); break;
            case G_UUID: snprintf(value, sizeof value, "%s", device->uuid); break;
            case G_NAME: snprintf(value, sizeof value, "%s", device->name); break;
            case G_BUS_ID: bus_id(d, value, sizeof value); break;
            case G_DRIVER_VERSION: snprintf(value, sizeof value, "%s", DRIVER_VERSION); break;
            case G_COUNT: snprintf(value, sizeof value, "%zu", shown); break;
            case G_MEMORY_TOTAL: snprintf(value, sizeof value, "%llu", device->total / MIB); break;
            case G_MEMORY_USED: snprintf(value, sizeof value, "%llu", used / MIB); break;
            case G_MEMORY_FREE:
                snprintf(value, sizeof value, "%llu",
                         (used < device->total ? device->total - used : 0) / MIB);
                break;
            case G_UTILIZATION: snprintf(value, sizeof value, "%d", UTILIZATION); break;
            default: snprintf(value, sizeof value, "%d", TEMPERATURE); break;
            }
            csv_value(i, value, GPU_FIELDS[fields[i]].unit, units);
        }
        out("\n");
    }
}

static void query_apps(const unsigned char *chosen, const int *fields, size_t nfields,
                       int header, int units)
{
    if (header)
        csv_header(APP_FIELDS, fields, nfields);
    for (size_t d = 0; d < g_machine.ndevices; d++) {
        if (!chosen[d])
            continue;
        for (size_t k = 0; k < g_nprocesses; k++) {
            const struct shown_process *p = &g_processes[k];
            const struct sim_device *device = &g_machine.devices[d];
            if (p->device != d)
                continue;
            for (size_t i = 0; i < nfields; i++) {
                char value[128];
                switch (fields[i]) {
                case A_GPU_UUID: snprintf(value, sizeof value, "%s", device->uuid); break;
                case A_GPU_NAME: snprintf(value, sizeof value, "%s", device->name); break;
                case A_GPU_BUS_ID: bus_id(d, value, sizeof value); break;
                case A_PID: snprintf(value, sizeof value, "%llu", p->pid); break;
                case A_PROCESS_NAME: process_name(p->pid, value, sizeof value); break;
                default:
                    if (p->used_known)
                        snprintf(value, sizeof value, "%llu", p->used / MIB);
                    else
                        snprintf(value, sizeof value, "[N/A]");
                    break;
                }
                csv_value(i, value, APP_FIELDS[fields[i]].unit, units);
            }
            out("\n");
        }
    }
}

/* ---- the table ---- */

static const char LINE[] =
    "+-----------------------------------------------------------------------------+";
static const char SEPARATOR[] =
    "+-------------------------------+----------------------+----------------------+";

/* How many characters (not bytes) a UTF-8 text has, as Python's len() counts them. */
static size_t characters(const char *text)
{
    size_t n = 0;
    for (; *text; text++)
        if (((unsigned char)*text & 0xC0) != 0x80)
            n++;
    return n;
}

/* The last n characters of text. */
static const char *last_characters(const char *text, size_t n)
{
    const char *p = text + strlen(text);
    while (p > text && n) {
        p--;
        if (((unsigned char)*p & 0xC0) != 0x80)
            n--;
    }
    return p;
}

/* text right-aligned in width columns: a long value eats its leading blanks, then is cut */
static void fit(const char *text, size_t width, char *result)
{
    size_t len = strlen(text);
    if (len > width) {
        while (*text == ' ')
            text++, len--;
        if (len > width)
            len = width;
    }
    memset(result, ' ', width - len);
    memcpy(result + width - len, text, len);
    result[width] = '\0';
}

static void table(const unsigned char *chosen)
{
    char stamp[64];
    time_t now = time(NULL);
    struct tm local;
    size_t last = 0, shown = 0;

    localtime_r(&now, &local);
    strftime(stamp, sizeof stamp, "%a %b %e %H:%M:%S %Y", &local);
    out("%s       \n%s\n", stamp, LINE);
    {
        char head[128];
        snprintf(head, sizeof head, "| NVIDIA-SMI %-14sDriver Version: %-13sCUDA Version: %s",
                 DRIVER_VERSION, DRIVER_VERSION, CUDA_VERSION);
        out("%-78s|\n", head);
    }
    out("|-------------------------------+----------------------+----------------------+\n"
        "| GPU  Name        Persistence-M| Bus-Id        Disp.A | Volatile Uncorr. ECC |\n"
        "| Fan  Temp  Perf  Pwr:Usage/Cap|         Memory-Usage | GPU-Util  Compute M. |\n"
        "|                               |                      |               MIG M. |\n"
        "|===============================+======================+======================|\n");
    for (size_t d = 0; d < g_machine.ndevices; d++)
        if (chosen[d])
            last = d, shown++;
    for (size_t d = 0; d < g_machine.ndevices; d++) {
        const struct sim_device *device = &g_machine.devices[d];
        char name[SIM_TEXT], bus[40], memory[64], fitted[32];
        if (!chosen[d])
            continue;
        /* cut by characters, not bytes */
        size_t chars = characters(device->name), cut = 0;
        if (chars <= 18) {
            snprintf(name, sizeof name, "%s", device->name);
        } else {
            size_t seen = 0;
            for (cut = 0; device->name[cut]; cut++) {
                if (((unsigned char)device->name[cut] & 0xC0) != 0x80 && seen++ == 15)
                    break;
            }
            snprintf(name, sizeof name, "%.*s...", (int)cut, device->name);
            chars = 18;
        }
        bus_id(d, bus, sizeof bus);
        out("| %3zu  %s%*s  Off  | %s Off |%21s |\n", d, name, (int)(18 - (chars > 18 ? 18 : chars)),
            "", bus, "N/A");
        snprintf(memory, sizeof memory, " %6lluMiB / %5lluMiB ", g_used[d] / MIB,
                 device->total / MIB);
        fit(memory, 22, fitted);
        out("| N/A  %3dC    P0    N/A /  N/A |%s|%7d%%      Default |\n", TEMPERATURE, fitted,
            UTILIZATION);
        out("|                               |                      |                  N/A |\n");
        if (d != last)
            out("%s\n", SEPARATOR);
    }
    out("%s\n%79s\n%s\n", SEPARATOR, "", LINE);
    out("| Processes:%66s|\n", "");
    out("|  GPU   GI   CI        PID   Type   Process name                  GPU Memory |\n"
        "|        ID   ID                                                   Usage      |\n"
        "|=============================================================================|\n");
    int any = 0;
    for (size_t d = 0; d < g_machine.ndevices; d++) {
        if (!chosen[d])
            continue;
        for (size_t k = 0; k < g_nprocesses; k++) {
            const struct shown_process *p = &g_processes[k];
            char comm[64], shown_name[64], memory[32];
            if (p->device != d)
                continue;
            any = 1;
            process_name(p->pid, comm, sizeof comm);
            if (characters(comm) > 28)
                snprintf(shown_name, sizeof shown_name, "...%s", last_characters(comm, 25));
            else
                snprintf(shown_name, sizeof shown_name, "%s", comm);
            if (p->used_known)
                snprintf(memory, sizeof memory, "%9lluMiB", p->used / MIB);
            else
                snprintf(memory, sizeof memory, "%9s   ", "N/A");
            out("|  %3zu   N/A  N/A  %8llu      C   %s%*s%s |\n", d, p->pid, shown_name,
                (int)(28 - (characters(shown_name) > 28 ? 28 : characters(shown_name))), "",
                memory);
        }
    }
    (void)shown;
    if (!any)
        out("|  No running processes found%49s|\n", "");
    out("%s\n", LINE);
}

/* ---- after the table: let a reader that reads while we run get all of it ---- */

static void linger(int fd)
{
    const char *text = getenv("GENV_FAKE_SMI_LINGER_MS");
    long delay_ms = 10;
    struct stat st;
    if (text) {
        char *end;
        long value = strtol(text, &end, 10);
        delay_ms = (*text && !*end) ? value : 10;
    }
    if (delay_ms <= 0 || fstat(fd, &st) != 0 || !S_ISFIFO(st.st_mode))
        return;
    if (delay_ms > 10000)
        delay_ms = 10000;
    struct timespec start, now, tick = {0, 1000000};
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (;;) {
        int unread = 0;
        if (ioctl(fd, FIONREAD, &unread) != 0 || unread == 0)
            break;
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (now.tv_sec - start.tv_sec >= 2)
            break;
        nanosleep(&tick, NULL);
    }
    struct timespec pause = {delay_ms / 1000, (delay_ms % 1000) * 1000000};
    nanosleep(&pause, NULL);
}

/* ---- command line ---- */

struct options {
    const char *query_gpu, *query_apps, *format, *id;
    int list, help, version;
};

static int set_value(const char **slot, const char *name, const char *value)
{
    if (*slot) {
        char reason[128];
        snprintf(reason, sizeof reason, "%s given twice", name);
        return bad_arguments(reason);
    }
    *slot = value;
    return 0;
}

static int parse_arguments(int argc, char **argv, struct options *o)
{
    memset(o, 0, sizeof *o);
    for (int i = 1; i < argc; i++) {
        const char *argument = argv[i], *value = NULL;
        char name[32];
        const char *eq = strchr(argument, '=');
        if (strncmp(argument, "--", 2) == 0 && eq) {
            size_t len = (size_t)(eq - argument);
            if (len >= sizeof name)
                len = sizeof name - 1;
            memcpy(name, argument, len);
            name[len] = '\0';
            value = eq + 1;
        } else if (strncmp(argument, "-i", 2) == 0 && argument[2] && argument[1] != '-') {
            strcpy(name, "-i");
            value = argument + 2;
            while (*value == '=')
                value++;
        } else {
            snprintf(name, sizeof name, "%.31s", argument);
        }
        const char **slot = NULL;
        if (!strcmp(name, "--query-gpu"))
            slot = &o->query_gpu;
        else if (!strcmp(name, "--query-compute-apps"))
            slot = &o->query_apps;
        else if (!strcmp(name, "--format"))
            slot = &o->format;
        else if (!strcmp(name, "--id") || !strcmp(name, "-i"))
            slot = &o->id;
        if (slot) {
            if (!value) {
                if (i + 1 >= argc) {
                    char reason[64];
                    snprintf(reason, sizeof reason, "%s needs a value", name);
                    return bad_arguments(reason);
                }
                value = argv[++i];
            }
            int status = set_value(slot, !strcmp(name, "-i") ? "--id" : name, value);
            if (status)
                return status;
            continue;
        }
        int *flag = NULL;
        if (!value && (!strcmp(name, "-L") || !strcmp(name, "--list-gpus")))
            flag = &o->list;
        else if (!value && (!strcmp(name, "-h") || !strcmp(name, "--help")))
            flag = &o->help;
        else if (!value && !strcmp(name, "--version"))
            flag = &o->version;
        if (!flag) {
            char reason[300];
            snprintf(reason, sizeof reason, "unknown argument '%.200s'", argument);
            return bad_arguments(reason);
        }
        if (*flag)
            return bad_arguments("an option given twice");
        *flag = 1;
    }
    return 0;
}

static int run(const struct options *o)
{
    int fields[MAX_FIELDS], header = 1, units = 1, status;
    size_t nfields = 0;
    unsigned char *chosen;

    if (o->help) {
        out("%s", USAGE);
        return 0;
    }
    if (o->version) {
        out("NVIDIA-SMI version  : %s\nNVML version        : %s\nDRIVER version      : %s\n"
            "CUDA Version        : %s\n", DRIVER_VERSION, NVML_VERSION, DRIVER_VERSION,
            CUDA_VERSION);
        return 0;
    }
    int modes = !!o->query_gpu + !!o->query_apps + !!o->list;
    if (modes > 1)
        return bad_arguments("--query-gpu, --query-compute-apps and --list-gpus cannot be "
                             "combined");
    const char *query = o->query_gpu ? "--query-gpu" : o->query_apps ? "--query-compute-apps" : 0;
    if (query && !o->format) {
        char reason[96];
        snprintf(reason, sizeof reason, "\"--format\" must be given with %s", query);
        return bad_arguments(reason);
    }
    if (o->format && !query)
        return bad_arguments("--format is only for --query-gpu and --query-compute-apps");
    if (query) {
        if ((status = parse_format(o->format, &header, &units)))
            return status;
        if (o->query_gpu)
            status = parse_fields(o->query_gpu, GPU_FIELDS, sizeof GPU_FIELDS / sizeof *GPU_FIELDS,
                                  fields, &nfields);
        else
            status = parse_fields(o->query_apps, APP_FIELDS,
                                  sizeof APP_FIELDS / sizeof *APP_FIELDS, fields, &nfields);
        if (status)
            return status;
    }
    if ((status = load_machine()))
        return status;
    if (!g_machine.ndevices)
        return no_devices();
    chosen = calloc(g_machine.ndevices, 1);
    if (!chosen)
        return driver_failed("out of memory");
    if (select_devices(o->id, chosen))
        return no_devices();
    if (o->list) {
        for (size_t d = 0; d < g_machine.ndevices; d++)
            if (chosen[d])
                out("GPU %zu: %s (UUID: %s)\n", d, g_machine.devices[d].name,
                    g_machine.devices[d].uuid);
    } else if (o->query_gpu) {
        query_gpu(chosen, fields, nfields, header, units);
    } else if (o->query_apps) {
        query_apps(chosen, fields, nfields, header, units);
    } else {
        table(chosen);
    }
    free(chosen);
    return 0;
}

int main(int argc, char **argv)
{
    struct options options;
    int status;

    signal(SIGPIPE, SIG_IGN); /* a reader gone away (`nvidia-smi | head -1`) is no error */
    status = parse_arguments(argc, argv, &options);
    if (!status)
        status = run(&options);
    if (status)
        return status;
    for (size_t done = 0; done < g_out_len;) {
        ssize_t n = write(1, g_out + done, g_out_len - done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return 0; /* EPIPE and the like: quietly, as NVIDIA's does */
        done += (size_t)n;
    }
    if (!options.query_gpu && !options.query_apps && !options.list && !options.help &&
        !options.version)
        linger(1);
    return 0;
}

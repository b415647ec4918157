/*
 * A stand-in for NVIDIA's libnvidia-ml.so.1 that presents the simulated machine.
 *
 * The machine is the one described in GENV_FAKE_MACHINE; this library reads its flat form
 * (PATH.flat, written beside it by genv's writer; common/machine.c), so that genv's own
 * parser (src/genv/backends/machine_file.py) is the only reader of the JSON and every view
 * of the machine agrees. standins/README.md has the rules.
 *
 * The description is read again when its flat file changes (checked on every call: one
 * stat), and on every nvmlDeviceGetCount the JSON is checked too (edited by hand since its
 * flat form was written: an error). So devices can appear and disappear while a program
 * runs. A handle stands for a uuid: when that uuid leaves the description, calls on the
 * handle answer NVML_ERROR_GPU_IS_LOST; when it comes back the handle works again.
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
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "../common/machine.h"

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

/* A handle: stands for one uuid, lives as long as the process (never freed). */
struct nvmlDevice_st {
    char uuid[NVML_DEVICE_UUID_V2_BUFFER_SIZE];
    struct nvmlDevice_st *next;
};

/* Whether an entry counts, found once per pass (see process_counts). */
struct entry_state {
    unsigned long long generation;
    int counts;
};

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned int g_init_count;
static char *g_path;
static struct sim_machine g_machine;
static int g_loaded;
static nvmlDevice_t *g_device_handles; /* by index, for g_machine */
static struct entry_state *g_entries;  /* by process entry, for g_machine */
static long long g_written;            /* sim_written_tick of g_machine, per pass */
static struct nvmlDevice_st *g_handles;

static void debug(const char *what, const char *detail)
{
    const char *flag = getenv("GENV_FAKE_NVML_DEBUG");
    if (flag && *flag && strcmp(flag, "0") != 0)
        fprintf(stderr, "fake NVML: %s%s%s\n", what, detail ? ": " : "", detail ? detail : "");
}

static void watch_new_generation(void);
static void watch_close(void);

/* ======================================================================================
 * State: the description, read again when it changes, and the handles.
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

static void forget_machine(void)
{
    sim_free(&g_machine);
    free(g_device_handles);
    free(g_entries);
    g_device_handles = NULL;
    g_entries = NULL;
    g_loaded = 0;
}

/* Reads the description into g_machine. Returns an NVML code. */
static nvmlReturn_t load(void)
{
    char reason[1024];
    struct sim_machine m;
    nvmlDevice_t *handles;
    struct entry_state *entries;
    int status = sim_load(g_path, &m, reason, sizeof reason);

    if (status != SIM_OK) {
        debug("cannot read the description", reason);
        if (status == SIM_NO_MEMORY)
            return NVML_ERROR_MEMORY;
        return status == SIM_NO_MACHINE ? NVML_ERROR_DRIVER_NOT_LOADED : NVML_ERROR_UNKNOWN;
    }
    handles = calloc(m.ndevices ? m.ndevices : 1, sizeof *handles);
    entries = calloc(m.nprocesses ? m.nprocesses : 1, sizeof *entries);
    if (!handles || !entries) {
        free(handles);
        free(entries);
        sim_free(&m);
        return NVML_ERROR_MEMORY;
    }
    for (size_t i = 0; i < m.ndevices; i++) {
        handles[i] = handle_for(m.devices[i].uuid);
        if (!handles[i]) {
            free(handles);
            free(entries);
            sim_free(&m);
            return NVML_ERROR_MEMORY;
        }
    }
    forget_machine();
    g_machine = m;
    g_device_handles = handles;
    g_entries = entries;
    g_loaded = 1;
    g_written = sim_written_tick(&g_machine);
    return NVML_SUCCESS;
}

/* The files as they were when reading them last failed, and the answer then: the same
 * files give the same answer at once (a stale flat file would be looked at for 0.1 s). */
static struct {
    int valid;
    struct sim_files files;
    nvmlReturn_t code;
} g_failure;

/* Makes g_machine current: read again when its flat file changed, or (pass) its JSON. */
static nvmlReturn_t refresh(int pass)
{
    struct sim_files now;
    nvmlReturn_t ret;
    if (g_loaded && sim_flat_unchanged(g_path, &g_machine) &&
        (!pass || sim_json_unchanged(g_path, &g_machine)))
        return NVML_SUCCESS;
    sim_files_now(g_path, &now);
    if (g_failure.valid && sim_files_same(&now, &g_failure.files))
        return g_failure.code;
    ret = load();
    g_failure.valid = ret != NVML_SUCCESS;
    g_failure.files = now;
    g_failure.code = ret;
    return ret;
}

/* Locks, checks init, refreshes. On success the caller holds g_lock. */
static nvmlReturn_t enter(int pass)
{
    nvmlReturn_t ret;
    pthread_mutex_lock(&g_lock);
    if (!g_init_count) {
        pthread_mutex_unlock(&g_lock);
        return NVML_ERROR_UNINITIALIZED;
    }
    ret = refresh(pass);
    if (ret != NVML_SUCCESS) {
        pthread_mutex_unlock(&g_lock);
        return ret;
    }
    if (pass) {
        watch_new_generation();
        g_written = sim_written_tick(&g_machine);
    }
    return NVML_SUCCESS;
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
        if (g_device_handles[i] == handle) {
            *index = i;
            return NVML_SUCCESS;
        }
    return leave(NVML_ERROR_GPU_IS_LOST);
}

/* ======================================================================================
 * Which listed processes run. A real driver knows its processes without reading /proc; so
 * that the stand-in's own cost does not swamp what a benchmark of its callers measures, it
 * decides once per pass (a pass begins at each nvmlDeviceGetCount, which is how every
 * reader begins one), and a process found running is then followed through a pidfd
 * (readable once it exits) in one epoll set, so that one epoll_wait() per pass tells which of
 * them exited, at a cost that follows the number that exited (a pidfd is close-on-exec). A pidfd
 * names one process, never a later one with the same pid, so its start, read once, stays
 * true. Processes nobody asked about during a pass are let go.
 * ====================================================================================== */

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif

struct watch {
    unsigned long long pid; /* 0: empty slot */
    unsigned long long start;
    int fd;
    unsigned long long seen; /* the last generation it was asked about */
};

static unsigned long long g_generation = 1;
static struct watch *g_watch;
static size_t g_watch_capacity, g_watch_count;
static int g_epoll = -1; /* every pidfd of g_watch, readable once its process exits */

static struct watch *watch_slot(struct watch *table, size_t capacity, unsigned long long pid)
{
    size_t i = (size_t)(pid * 2654435761ULL) & (capacity - 1);
    while (table[i].pid && table[i].pid != pid)
        i = (i + 1) & (capacity - 1);
    return &table[i];
}

/* Start a generation: drop the processes that exited (one epoll_wait tells which: its cost
 * follows the number that exited, as a driver's does, not the number followed) or that
 * nobody asked about. */
static void watch_new_generation(void)
{
    size_t kept = 0, capacity = 64, dropped = 0;
    struct watch *table;
    struct epoll_event ready[256];
    int n, progress;

    g_generation++;
    if (!g_watch_count)
        return;
    do {
        n = epoll_wait(g_epoll, ready, (int)(sizeof ready / sizeof *ready), 0);
        if (n < 0) {
            watch_close(); /* cannot tell: follow them again from the next pass */
            return;
        }
        progress = 0;
        for (int i = 0; i < n; i++) {
            struct watch *w = watch_slot(g_watch, g_watch_capacity, ready[i].data.u64);
            if (w->pid && w->fd >= 0) {
                close(w->fd); /* which also takes it out of the epoll set */
                w->fd = -1;
                dropped++;
                progress = 1;
            }
        }
    } while (n == (int)(sizeof ready / sizeof *ready) && progress);
    for (size_t i = 0; i < g_watch_capacity; i++) {
        struct watch *w = &g_watch[i];
        if (w->pid && w->fd >= 0 && w->seen + 1 < g_generation) {
            close(w->fd);
            w->fd = -1;
            dropped++;
        }
    }
    if (!dropped)
        return;
    while (capacity < 4 * g_watch_count)
        capacity *= 2;
    table = calloc(capacity, sizeof *table);
    if (!table) {
        watch_close();
        return;
    }
    for (size_t i = 0; i < g_watch_capacity; i++) {
        struct watch *w = &g_watch[i];
        if (!w->pid || w->fd < 0)
            continue;
        *watch_slot(table, capacity, w->pid) = *w;
        kept++;
    }
    free(g_watch);
    g_watch = table;
    g_watch_capacity = capacity;
    g_watch_count = kept;
}

/* Whether pid runs, and its start; followed from now on through a pidfd when it does. */
static int watch_find(unsigned long long pid, unsigned long long *start)
{
    int fd, running;
    struct watch *slot;

    if (g_watch) {
        slot = watch_slot(g_watch, g_watch_capacity, pid);
        if (slot->pid) {
            slot->seen = g_generation; /* its pidfd was not readable when this pass began */
            *start = slot->start;
            return 1;
        }
    }
    if (!g_watch || 4 * (g_watch_count + 1) > g_watch_capacity) {
        size_t capacity = g_watch_capacity ? g_watch_capacity * 2 : 64;
        struct watch *table = calloc(capacity, sizeof *table);
        if (!table)
            return sim_read_process(pid, start); /* no room: the slow way every time */
        for (size_t i = 0; i < g_watch_capacity; i++)
            if (g_watch[i].pid)
                *watch_slot(table, capacity, g_watch[i].pid) = g_watch[i];
        free(g_watch);
        g_watch = table;
        g_watch_capacity = capacity;
    }
    /* the pidfd first, then the start: should the pid be reused in between, the pidfd
     * names the process that exited, and is dropped at the next pass */
    if (g_epoll < 0)
        g_epoll = epoll_create1(EPOLL_CLOEXEC);
    fd = pid && pid <= INT_MAX && g_epoll >= 0
             ? (int)syscall(SYS_pidfd_open, (pid_t)pid, 0)
             : -1;
    running = sim_read_process(pid, start);
    if (fd < 0)
        return running; /* no pidfds (old kernel, no descriptors left): the slow way */
    if (!running) {
        close(fd);
        return 0;
    }
    {
        struct epoll_event event = {.events = EPOLLIN};
        event.data.u64 = pid;
        if (epoll_ctl(g_epoll, EPOLL_CTL_ADD, fd, &event) < 0) {
            close(fd);
            return running; /* not followed: the slow way next pass */
        }
    }
    slot = watch_slot(g_watch, g_watch_capacity, pid);
    slot->pid = pid;
    slot->start = *start;
    slot->fd = fd;
    slot->seen = g_generation;
    g_watch_count++;
    return 1;
}

static void watch_close(void)
{
    for (size_t i = 0; i < g_watch_capacity; i++)
        if (g_watch[i].pid && g_watch[i].fd >= 0)
            close(g_watch[i].fd);
    free(g_watch);
    g_watch = NULL;
    g_watch_capacity = g_watch_count = 0;
}

/* Whether process entry i stands for a process that runs (the rule of sim_counts). */
static int process_counts(size_t i)
{
    struct entry_state *state = &g_entries[i];
    if (state->generation != g_generation) {
        const struct sim_process *p = &g_machine.processes[i];
        unsigned long long start = 0;
        state->counts = watch_find(p->pid, &start) && sim_counts(&g_machine, p, start, g_written);
        state->generation = g_generation;
    }
    return state->counts;
}

static unsigned long long used_memory(size_t index)
{
    unsigned long long used = 0;
    for (size_t i = 0; i < g_machine.nprocesses; i++) {
        const struct sim_process *p = &g_machine.processes[i];
        if (p->device == index && p->used_known && process_counts(i))
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
    (void)flags;

    pthread_mutex_lock(&g_lock);
    if (g_init_count) {
        /* NVML counts nested inits; each needs its shutdown */
        g_init_count++;
        return leave(NVML_SUCCESS);
    }
    g_failure.valid = 0;
    g_path = sim_path();
    if (!g_path) {
        debug("GENV_FAKE_MACHINE is not set", NULL);
        return leave(NVML_ERROR_DRIVER_NOT_LOADED);
    }
    ret = load();
    if (ret != NVML_SUCCESS) {
        free(g_path);
        g_path = NULL;
        return leave(ret == NVML_ERROR_MEMORY ? ret : NVML_ERROR_DRIVER_NOT_LOADED);
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
        forget_machine();
        free(g_path);
        g_path = NULL;
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
    *device = g_device_handles[index];
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
            *device = g_device_handles[i];
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
 * and NULL infos included). v1 selects the original 16-byte record, else nvml.h's 24-byte
 * nvmlProcessInfo_t (the _v2 and _v3 forms). The simulated machine has no MPS and no
 * graphics: those lists are empty.
 */
static nvmlReturn_t running_processes(nvmlDevice_t device, unsigned int *infoCount, void *infos,
                                      int v1, int compute)
{
    size_t index, live = 0, written = 0;
    nvmlReturn_t ret;

    if (!infoCount)
        return NVML_ERROR_INVALID_ARGUMENT;
    ret = enter_device(device, &index);
    if (ret != NVML_SUCCESS)
        return ret;
    if (compute)
        for (size_t i = 0; i < g_machine.nprocesses; i++)
            if (g_machine.processes[i].device == index && process_counts(i))
                live++;
    if (*infoCount < live) {
        *infoCount = (unsigned int)live;
        return leave(NVML_ERROR_INSUFFICIENT_SIZE);
    }
    if (live && !infos)
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    for (size_t i = 0; i < g_machine.nprocesses && written < live; i++) {
        const struct sim_process *p = &g_machine.processes[i];
        unsigned long long memory;
        if (p->device != index || !process_counts(i))
            continue;
        memory = p->used_known ? p->used : NVML_VALUE_NOT_AVAILABLE_ULL;
        if (v1) {
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
    *infoCount = (unsigned int)written;
    return leave(NVML_SUCCESS);
}

/* The nine entry points: {Compute, MPSCompute, Graphics} x {plain (v1 record), _v2, _v3}. */
#define PROCESS_LIST(kind, suffix, record, v1, compute)                                        \
    EXPORT nvmlReturn_t nvmlDeviceGet##kind##RunningProcesses##suffix(                         \
        nvmlDevice_t device, unsigned int *infoCount, record *infos)                           \
    {                                                                                          \
        return running_processes(device, infoCount, infos, v1, compute);                       \
    }
#define PROCESS_LISTS(kind, compute)                                                           \
    PROCESS_LIST(kind, , nvmlProcessInfo_v1_t, 1, compute)                                     \
    PROCESS_LIST(kind, _v2, nvmlProcessInfo_v2_t, 0, compute)                                  \
    PROCESS_LIST(kind, _v3, nvmlProcessInfo_v2_t, 0, compute)

PROCESS_LISTS(Compute, 1)
PROCESS_LISTS(MPSCompute, 0)
PROCESS_LISTS(Graphics, 0)

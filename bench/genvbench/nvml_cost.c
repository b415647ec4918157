/*
 * The NVML stand-in's own CPU time, call by call: the driver calls one steady cycle of genv's
 * NVML backend makes (nvmlDeviceGetCount; per device its memory, compute and MPS process
 * lists, each list in one call with room for every record: the backend keeps each device's
 * handle and uuid while NVML stays open, so those are asked once, before the passes), made
 * straight from C so that no caller's cost is counted, each timed with the thread's CPU
 * clock.
 *
 *   nvml_cost PASSES PAUSE_MS     (LD_LIBRARY_PATH finds the stand-in, GENV_FAKE_MACHINE set)
 *
 * Prints one JSON object: microseconds of CPU per call of each kind (mean over the passes),
 * the calls of each kind in one pass, and the CPU of one whole pass. With a pause between
 * passes, caches go cold as between a daemon's cycles.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

typedef int ret_t;
typedef void *device_t;
typedef struct {
    unsigned int pid;
    unsigned long long used;
    unsigned int gi, ci;
} record_t;
typedef struct {
    unsigned long long total, free, used;
} memory_t;

enum { COUNT, HANDLE, UUID, MEMORY, COMPUTE, MPS, KINDS };
static const char *NAMES[KINDS] = {"count", "handle", "uuid", "memory", "compute", "mps"};

static double now_us(void)
{
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

static void *need(void *library, const char *name)
{
    void *f = dlsym(library, name);
    if (!f) {
        fprintf(stderr, "nvml_cost: %s not found\n", name);
        exit(2);
    }
    return f;
}

int main(int argc, char **argv)
{
    int passes = argc > 1 ? atoi(argv[1]) : 20;
    long pause_ms = argc > 2 ? atol(argv[2]) : 0;
    void *library = dlopen("libnvidia-ml.so.1", RTLD_NOW);
    if (!library) {
        fprintf(stderr, "nvml_cost: %s\n", dlerror());
        return 2;
    }
    ret_t (*init)(void) = (ret_t(*)(void))need(library, "nvmlInit_v2");
    ret_t (*count)(unsigned int *) = (ret_t(*)(unsigned int *))need(library, "nvmlDeviceGetCount_v2");
    ret_t (*handle)(unsigned int, device_t *) =
        (ret_t(*)(unsigned int, device_t *))need(library, "nvmlDeviceGetHandleByIndex_v2");
    ret_t (*uuid)(device_t, char *, unsigned int) =
        (ret_t(*)(device_t, char *, unsigned int))need(library, "nvmlDeviceGetUUID");
    ret_t (*memory)(device_t, memory_t *) =
        (ret_t(*)(device_t, memory_t *))need(library, "nvmlDeviceGetMemoryInfo");
    ret_t (*compute)(device_t, unsigned int *, record_t *) = (ret_t(*)(
        device_t, unsigned int *, record_t *))need(library, "nvmlDeviceGetComputeRunningProcesses_v3");
    ret_t (*mps)(device_t, unsigned int *, record_t *) = (ret_t(*)(
        device_t, unsigned int *, record_t *))need(library, "nvmlDeviceGetMPSComputeRunningProcesses_v3");
    if (init() != 0) {
        fprintf(stderr, "nvml_cost: nvmlInit failed\n");
        return 2;
    }
    static record_t records[1 << 16];
    static device_t devices[64];
    double spent[KINDS] = {0}, calls[KINDS] = {0}, pass_total = 0;
    char text[97];
    memory_t m;
    unsigned int found = 0;
    count(&found);
    if (found > 64)
        found = 64;
    for (unsigned int i = 0; i < found; i++) { /* once, as the backend does; timed apart */
        double t0 = now_us();
        handle(i, &devices[i]);
        double t1 = now_us();
        uuid(devices[i], text, 96);
        double t2 = now_us();
        spent[HANDLE] += t1 - t0;
        spent[UUID] += t2 - t1;
    }
    struct timespec pause = {pause_ms / 1000, (pause_ms % 1000) * 1000000L};
    for (int p = -1; p < passes; p++) { /* pass -1 warms up, uncounted */
        double t0, t1, start;
        unsigned int n = 0;
        if (pause_ms)
            nanosleep(&pause, NULL);
        start = t0 = now_us();
        count(&n);
        t1 = now_us();
        if (p >= 0) {
            spent[COUNT] += t1 - t0;
            calls[COUNT]++;
        }
        for (unsigned int i = 0; i < n && i < found; i++) {
            device_t d = devices[i];
            unsigned int room = sizeof records / sizeof *records;
            double t[4];
            t[0] = now_us();
            memory(d, &m);
            t[1] = now_us();
            compute(d, &room, records);
            t[2] = now_us();
            room = sizeof records / sizeof *records;
            mps(d, &room, records);
            t[3] = now_us();
            if (p >= 0)
                for (int k = MEMORY; k <= MPS; k++) {
                    spent[k] += t[k - MEMORY + 1] - t[k - MEMORY];
                    calls[k]++;
                }
        }
        if (p >= 0)
            pass_total += now_us() - start;
    }
    calls[HANDLE] = calls[UUID] = found; /* asked once, not per pass */
    printf("{\"per_call_us\": {");
    for (int k = 0; k < KINDS; k++)
        printf("%s\"%s\": %.3f", k ? ", " : "", NAMES[k], calls[k] ? spent[k] / calls[k] : 0);
    calls[HANDLE] = calls[UUID] = 0;
    printf("}, \"calls_per_pass\": {");
    for (int k = 0; k < KINDS; k++)
        printf("%s\"%s\": %.0f", k ? ", " : "", NAMES[k], passes ? calls[k] / passes : 0);
    printf("}, \"pass_us\": %.3f}\n", passes ? pass_total / passes : 0);
    return 0;
}

/*
 * The simulated machine, as the stand-ins read it: the flat form that genv's writer puts
 * beside the machine's JSON file (GENV_FAKE_MACHINE, flat form in PATH.flat). The JSON is
 * parsed by genv alone (src/genv/backends/machine_file.py, the one definition of the
 * format); this reader only takes its already checked result apart, and applies the one
 * rule of which process an entry stands for (sim_counts).
 *
 * Shared by the NVML stand-in (libnvidia-ml.so.1) and the stand-in nvidia-smi.
 */
#ifndef GENV_STANDIN_MACHINE_H
#define GENV_STANDIN_MACHINE_H

#include <stddef.h>
#include <sys/types.h>
#include <time.h>

#define SIM_TEXT 96 /* NVML's uuid and name buffers, with the NUL */
#define SIM_BOOT_ID 64

struct sim_device {
    unsigned long long total;
    char uuid[SIM_TEXT];
    char name[SIM_TEXT];
};

struct sim_process {
    unsigned long long device;
    unsigned long long pid;
    unsigned long long used; /* bytes, when used_known */
    unsigned long long start; /* ticks since boot, when start_known */
    int used_known;
    int start_known;
};

struct sim_identity {
    int valid;
    dev_t dev;
    ino_t ino;
    off_t size;
    struct timespec mtime;
};

struct sim_machine {
    struct sim_device *devices;
    size_t ndevices;
    struct sim_process *processes;
    size_t nprocesses;
    char boot_id[SIM_BOOT_ID]; /* empty: the file names no boot */
    long long json_size;
    long long json_mtime_ns;
    struct sim_identity flat; /* the flat file this was read from */
};

enum sim_status {
    SIM_OK = 0,
    SIM_NO_MACHINE = 1, /* GENV_FAKE_MACHINE unset, or its file missing */
    SIM_INVALID = 2,    /* the description is invalid, or its flat form missing or stale */
    SIM_NO_MEMORY = 3
};

/* GENV_FAKE_MACHINE without blanks around it, or NULL when unset or blank. Caller frees. */
char *sim_path(void);

/* Reads the machine described at path (the JSON's path). On failure, reason says why. */
int sim_load(const char *path, struct sim_machine *out, char *reason, size_t cap);

/* What the JSON file and its flat form are now (identity not valid: the file is missing). */
struct sim_files {
    struct sim_identity json;
    struct sim_identity flat;
};
void sim_files_now(const char *path, struct sim_files *files);
int sim_files_same(const struct sim_files *a, const struct sim_files *b);

/* Whether the flat file is still the one m was read from (one stat). */
int sim_flat_unchanged(const char *path, const struct sim_machine *m);

/* Whether the JSON file is still the one m's flat form was made from (one stat). */
int sim_json_unchanged(const char *path, const struct sim_machine *m);

void sim_free(struct sim_machine *m);

/* Reads /proc/PID/stat: 1 when pid runs and is not a zombie (*start: its start), else 0. */
int sim_read_process(unsigned long long pid, unsigned long long *start);

/* The last tick since boot at which a process could have started before the file was
 * written (its time, plus one tick: file times are coarse). */
long long sim_written_tick(const struct sim_machine *m);

/* Whether entry p stands for the running process with this start (see machine_file.py). */
int sim_counts(const struct sim_machine *m, const struct sim_process *p,
               unsigned long long start, long long written);

/* This boot's id, "" when unknown. */
const char *sim_boot_id(void);

#endif

"""CPU time the NVML stand-in itself spends on one enforcement cycle of the project.

Run as a script in a process whose ``LD_LIBRARY_PATH`` finds the stand-in. It makes, straight
through ctypes, the driver calls that the project's NVML backend makes per cycle: the device
count; per device its handle, uuid, memory, and the compute and MPS process lists (one call
each, with room for every record); and prints the CPU seconds per cycle as JSON.

On the simulated machine this is not small: the stand-in checks every listed process in
/proc on each call (a real driver keeps its process table), so it is reported beside the
project's numbers, which include it. With a pause (seconds, the first argument) before each
cycle, caches go cold between cycles as they do in the daemon, which costs more than a tight
loop.
"""

from __future__ import annotations

import ctypes
import json
import sys
import time

CYCLES = 8
PAUSE_S = float(sys.argv[1]) if len(sys.argv) > 1 else 0.0
RECORD_BYTES = 24  # nvmlProcessInfo_t (v2 layout)
INSUFFICIENT_SIZE = 7


class Memory(ctypes.Structure):
    _fields_ = [("total", ctypes.c_ulonglong), ("free", ctypes.c_ulonglong),
                ("used", ctypes.c_ulonglong)]


def process_list(function: ctypes._CFuncPtr, handle: ctypes.c_void_p, room: int) -> int:
    count = ctypes.c_uint(room)
    buffer = ctypes.create_string_buffer(room * RECORD_BYTES)
    status = function(handle, ctypes.byref(count), buffer)
    if status == INSUFFICIENT_SIZE:
        return process_list(function, handle, count.value * 2 + 5)
    return count.value


def one_cycle(nvml: ctypes.CDLL, room: dict[int, int]) -> None:
    count = ctypes.c_uint()
    nvml.nvmlDeviceGetCount_v2(ctypes.byref(count))
    uuid = ctypes.create_string_buffer(96)
    memory = Memory()
    for index in range(count.value):
        handle = ctypes.c_void_p()
        nvml.nvmlDeviceGetHandleByIndex_v2(index, ctypes.byref(handle))
        nvml.nvmlDeviceGetUUID(handle, uuid, 96)
        nvml.nvmlDeviceGetMemoryInfo(handle, ctypes.byref(memory))
        found = process_list(nvml.nvmlDeviceGetComputeRunningProcesses_v3, handle,
                             room.get(index, 64))
        room[index] = found * 2 + 5
        process_list(nvml.nvmlDeviceGetMPSComputeRunningProcesses_v3, handle, 64)


def main() -> None:
    nvml = ctypes.CDLL("libnvidia-ml.so.1")
    if nvml.nvmlInit_v2() != 0:
        raise SystemExit("the NVML stand-in did not initialise")
    room: dict[int, int] = {}
    one_cycle(nvml, room)  # sizes the buffers, as the daemon's first cycle does
    spent = 0.0
    for _ in range(CYCLES):
        time.sleep(PAUSE_S)
        start = time.process_time()
        one_cycle(nvml, room)
        spent += time.process_time() - start
    json.dump({"cpu_s": spent / CYCLES}, sys.stdout)


if __name__ == "__main__":
    main()

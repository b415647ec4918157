"""Lines and programs the end-to-end enforcement tests share."""

IGNORES_SIGTERM = (
    "import signal, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "print('ready', flush=True)\n"
    "time.sleep(60)\n"
)


def not_in_env(pid: int) -> str:
    return f"Process {pid} is not running in a GPU environment"


def terminating(pid: int, eid: str = "N/A", devices: str = "0") -> str:
    return f"Terminating process {pid} from environment {eid} that is running on GPU(s) {devices}"

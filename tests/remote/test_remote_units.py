"""Host lists, ssh's failures in one line, and the wire format's limits (no SSH)."""

from __future__ import annotations

import pytest

from genv.domain.models import Attachment, Device, Environment
from genv.domain.observation import Membership, Observation, ObservedProcess, ProcessFacts, Usage
from genv.errors import UsageError
from genv.remote import wire
from genv.remote.hosts import Host, parse_hosts
from genv.remote.ssh import SshOptions, explain

H = Host("gpu2", "admin")


def test_hosts_from_the_command_line_and_a_file(tmp_path):
    assert parse_hosts("a,bob@b, a ,[::1]", None, "root") == [
        Host("a", "root"), Host("b", "bob"), Host("[::1]", "root")]
    hostfile = tmp_path / "hosts"
    hostfile.write_text("# the lab\ngpu1\n\ngpu2  # the new one\nalice@gpu3\n")
    assert parse_hosts(None, str(hostfile), None) == [
        Host("gpu1"), Host("gpu2"), Host("gpu3", "alice")]


@pytest.mark.parametrize("bad", ["-oProxyCommand=x", "a b", "a;b", "", "x@", "a\nb"])
def test_a_host_is_never_an_option_or_two_words(bad):
    with pytest.raises(UsageError):
        parse_hosts(bad, None, None)


def test_ssh_is_run_strict_and_in_batch():
    argv = SshOptions(timeout=3, options=("StrictHostKeyChecking=no",)).command(
        H, ["sudo", "-n", "genv", "usage", "serve"])
    # ssh keeps the first value given: ours come before the user's
    assert argv.index("StrictHostKeyChecking=yes") < argv.index("StrictHostKeyChecking=no")
    assert "BatchMode=yes" in argv and "ConnectTimeout=3" in argv and "-a" in argv
    assert argv[-3:] == ["--", "gpu2", "sudo -n genv usage serve"]
    assert argv[argv.index("-l") + 1] == "admin"


CHANGED = """@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @
@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
Host key for [127.0.0.12]:40000 has changed and you have requested strict checking.
Host key verification failed.
"""


@pytest.mark.parametrize(("status", "stderr", "kind", "start"), [
    (255, CHANGED, "host-key", "gpu2: its host key has CHANGED"),
    (255, "No ED25519 host key is known for gpu2 and you have requested strict checking.\n"
          "Host key verification failed.\n", "host-key", "gpu2: its host key is not in"),
    (1, "sudo: a password is required\n", "sudo", "gpu2: sudo asks for a password"),
    (1, "sudo: genv: command not found\n", "no-genv", "gpu2: genv is not installed"),
    (127, "bash: line 1: genv: command not found\n", "no-genv", "gpu2: genv is not installed"),
    (2, "usage: genv usage [-h] {execute,snapshot} ...\ngenv usage: error: argument command: "
        "invalid choice: 'serve' (choose from 'execute', 'snapshot')\n", "old-genv",
     "gpu2: the genv there is too old"),
    (255, "admin@gpu2: Permission denied (publickey).\n", "auth", "gpu2: SSH login refused"),
    (255, "ssh: connect to host gpu2 port 22: Connection refused\n", "connect",
     "gpu2: cannot connect: ssh: connect to host gpu2 port 22: Connection refused"),
    (255, "ssh: connect to host gpu2 port 22: Connection timed out\n", "timeout",
     "gpu2: did not answer within 5 s"),
    (None, "", "timeout", "gpu2: did not answer within 5 s"),
])
def test_each_failure_is_one_line_naming_the_host(status, stderr, kind, start):
    error = explain(H, status, stderr, 5)
    assert error.kind == kind
    assert str(error).startswith(start)
    assert "\n" not in str(error)


def _observation() -> Observation:
    env = Environment("e1", 1000, "bob", 1.5)
    return Observation(
        devices=(Device(0, "GPU-0", "H100", 80 << 30, 1 << 30),),
        processes=(ObservedProcess(ProcessFacts(42, 777, 1000, "bob", "python", "e1",
                                                True, "/usr/bin/python3"),
                                   (Usage(0, 1 << 30),), Membership.IN_ENV, env),),
        environments=(env,),
        attachments=(Attachment(0, "e1", 1000, 2.5, "4g"),),
        unusable_uids=frozenset({7}),
    )


def test_an_observation_goes_over_the_wire_unchanged():
    observation = _observation()
    line = wire.dumps({"observation": wire.encode_observation(observation)})
    assert wire.decode_observation(wire.loads(line)["observation"]) == observation


@pytest.mark.parametrize("change", [
    lambda body: body["processes"][0].__setitem__(0, -1),  # no such pid
    lambda body: body["processes"][0].__setitem__(0, True),  # not a number
    lambda body: body["processes"][0].__setitem__(10, [1000, "other"]),  # unlisted env
    lambda body: body["processes"][0].__setitem__(9, "belongs"),  # no membership
    lambda body: body["devices"].__setitem__(0, [0, "x"]),  # too short
    lambda body: body.__setitem__("environments", {"e1": 1}),  # not a list
    lambda body: body["processes"][0][8].__setitem__(0, [3, 1 << 30]),  # an unlisted device
    lambda body: body["processes"][0][8].__setitem__(0, [0, 2**63]),  # more than it has
])
def test_a_host_that_sends_nonsense_is_refused(change):
    body = wire.encode_observation(_observation())
    change(body)
    with pytest.raises(wire.WireError):
        wire.decode_observation(body)


def test_lines_and_numbers_have_limits():
    with pytest.raises(wire.WireError):
        wire.loads(b"[1, 2]")
    with pytest.raises(wire.WireError):
        wire.loads(b'{"a": NaN}')
    with pytest.raises(wire.WireError):
        wire.loads(b"{" * 100000)


def test_a_boot_time_no_clock_can_have_is_refused():
    hello = {"protocol": wire.PROTOCOL, "hostname": "h", "boot_time": 1.7e9}
    assert wire.decode_host_facts(hello).boot_time == 1.7e9
    for impossible in (1e308, -1.0):  # (1e308 made every start time of the host infinite)
        with pytest.raises(wire.WireError):
            wire.decode_host_facts({**hello, "boot_time": impossible})

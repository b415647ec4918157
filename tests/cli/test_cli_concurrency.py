"""Many genv commands at once: the lock gives every device to one environment only."""

from __future__ import annotations

import json

COUNT = 16


def wait_all(processes):
    results = []
    for process in processes:
        out, err = process.communicate(timeout=120)
        results.append((process.returncode, out, err))
    return results


def test_sixteen_attaches_on_four_devices(fake_machine, run_genv, genv_popen, new_env) -> None:
    eids = [f"e{i}" for i in range(COUNT)]
    for eid in eids:
        new_env(eid)
    processes = [genv_popen("devices", "attach", "--eid", eid, "--count", "1") for eid in eids]
    results = wait_all(processes)

    winners = {eid: out.strip() for eid, (rc, out, _) in zip(eids, results, strict=True)
               if rc == 0}
    assert len(winners) == 4, results
    assert sorted(winners.values()) == ["0", "1", "2", "3"]
    for rc, out, err in results:
        assert "Traceback" not in err
        if rc != 0:
            assert rc == 1
            assert out == ""
            lines = err.strip().splitlines()
            assert len(lines) == 1, err
            assert "available" in lines[0]

    query = run_genv("devices", "query", "--query", "index", "eids")
    holders = dict(line.split(",") for line in query.lines)
    assert sorted(holders) == ["0", "1", "2", "3"]
    assert set(holders.values()) == set(winners)  # one environment per device
    for eid, index in winners.items():
        assert holders[index] == eid

    data = json.loads(fake_machine.state_file(0).read_bytes())
    attached = sorted((a["device"], a["eid"]) for a in data["attachments"])
    assert attached == sorted((int(index), eid) for eid, index in winners.items())
    assert len(data["environments"]) == COUNT


def test_simultaneous_activations_lose_nothing(fake_machine, run_genv, genv_popen,
                                               sleeper) -> None:
    sleepers = [sleeper() for _ in range(COUNT)]
    processes = [
        genv_popen("envs", "activate", "--eid", f"a{i}", "--uid", "0", "--pid", str(p.pid))
        for i, p in enumerate(sleepers)
    ]
    assert all(rc == 0 for rc, _, _ in wait_all(processes))
    listed = run_genv("envs", "query", "--query", "eid").lines
    assert sorted(listed) == sorted(f"a{i}" for i in range(COUNT))
    json.loads(fake_machine.state_file(0).read_bytes())


def test_readers_never_see_half_a_file(fake_machine, run_genv, genv_popen, new_env) -> None:
    for eid in ("x", "y"):
        new_env(eid)
    writers = []
    readers = []
    for round_ in range(6):
        writers.append(genv_popen("envs", "config", "--eid", "x", "name", "--name", f"n{round_}"))
        writers.append(genv_popen("devices", "attach", "--eid", "y", "--count",
                                  str(round_ % 3 + 1)))
        readers.append(genv_popen("envs", "ps", "--format", "json"))
        readers.append(genv_popen("devices", "ps", "--format", "json"))
    assert all(rc == 0 for rc, _, _ in wait_all(writers))
    for rc, out, err in wait_all(readers):
        assert (rc, err) == (0, "")
        json.loads(out)


def test_attaches_of_several_users_at_once_never_share_a_device(
    linux_users, fake_machine, run_genv, genv_popen, new_env,
) -> None:
    """No lock is shared between users (one user could hold it forever): each claims in its
    own file and checks again. Four devices, twelve environments of three users, all at once,
    several rounds: every device ends up with exactly one environment."""
    alice, bob = linux_users
    owners = [None, alice, bob] * 4
    envs = [(f"m{i}", owner) for i, owner in enumerate(owners)]
    for eid, owner in envs:
        new_env(eid, user=owner)
    for round_ in range(3):
        processes = [genv_popen("devices", "attach", "--eid", eid, "--count", "1", user=owner)
                     for eid, owner in envs]
        results = wait_all(processes)
        for rc, out, err in results:
            assert "Traceback" not in err
            assert rc == 0 or ("available" in err and out == ""), (rc, out, err)
        holders: dict[str, list[str]] = {}
        for line in run_genv("devices", "query", "--query", "index", "eids").lines:
            index, eids = line.split(",")
            holders[index] = eids.split()
        assert all(len(held) == 1 for held in holders.values()), (round_, holders)
        winners = [eid for (eid, _), (rc, _, _) in zip(envs, results, strict=True) if rc == 0]
        assert sorted(h[0] for h in holders.values()) == sorted(winners)
        assert len(winners) == 4, (round_, results)
        for eid, owner in envs:  # free the devices for the next round
            assert run_genv("devices", "detach", "--eid", eid, user=owner).rc == 0

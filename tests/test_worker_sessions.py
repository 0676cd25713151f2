"""Workers of ``nexus_lab.start``'s cluster live in sessions of their own (issue 13): Jupyter's SIGINT to a kernel's
process group (every interrupt, and the start of every shutdown) no longer kills them with tracebacks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

#: A stand-in for a kernel: a process-group leader (as Jupyter starts kernels) that survives SIGINT (as ipykernel
#: does), starts a cluster, waits to be interrupted, then checks that its workers still serve and closes.
KERNEL = """\
import json, os, signal, sys, threading
import nexus_lab

if __name__ == "__main__":
    got = threading.Event()
    signal.signal(signal.SIGINT, lambda *a: got.set())
    ctl = nexus_lab.start(gpus=2, device="simulated:titan-x-pascal", epoch_s=3600)
    groups = ctl.client.run(lambda: (os.getpid(), os.getpgrp(), os.getsid(0)))
    print("GROUPS", os.getpgrp(), json.dumps(sorted(groups.values())), flush=True)
    assert got.wait(60), "no SIGINT came"
    after = ctl.client.run(os.getpid)
    print("ALIVE", sorted(after.values()) == sorted(p for p, _, _ in groups.values()), flush=True)
    ctl.close()
    print("CLOSED", flush=True)
"""


def test_workers_are_out_of_the_starting_process_group_and_survive_its_sigint(tmp_path):
    script = tmp_path / "kernel.py"
    script.write_text(KERNEL)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True, cwd=tmp_path)
    try:
        line = proc.stdout.readline()
        assert line.startswith("GROUPS"), (line, proc.stderr.read() if proc.poll() is not None else "")
        _, pgid, rest = line.split(" ", 2)
        workers = json.loads(rest)
        assert int(pgid) == proc.pid and len(workers) == 2
        for pid, group, session in workers:
            assert group == pid == session, f"worker {pid} is in group {group}, session {session}"
        time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGINT)  # what Jupyter does to interrupt or shut down a kernel
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err[-3000:]
    assert "ALIVE True" in out and "CLOSED" in out, (out, err[-3000:])
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]

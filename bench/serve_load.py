"""`noduleflow bench serve-load`: many phantom series sent at once to `noduleflow serve`, the
service SIGKILLed while it processes one, restarted, and every series checked for exactly one
result.

The service runs as a real subprocess (`python -m noduleflow.cli serve`); clients are pynetdicom
SCUs (threads) and, where installed, dcmtk's storescu (processes), sending concurrently.
Reported: what was sent, receive rate, per-series latency from its last instance to its result,
what the restart recovered, and the exactly-once check. Times from a shared 2-core machine are
indicative only; the machine is recorded.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from .common import machine, standalone, write_report

SHAPE = (60, 112, 112)
SPACING = (2.5, 2.0, 2.0)
HELP = "load + SIGKILL/restart test of `noduleflow serve` (exactly one result per series)"
DESCRIPTION = ("Write N phantom series, start `noduleflow serve` as a subprocess, send the series from several "
               "concurrent clients (pynetdicom threads and dcmtk storescu processes), SIGKILL the service while it "
               "processes a series, restart it, and check that every series has exactly one result. Writes "
               "serve_load.json/.md.")


def build_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of `noduleflow bench serve-load` (and of ``python -m noduleflow.bench.serve_load``)."""
    p.add_argument("--series", type=int, default=20, help="phantom series sent (default 20)")
    p.add_argument("--clients", type=int, default=4, help="concurrent clients (default 4)")
    p.add_argument("--kill-after", type=int, default=3, help="SIGKILL once this many series are done and one is "
                                                             "processing (-1: never)")
    p.add_argument("--workdir", help="scratch folder (default: a temporary one)")
    p.add_argument("--out", default="bench-serve-load", help="output folder (default ./bench-serve-load)")
    p.set_defaults(func=command)
    return p


def register(sub) -> None:
    build_parser(sub.add_parser("serve-load", help=HELP, description=DESCRIPTION))


def find_dcmtk(tool: str) -> str | None:
    """Path of a dcmtk tool (``storescu``, ``echoscu``, ``dsrdump``), not pynetdicom's same-named
    Python apps that may come first on PATH; None if dcmtk is not installed."""
    for cand in (f"/usr/bin/{tool}", shutil.which(tool)):
        if cand and Path(cand).exists():
            try:
                v = subprocess.run([cand, "--version"], capture_output=True, text=True, timeout=20).stdout
            except (OSError, subprocess.SubprocessError):
                continue
            if "dcmtk" in v.lower():
                return cand
    return None


class ServiceProcess:
    """`noduleflow serve` in a subprocess; its port comes from SPOOL/serve.json."""

    def __init__(self, spool: Path, allow_ae, quiet_s: float, log_path: Path) -> None:
        self.spool, self.allow_ae, self.quiet_s, self.log_path = spool, list(allow_ae), quiet_s, log_path
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None

    def start(self, timeout: float = 300.0) -> ServiceProcess:
        cmd = [sys.executable, "-m", "noduleflow.cli", "serve", "--spool", str(self.spool), "--port", "0",
               "--quiet-period", str(self.quiet_s), "--no-png"]
        for ae in self.allow_ae:
            cmd += ["--allow-ae", ae]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                                             os.environ.get("PYTHONPATH", "")])}
        self._log = open(self.log_path, "a")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        end = time.monotonic() + timeout
        info = self.spool / "serve.json"
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited with {self.proc.returncode}; see {self.log_path}")
            try:
                d = json.loads(info.read_text())
                if d.get("pid") == self.proc.pid and d.get("port"):
                    self.port = int(d["port"])
                    return self
            except (FileNotFoundError, json.JSONDecodeError):
                pass
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"serve did not start within {timeout:.0f} s; see {self.log_path}")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)
        if getattr(self, "_log", None):
            self._log.close()

    def terminate(self, timeout: float = 180.0) -> int:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()
        return self.proc.returncode


def send_pynetdicom(port: int, ae_title: str, files, contexts=None) -> list[int]:
    """C-STORE ``files`` (paths or datasets) to NODULEFLOW on loopback in one association, asking
    for ``contexts`` (default CT Image Storage); returns the status of each."""
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage

    ae = AE(ae_title=ae_title)
    for cx in contexts or [CTImageStorage]:
        ae.add_requested_context(cx)
    assoc = ae.associate("127.0.0.1", port, ae_title="NODULEFLOW")
    if not assoc.is_established:
        raise RuntimeError(f"{ae_title}: association not established")
    try:
        statuses = [int(assoc.send_c_store(f).Status) for f in files]
    finally:
        assoc.release()
    if not assoc.is_released:
        # the service went away before the release: as a scanner would, count the transfer as
        # failed and send it again (the service holds the series as interrupted meanwhile)
        raise RuntimeError(f"{ae_title}: association not released (the peer went away)")
    return statuses


def _send_storescu(tool: str, port: int, ae_title: str, files) -> list[int]:
    r = subprocess.run([tool, "-aet", ae_title, "-aec", "NODULEFLOW", "127.0.0.1", str(port), *map(str, files)],
                       capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"storescu ({ae_title}) failed: {r.stderr.strip()[-500:]}")
    return [0] * len(files)


def _states(spool: Path) -> dict[str, list[str]]:
    return {s: sorted(p.name for p in (spool / s).iterdir()) if (spool / s).is_dir() else []
            for s in ("received", "complete", "processing", "done", "failed")}


def _whole_result(folder: Path, n_instances: int) -> bool:
    """The results' version.json says they were computed from all ``n_instances``, as complete."""
    try:
        v = json.loads((folder / "version.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return False
    return v.get("instances") == n_instances and v.get("complete") is True


def run_load(workdir, n_series: int = 20, clients: int = 4, kill_after: int = 3, quiet_s: float = 2.0,
             timeout_s: float = 900.0, shape=SHAPE, spacing=SPACING, progress=print) -> dict:
    """The whole scenario; returns the report (``report["ok"]``: every check passed)."""
    import pydicom

    from noduleflow.engine.io.dicom_write import write_dicom_series
    from noduleflow.synthetic.phantom import PhantomParams, generate_phantom

    work = Path(workdir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    spool = work / "spool"
    t0 = time.perf_counter()
    series = []
    for i in range(n_series):
        ph = generate_phantom(4000 + i, params=PhantomParams(n_nodules=2), shape_zyx=shape, spacing_zyx_mm=spacing)
        files = write_dicom_series(ph.volume, work / "series" / f"s{i:02d}", seed=4000 + i)
        series.append((str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID), files))
    progress(f"wrote {n_series} series of {shape[0]} slices in {time.perf_counter() - t0:.1f} s")
    storescu = find_dcmtk("storescu")
    ae_titles = [f"LOAD{k}" for k in range(clients)]
    svc = ServiceProcess(spool, ae_titles, quiet_s, work / "serve_stdout.log").start()
    progress(f"service up on port {svc.port}")

    # -- send: client k takes series k, k + clients, ...; even clients pynetdicom, odd clients dcmtk
    errors, sent_at = [], {}
    kinds = ["pynetdicom" if (k % 2 == 0 or not storescu) else "dcmtk-storescu" for k in range(clients)]

    def client(k):
        for j in range(k, n_series, clients):
            uid, files = series[j]
            try:
                st = (send_pynetdicom(svc.port, ae_titles[k], files) if kinds[k] == "pynetdicom"
                      else _send_storescu(storescu, svc.port, ae_titles[k], files))
                if any(s != 0 for s in st):
                    errors.append(f"{uid}: statuses {sorted(set(st))}")
            except Exception as exc:   # recorded, reported as a failed check
                errors.append(f"{uid}: {exc}")
            sent_at[uid] = time.time()

    t_send = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()

    # -- kill while a series is processing, once kill_after are done
    killed = None
    deadline = time.monotonic() + timeout_s
    while kill_after >= 0 and killed is None and time.monotonic() < deadline:
        st = _states(spool)
        if len(st["done"]) >= kill_after and st["processing"]:
            svc.kill()
            killed = {"processing": st["processing"], "done_before_kill": len(st["done"]),
                      "states": {k: len(v) for k, v in _states(spool).items()}}
            progress(f"SIGKILL with {killed['states']}")
            break
        time.sleep(0.02)
    for t in threads:
        t.join(timeout=max(1.0, deadline - time.monotonic()))
    send_s = time.perf_counter() - t_send
    if killed is not None:
        # clients that were cut off by the kill resend to the restarted service, as a scanner would
        svc = ServiceProcess(spool, ae_titles, quiet_s, work / "serve_stdout.log").start()
        progress(f"restarted on port {svc.port}")
        pending = [j for j, (uid, _) in enumerate(series) if any(e.startswith(uid) for e in errors)]
        resent = []
        for j in pending:
            uid, files = series[j]
            st = send_pynetdicom(svc.port, ae_titles[0], files)
            resent.append(uid)
            errors[:] = [e for e in errors if not e.startswith(uid)] + \
                ([f"{uid}: resend statuses {sorted(set(st))}"] if any(s != 0 for s in st) else [])
            sent_at[uid] = time.time()
        killed["resent_after_restart"] = len(resent)

    while time.monotonic() < deadline:
        st = _states(spool)
        if len(st["done"]) + len(st["failed"]) >= n_series and not (st["received"] or st["complete"]
                                                                      or st["processing"]):
            break
        time.sleep(0.2)
    total_s = time.perf_counter() - t_send
    status = subprocess.run([sys.executable, "-m", "noduleflow.cli", "serve", "--spool", str(spool), "--status",
                             "--json"], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    rc = svc.terminate()

    # -- checks
    st = _states(spool)
    results = sorted(p.name for p in (spool / "results").iterdir())
    uids = sorted(u for u, _ in series)
    done_events, requeued, latencies, proc_s = {}, [], [], []
    for uid in st["done"]:
        rec = json.loads((spool / "done" / uid / "series.json").read_text())
        ev = rec["events"]
        done_events[uid] = sum(e["event"] == "done" for e in ev)
        if any(e["event"] == "requeued" for e in ev):
            requeued.append(uid)
        t_done = max(e["t"] for e in ev if e["event"] == "done")
        if uid in sent_at:
            latencies.append(t_done - sent_at[uid])
        if rec.get("timings_s"):
            proc_s.append(rec["timings_s"]["total"])
    checks = {
        "every series has a result": results == uids,
        "no result twice (one done event per series)": all(v == 1 for v in done_events.values())
        and len(done_events) == n_series,
        "none failed": not st["failed"],
        "nothing left in received/complete/processing": not (st["received"] or st["complete"] or st["processing"]),
        "every result holds csv, json and SR": all(
            {"candidates.csv", "sr.dcm", f"{u}.json"} <= {p.name for p in (spool / "results" / u).iterdir()}
            for u in results),
        "every result is of its whole series (all instances, marked complete)": all(
            _whole_result(spool / "results" / u, len(files)) for u, files in series if u in results),
        "all instances accepted": not errors,
        "status readable": status.returncode == 0 and json.loads(status.stdout)["counts"]["done"] == len(st["done"]),
        "service stopped cleanly on SIGTERM": rc == 0,
    }
    if killed is not None:
        checks["the series processing at the kill was requeued and finished once"] = all(
            u in requeued or (spool / "results" / u).is_dir() for u in killed["processing"])
    n_inst = sum(len(f) for _, f in series)
    size = sum(f.stat().st_size for _, fs in series for f in fs)
    report = {
        "series": n_series, "instances": n_inst, "megabytes": round(size / 2 ** 20, 1),
        "shape_zyx": list(shape), "clients": dict(zip(ae_titles, kinds)),
        "send_s": round(send_s, 2), "total_s": round(total_s, 2),
        "instances_per_s_while_sending": round(n_inst / send_s, 1) if killed is None else None,
        "series_per_min_end_to_end": round(60 * n_series / total_s, 2),
        "latency_last_instance_to_result_s": {"median": round(float(np.median(latencies)), 2),
                                              "max": round(float(np.max(latencies)), 2)} if latencies else None,
        "processing_s_per_series": {"median": round(float(np.median(proc_s)), 2),
                                    "max": round(float(np.max(proc_s)), 2)} if proc_s else None,
        "kill": killed, "requeued_series": requeued, "errors": errors, "checks": checks,
        "ok": all(checks.values()),
    }
    return report


def markdown(r: dict) -> str:
    """The report of a `run_load` result (with its machine)."""
    lines = ["# `noduleflow serve` under load, SIGKILLed mid-processing and restarted", "",
             f"Machine: {r['machine'].get('cpu')} ({r['machine'].get('cores')} cores), Python "
             f"{r['machine'].get('python')}, pynetdicom {r['machine'].get('pynetdicom')}, highdicom "
             f"{r['machine'].get('highdicom')}, dcmtk storescu: {r['machine'].get('storescu') or 'not installed'}.",
             "Command: `noduleflow bench serve-load` "
             f"(--series {r['series']} --clients {len(r['clients'])}). Shared 2-core machines give indicative "
             "times only.", "",
             f"- Sent: {r['series']} phantom series ({r['instances']} CT instances, {r['megabytes']} MB, "
             f"{r['shape_zyx'][0]} slices of {r['shape_zyx'][1]}x{r['shape_zyx'][2]}) from {len(r['clients'])} "
             f"concurrent clients: " + ", ".join(f"{k} {v}" for k, v in r["clients"].items()),
             f"- SIGKILL: {json.dumps(r['kill']) if r['kill'] else 'none'}",
             f"- Requeued after restart: {len(r['requeued_series'])} series",
             f"- End to end: {r['total_s']} s, {r['series_per_min_end_to_end']} series/min; processing per "
             f"series {r['processing_s_per_series']}; last instance to result {r['latency_last_instance_to_result_s']}",
             "", "| check | result |", "|---|---|"]
    lines += [f"| {k} | {'pass' if v else 'FAIL'} |" for k, v in r["checks"].items()]
    if r["errors"]:
        lines += ["", "Errors:", *[f"- {e}" for e in r["errors"]]]
    return "\n".join(lines) + "\n"


def command(args: argparse.Namespace) -> int:
    from noduleflow.engine.extras import require_extra

    require_extra("serve", "noduleflow bench serve-load")
    import highdicom
    import pynetdicom

    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="nf-serve-load-"))
    r = run_load(work, args.series, args.clients, args.kill_after)
    r["machine"] = {**machine(), "pynetdicom": pynetdicom.__version__, "highdicom": highdicom.__version__,
                    "storescu": find_dcmtk("storescu")}
    write_report(Path(args.out), "serve_load", r, markdown(r))
    return 0 if r["ok"] else 1


def main(argv=None) -> int:
    return standalone(build_parser, "serve_load", DESCRIPTION, argv)


if __name__ == "__main__":
    sys.exit(main())

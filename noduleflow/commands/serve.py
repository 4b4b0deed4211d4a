"""`noduleflow serve`: the scanner-side service (DICOM receiver, spool, detection, DICOM SR)."""
from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from pathlib import Path

from noduleflow.engine.errors import ConfigError

from .options import add_config_options, add_detector_options, add_model_options, config_values, detector_config


def register(sub) -> None:
    from noduleflow.serve.config import MODEL, NETWORK, SPOOL, ServeConfig

    p = sub.add_parser(
        "serve", help="receive CT series over DICOM (or a watched folder), detect, write DICOM SR results",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run beside a CT scanner: a DICOM Storage SCP (C-STORE, C-ECHO) spools every CT instance\n"
                    "to disk (fsynced) before answering success; a series is complete after --quiet-period\n"
                    "seconds without an instance; one worker detects complete series with the model loaded\n"
                    "once and writes SPOOL/results/<series>/ (candidates.csv, <series>.json, <series>.png,\n"
                    "sr.dcm: a Comprehensive 3D SR with each candidate as a SCOORD3D point and its\n"
                    "probability). State lives in the spool, so a killed service resumes unfinished series on\n"
                    "start and never processes one twice. Needs the 'serve' extra: pip install "
                    "'noduleflow[serve]'.",
        epilog="examples:\n"
               "  noduleflow serve --spool /data/nf --host 0.0.0.0 --port 11112 --allow-ae CT_SCANNER1\n"
               "  noduleflow serve --spool /data/nf --no-network --watch /data/incoming\n"
               "  noduleflow serve --spool /data/nf --forward PACS@10.0.0.5:104 --allow-ae CT1\n"
               "  noduleflow serve --spool /data/nf --status")
    groups = {name: p.add_argument_group(name) for name in (NETWORK, SPOOL, MODEL)}
    add_model_options(groups[MODEL])
    add_config_options(p, ServeConfig, groups)
    p.add_argument("--status", action="store_true", help="print what the spool holds (and whether a service "
                                                          "is running on it) and exit")
    p.add_argument("--json", action="store_true", help="with --status: JSON instead of a table")
    add_detector_options(p)
    p.set_defaults(func=run)


def _detail(s: dict) -> str:
    parts = []
    if s.get("version") and s["version"] > 1:
        parts.append(f"version {s['version']}")
    if s.get("incomplete"):
        parts.append(f"incomplete: {s['incomplete']}")
    if s.get("interrupted"):
        parts.append("sender cut off, waiting for a resend")
    if s.get("refused"):
        parts.append(f"{len(s['refused'])} instance(s) refused, not received since (cannot be COMPLETE)")
    if s.get("complete") is False:
        parts.append("processed as PARTIAL" + (f" ({s['coverage']})" if s.get("coverage") else ""))
    if s.get("duplicates"):
        parts.append(f"{s['duplicates']} duplicate instance(s) ignored")
    if s.get("error"):
        parts.append(s["error"])
    elif s.get("timings_s"):
        parts.append(f"{s['timings_s'].get('total', 0):.1f} s" + (", SR forwarded" if s.get("forwarded") else ""))
    return "; ".join(parts)


def print_status(st: dict, out=None) -> None:
    out = out or sys.stdout
    svc = st.get("service") or {}
    running = "running" if st["running"] else "not running"
    where = f" (pid {svc.get('pid')}, {svc.get('ae_title')} on {svc.get('host')}:{svc.get('port')})" \
        if st["running"] and svc.get("network") else (f" (pid {svc.get('pid')})" if st["running"] else "")
    print(f"spool {st['spool']}: service {running}{where}", file=out)
    for name, h in sorted((st.get("health") or {}).items()):
        if h.get("state") != "up" or h.get("restarts"):
            print(f"  {name} thread {h.get('state', '?').upper()}"
                  + (f": {h['error']}" if h.get("error") and h.get("state") != "up" else "")
                  + (f" (restarted {h['restarts']} time(s))" if h.get("restarts") else "")
                  + ("; instances are refused (0xA700) until it runs again" if name in ("worker", "complete")
                     and h.get("state") != "up" else ""), file=out)
    print("  " + ", ".join(f"{k} {v}" for k, v in st["counts"].items())
          + f"; late instances {sum(st['late_instances'].values())}; rejected files {st['rejected_files']}",
          file=out)
    if st["series"]:
        print(f"  {'state':<11}{'images':>7}{'idle s':>9}  series / detail", file=out)
    for s in st["series"]:
        detail = _detail(s)
        print(f"  {s['state']:<11}{s['instances']:>7}{s['idle_s']:>9.0f}  {s['series_uid']}"
              + (f"  {detail}" if detail else ""), file=out)


def run(args: argparse.Namespace) -> int:
    if args.status:
        from noduleflow.serve.spool import Spool

        if not Path(args.spool).is_dir():
            raise ConfigError(f"--spool {args.spool}: no such folder")
        st = Spool(args.spool).status()
        print(json.dumps(st, indent=1)) if args.json else print_status(st)
        return 0
    from noduleflow.engine.extras import require_extra

    require_extra("serve", "noduleflow serve")
    from noduleflow.serve.service import ServeConfig, Service  # the service's threads, on demand

    cfg = ServeConfig(**config_values(ServeConfig, args), model=args.model, backend=args.backend,
                      precision=args.precision, detection=detector_config(args))
    slog = logging.getLogger("noduleflow.serve")
    if not slog.handlers:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        slog.addHandler(h)
        slog.propagate = False
    slog.setLevel(logging.DEBUG if args.verbose > 1 else logging.INFO)
    svc = Service(cfg).start()
    print(f"noduleflow serve: spool {cfg.spool}"
          + (f", {cfg.ae_title} listening on {cfg.host}:{svc.port}" if cfg.network else "")
          + (f", watching {cfg.watch}" if cfg.watch else "") + "; Ctrl-C or SIGTERM stops", flush=True)

    def _stop(signum, frame):
        svc.request_stop()

    signal.signal(signal.SIGTERM, _stop)
    try:
        while not svc.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        svc.stop()
    return 0

"""`noduleflow serve`: the scanner-side service (DICOM receiver, spool, detection, DICOM SR)."""
from __future__ import annotations

import argparse
import sys

from .options import add_detector_options, add_model_options, detector_config


def register(sub) -> None:
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
    p.add_argument("--spool", required=True, help="spool folder: all state and results live here")
    p.add_argument("--status", action="store_true", help="print what the spool holds (and whether a service "
                                                          "is running on it) and exit")
    p.add_argument("--json", action="store_true", help="with --status: JSON instead of a table")
    g = p.add_argument_group("DICOM network")
    g.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for "
                                                      "every interface)")
    g.add_argument("--port", type=int, default=11112, help="TCP port (default 11112; 0 picks a free one)")
    g.add_argument("--ae-title", default="NODULEFLOW", help="this service's AE title (default NODULEFLOW)")
    g.add_argument("--allow-ae", action="append", default=[], metavar="TITLE",
                   help="calling AE title allowed to associate (repeatable); others are rejected. Required "
                        "when listening beyond loopback, unless --allow-any-ae")
    g.add_argument("--allow-any-ae", action="store_true", help="accept any calling AE title")
    g.add_argument("--allow-host", action="append", default=[], metavar="ADDR",
                   help="peer address or network (10.0.0.5, 10.0.0.0/24) allowed to connect (repeatable; "
                        "default any)")
    g.add_argument("--no-network", action="store_true", help="no DICOM listener (folder watch only)")
    g.add_argument("--forward", metavar="AET@HOST:PORT", help="C-STORE each SR to this destination")
    g.add_argument("--forward-retries", type=int, default=3, help="attempts per SR (default 3, backoff 2, 4 s)")
    g.add_argument("--max-associations", type=int, default=16,
                   help="simultaneous connections, idle ones included (default 16)")
    g.add_argument("--acse-timeout", type=float, default=5.0, metavar="S",
                   help="close a connection that sends no association request within S s (default 5)")
    g.add_argument("--network-timeout", type=float, default=60.0, metavar="S",
                   help="abort an association silent for S s (default 60); its series then waits for a resend")
    w = p.add_argument_group("series and spool")
    w.add_argument("--quiet-period", type=float, default=10.0, metavar="S",
                   help="a series is complete after S seconds without a new instance, with no association "
                        "still sending it and no gap in its slices (default 10)")
    w.add_argument("--incomplete-wait", type=float, default=600.0, metavar="S",
                   help="a series with a gap, or whose sender was cut off, waits S seconds for the rest (default "
                        "600); then a gapped one fails and a cut-off one is processed with its SR marked PARTIAL")
    w.add_argument("--watch", metavar="DIR", help="also take DICOM files dropped into DIR (deleted once "
                                                  "spooled; bad files move to SPOOL/rejected/)")
    w.add_argument("--keep-instances", action="store_true",
                   help="keep a done series' images for good (default: drop them --retain-instances seconds "
                        "after; failed series keep them)")
    w.add_argument("--retain-instances", type=float, default=3600.0, metavar="S",
                   help="keep a done series' images S seconds (default 3600), so that an instance arriving "
                        "later merges with them into a new version of the series")
    w.add_argument("--max-attempts", type=int, default=3,
                   help="a series interrupted this many times by a dying service is failed (default 3)")
    w.add_argument("--min-free-mb", type=float, default=256.0,
                   help="refuse instances (status 'out of resources') below this much free disk (default 256)")
    d = p.add_argument_group("model")
    add_model_options(d)
    d.add_argument("--no-png", action="store_true", help="skip the pictures")
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
    if s.get("complete") is False:
        parts.append("processed as PARTIAL")
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
    import json
    import logging
    import signal
    from pathlib import Path

    from noduleflow.engine.errors import ConfigError

    if args.status:
        from noduleflow.serve.spool import Spool

        if not Path(args.spool).is_dir():
            raise ConfigError(f"--spool {args.spool}: no such folder")
        st = Spool(args.spool).status()
        print(json.dumps(st, indent=1)) if args.json else print_status(st)
        return 0
    from noduleflow.engine.extras import require_extra

    require_extra("serve", "noduleflow serve")
    from noduleflow.serve.service import ServeConfig, Service

    cfg = ServeConfig(spool=Path(args.spool), host=args.host, port=args.port, ae_title=args.ae_title,
                      allow_ae=tuple(args.allow_ae), allow_any_ae=args.allow_any_ae,
                      allow_hosts=tuple(args.allow_host), network=not args.no_network,
                      quiet_s=args.quiet_period, incomplete_s=args.incomplete_wait,
                      retain_s=args.retain_instances, max_associations=args.max_associations,
                      acse_timeout_s=args.acse_timeout, network_timeout_s=args.network_timeout, watch=Path(args.watch) if args.watch else None,
                      model=args.model, backend=args.backend, precision=args.precision, detection=detector_config(args),
                      png=not args.no_png, keep_instances=args.keep_instances,
                      max_attempts=args.max_attempts, forward=args.forward, forward_retries=args.forward_retries,
                      min_free_mb=args.min_free_mb)
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

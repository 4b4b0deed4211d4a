"""Scanner-side service: a DICOM receiver, a crash-safe spool, one detection worker, DICOM SR results.

``noduleflow serve`` (noduleflow/commands/serve.py) runs `Service`. State lives only in the spool
folder (`Spool`), so a killed service resumes where it stopped:

    SPOOL/received/<series>/     instances arriving; complete once quiet, whole and not cut off
    SPOOL/complete/<series>/     queued for detection
    SPOOL/processing/<series>/   claimed by the worker (at most one at a time)
    SPOOL/done/<series>/         finished; its results are in SPOOL/results/<series>/
    SPOOL/failed/<series>/       detection failed (or the series stayed incomplete): error.txt says why
    SPOOL/results/<series>/      candidates.csv, <series>.json, <series>.png, sr.dcm, version.json
    SPOOL/superseded/<series>/   results of earlier versions of the series (v1/, v2/...)
    SPOOL/late/<series>/         instances that arrived while their series was processed (next version)
    SPOOL/rejected/              watched-folder files that were not acceptable CT instances

Every move between states is one ``rename`` of a directory (atomic on one filesystem), every
instance is written to a temporary file, fsynced and renamed before the sender hears
"success", and everything is 0600 in 0700 folders (`files`). Modules: `config` (the settings,
from which the command's options are generated), `instance` (what may enter), `completeness`
(is a series whole, one patient), `spool`, `status` (what ``--status`` reads), `guard` (timeouts and
size caps on every read from a connection), `scp` (the DICOM side), `service` (threads and supervision), `sr`.
The network parts need the ``serve`` extra (pynetdicom, highdicom).
"""
from .config import ServeConfig
from .spool import SeriesState, Spool, SpoolError, SpoolFullError, valid_uid, validate_instance

__all__ = ["SeriesState", "ServeConfig", "Spool", "SpoolError", "SpoolFullError", "validate_instance", "valid_uid"]

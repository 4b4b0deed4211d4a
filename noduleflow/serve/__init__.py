"""Scanner-side service: a DICOM receiver, a crash-safe spool, one detection worker, DICOM SR results.

``noduleflow serve`` (engine/commands/serve.py) runs `Service`. State lives only in the spool
folder (`Spool`), so a killed service resumes where it stopped:

    SPOOL/received/<series>/     instances arriving; complete after a quiet period
    SPOOL/complete/<series>/     queued for detection
    SPOOL/processing/<series>/   claimed by the worker (at most one at a time)
    SPOOL/done/<series>/         finished; its results are in SPOOL/results/<series>/
    SPOOL/failed/<series>/       detection failed: error.txt says why; instances kept
    SPOOL/results/<series>/      candidates.csv, <series>.json, <series>.png, sr.dcm
    SPOOL/late/<series>/         instances that arrived after their series was processed
    SPOOL/rejected/              watched-folder files that were not acceptable CT instances

Every move between states is one ``rename`` of a directory (atomic on one filesystem), and
every instance is written to a temporary file, fsynced and renamed before the sender hears
"success". The network parts need the ``serve`` extra (pynetdicom, highdicom).
"""
from .spool import SeriesState, Spool, SpoolError, SpoolFullError, validate_instance, valid_uid

__all__ = ["SeriesState", "Spool", "SpoolError", "SpoolFullError", "validate_instance", "valid_uid"]

"""The Manager's summary: one row per pipeline, shown as a table."""

from .display import html_table, text_table

__all__ = ["Summary", "SUMMARY_COLUMNS"]

#: The columns of a :class:`Summary`, in display order.
SUMMARY_COLUMNS = ("name", "status", "failed_step", "duration", "error")


class Summary(list):
    """One dict per pipeline (``name``, ``status``, ``failed_step``, ``duration``,
    ``error``, ``checkpoint``, ``host``, ``pid``), shown as a table.

    ``status`` is ``"success"``, ``"error"`` or ``"skipped"`` (its dataset was
    locked by another live run). A plain list otherwise:
    ``summary[0]["status"]``, ``len(summary)``.
    """

    @property
    def failed(self):
        """The rows whose status is ``"error"``."""
        return [row for row in self if row["status"] == "error"]

    @property
    def ok(self):
        """True when no pipeline failed (skipped ones do not count as failures)."""
        return not self.failed

    def _cells(self):
        for row in self:
            duration = "" if row.get("duration") is None else f"{row['duration']:.1f} s"
            yield (str(row.get("name")), str(row.get("status")),
                   str(row.get("failed_step") or ""), duration, str(row.get("error") or ""))

    def __repr__(self):
        counts = {}
        for row in self:
            counts[row["status"]] = counts.get(row["status"], 0) + 1
        head = f"{len(self)} pipelines: " + ", ".join(f"{n} {s}" for s, n in counts.items())
        return text_table(head, SUMMARY_COLUMNS, self._cells(), max_cell=70)

    def _repr_html_(self):
        return html_table(SUMMARY_COLUMNS, self._cells(), [row["status"] for row in self])

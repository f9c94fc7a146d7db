"""Status tables for ``repr()`` and Jupyter: a pipeline's steps, a manager's summary.

One text layout and one HTML layout, shared, so every table pipekit shows reads alike:
a row's background colour says its status.
"""

import html

__all__ = ["STATUS_COLOURS", "text_table", "html_table", "pipeline_text", "pipeline_html"]

#: Row background by status (Bootstrap's pale success / danger / warning / secondary).
STATUS_COLOURS = {"success": "#d4edda", "error": "#f8d7da", "running": "#fff3cd",
                  "interrupted": "#f8d7da", "unknown": "#e2e3e5", "skipped": "#e2e3e5"}


def text_table(title, columns, rows, max_cell=None):
    """A plain-text table under a title line, columns padded to their widest cell.

    Parameters
    ----------
    title : str
    columns : sequence of str
        The header row.
    rows : iterable of sequence
        Cells (turned into text with `str`).
    max_cell : int, optional
        Cut longer cells to this many characters, ending in ``...``.

    Returns
    -------
    str
    """
    def cut(text):
        text = str(text)
        if max_cell and len(text) > max_cell:
            return text[:max_cell - 3] + "..."
        return text

    table = [tuple(columns)] + [tuple(cut(c) for c in row) for row in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(columns))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table]
    return "\n".join([title] + lines)


def html_table(columns, rows, statuses, caption=""):
    """An HTML table, each row coloured by its status (`STATUS_COLOURS`).

    Parameters
    ----------
    columns : sequence of str
    rows : iterable of sequence
        Cells, escaped here.
    statuses : iterable of str
        One per row.
    caption : str
        HTML put before the table (already escaped by the caller).

    Returns
    -------
    str
    """
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = []
    for row, status in zip(rows, statuses):
        cells = "".join(f"<td>{html.escape(str(c))}</td>" for c in row)
        style = STATUS_COLOURS.get(status)
        body.append(f'<tr style="background:{style}">{cells}</tr>' if style
                    else f"<tr>{cells}</tr>")
    return (f"{caption}<table><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table>")


_STEP_COLUMNS = ("#", "name", "tags", "status", "duration", "attempts")


def _step_rows(pipe):
    for i, s in enumerate(pipe.steps):
        duration = "" if s.duration is None else f"{s.duration:.2f} s"
        yield i, s.name, ", ".join(s.tags), s.status, duration, s.attempts


def pipeline_text(pipe):
    """A pipeline's step table as text, under a line with its status (its ``repr``)."""
    head = (f"Pipeline {pipe.name!r}: {len(pipe.steps)} steps, status {pipe.status}, "
            f"next step index {pipe.run_step_idx} of {len(pipe.run_steps)} selected")
    return text_table(head, _STEP_COLUMNS, _step_rows(pipe))


def pipeline_html(pipe):
    """A pipeline's step table as HTML, each row coloured by its status (Jupyter)."""
    caption = (f"<p><b>Pipeline {html.escape(pipe.name)}</b>: status "
               f"{html.escape(pipe.status)}</p>")
    return html_table(_STEP_COLUMNS, _step_rows(pipe), [s.status for s in pipe.steps], caption)

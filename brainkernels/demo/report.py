"""The demo's report: sections of paragraphs, tables and images, written as Markdown (images
linked by relative path) and as one self-contained HTML file (images embedded)."""

from __future__ import annotations

import base64
import html
import os
from dataclasses import dataclass, field
from pathlib import Path

from brainkernels.atomic import atomic_path


@dataclass(frozen=True)
class Table:
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class Image:
    path: Path
    caption: str


@dataclass
class Section:
    title: str
    blocks: list[str | Table | Image] = field(default_factory=list)

    def text(self, paragraph: str) -> None:
        self.blocks.append(paragraph)

    def table(self, header, rows) -> None:
        self.blocks.append(Table(tuple(header), tuple(tuple(str(cell) for cell in row) for row in rows)))

    def image(self, path: str | os.PathLike, caption: str) -> None:
        self.blocks.append(Image(Path(path), caption))


def _markdown_table(table: Table) -> str:
    lines = ["| " + " | ".join(table.header) + " |", "|" + "---|" * len(table.header)]
    return "\n".join(lines + ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |"
                              for row in table.rows])


def to_markdown(title: str, sections: list[Section], root: Path) -> str:
    parts = [f"# {title}"]
    for section in sections:
        parts.append(f"## {section.title}")
        for block in section.blocks:
            if isinstance(block, Table):
                parts.append(_markdown_table(block))
            elif isinstance(block, Image):
                parts.append(f"![{block.caption}]({Path(os.path.relpath(block.path, root)).as_posix()})\n\n"
                             f"*{block.caption}*")
            else:
                parts.append(block)
    return "\n\n".join(parts) + "\n"


_STYLE = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
          "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}"
          "th{background:#f3f3f3}figure{margin:1em 0}img{max-width:100%}figcaption{color:#555;font-size:90%}"
          "code{background:#f3f3f3;padding:1px 3px}")


def _html_text(paragraph: str) -> str:
    # Paragraphs may quote commands in backticks; show them as code.
    pieces = html.escape(paragraph).split("`")
    return "<p>" + "".join(f"<code>{piece}</code>" if index % 2 else piece
                           for index, piece in enumerate(pieces)) + "</p>"


def _html_block(block) -> str:
    if isinstance(block, Table):
        head = "".join(f"<th>{html.escape(cell)}</th>" for cell in block.header)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>"
                       for row in block.rows)
        return f"<table><tr>{head}</tr>{body}</table>"
    if isinstance(block, Image):
        data = base64.b64encode(block.path.read_bytes()).decode("ascii")
        return (f'<figure><img alt="{html.escape(block.caption)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{html.escape(block.caption)}</figcaption></figure>")
    return _html_text(block)


def to_html(title: str, sections: list[Section]) -> str:
    body = [f"<h1>{html.escape(title)}</h1>"]
    for section in sections:
        body.append(f"<h2>{html.escape(section.title)}</h2>")
        body += [_html_block(block) for block in section.blocks]
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{_STYLE}</style></head><body>{''.join(body)}</body></html>\n")


def write_report(out: Path, title: str, sections: list[Section]) -> tuple[Path, Path]:
    """``out/report.md`` and ``out/report.html``, each written whole or not at all."""
    written = []
    for name, text in (("report.md", to_markdown(title, sections, out)), ("report.html", to_html(title, sections))):
        with atomic_path(out / name) as temporary:
            Path(temporary).write_text(text, encoding="utf-8")
        written.append(out / name)
    return written[0], written[1]

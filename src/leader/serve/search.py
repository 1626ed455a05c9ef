"""Title and code search over a model's vocabulary, for the web form's code pickers.

Prepared once per app: lower-cased code and title per entry, sorted by training frequency, so a
query is one linear scan over a few thousand strings (well under a millisecond).
"""

from __future__ import annotations

from leader.data.dataset import Schema
from leader.data.vocab import CODE_KINDS


class VocabSearch:
    def __init__(self, schema: Schema):
        self.entries: dict[str, list[tuple[str, str, str, str, int]]] = {}
        for kind in CODE_KINDS:
            vocab = schema.vocab[kind]
            counts = vocab.counts or [0] * len(vocab)
            rows = [
                (code, title, code.split(":", 1)[-1].lower(), title.lower(), int(n))
                for code, title, n in zip(vocab.codes, vocab.titles, counts, strict=True)
            ]
            self.entries[kind] = sorted(rows, key=lambda r: -r[4])

    def search(self, kind: str, query: str, limit: int = 20) -> list[dict]:
        """Codes whose code starts with, or whose title contains, ``query``; best first."""
        q = query.strip().lower().replace(".", "")
        if not q:
            return [self._hit(r) for r in self.entries[kind][:limit]]
        q_title = query.strip().lower()
        hits: list[tuple[int, int, tuple]] = []
        for n, row in enumerate(self.entries[kind]):
            _, _, code, title, _ = row
            if code.startswith(q):
                rank = 0
            elif title.startswith(q_title) or f" {q_title}" in title:
                rank = 1
            elif q_title in title or q in code:
                rank = 2
            else:
                continue
            hits.append((rank, n, row))
        hits.sort(key=lambda h: (h[0], h[1]))
        return [self._hit(row) for _, _, row in hits[:limit]]

    @staticmethod
    def _hit(row: tuple) -> dict:
        return {"code": row[0], "title": row[1], "count": row[4]}

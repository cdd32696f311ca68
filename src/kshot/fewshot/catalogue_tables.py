"""The catalogue's tables: one row per enrolled image (``images``), the change counter and
library id (``meta``), and the log of removed ids (``removed``) from which a saved index is
caught up. Created if missing at every write, so a catalogue made by an older kshot gains
them at its first write (the per-class sums are kshot.fewshot.class_sums's)."""

IMAGES = """
CREATE TABLE IF NOT EXISTS images (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    label TEXT NOT NULL,
    source TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    enrolled_at TEXT NOT NULL,
    vector BLOB NOT NULL,
    UNIQUE (label, sha256)
)"""
TABLES = (
    IMAGES,
    "CREATE INDEX IF NOT EXISTS images_by_label ON images (label)",
    "CREATE INDEX IF NOT EXISTS images_by_sha256 ON images (sha256)",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS removed (seq INTEGER PRIMARY KEY AUTOINCREMENT, id INTEGER)",
)

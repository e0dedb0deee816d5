"""The review app's "suspects first" view: the train rows the data map of `make train` finds most suspect
(runs/<name>/train/data_map.jsonl), most suspect first, each shown with the token the model disputes."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from common.data_map import FILE, in_words, ranked
from curate.review import plain


@st.cache_data(show_spinner="reading the data map")
def load_suspects(path: str, mtime: float) -> list[dict]:
    return ranked(Path(path))


def suspect_lines(cfg, kept: list[dict]) -> list[dict] | None:
    """The data map's lines of the review.suspects most suspect rows still in curate's output; None (and a line
    saying what to run) without a data map."""
    dm = cfg.run_dir / "train" / FILE
    if not dm.is_file():
        st.info(f"No data map in `{dm}`: `make train` writes it (train.data_map: true); then the rows the model "
                "disputes most are listed here, most suspect first.")
        return None
    ids = {r["id"] for r in kept}
    lines = [ln for ln in load_suspects(str(dm), dm.stat().st_mtime) if ln["id"] in ids][:cfg.review.suspects]
    st.sidebar.caption(f"suspects: the {len(lines)} train rows the model disputes most, from `{dm}`")
    return lines


def dispute(line: dict, rank: int) -> None:
    st.warning(f"**suspicion {line['suspicion']:.3f}** (#{rank} of the data map) · region {line['region']} · "
               f"worst-token confidence {line['worst_confidence']:.2f} — {plain(in_words(line))}")

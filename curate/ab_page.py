"""The review app's blind A/B page (`make review`, view "blind A/B"): two systems' answers to one prompt side by
side, the sides shuffled per item by a seeded hash (common.ab.left_system), the systems' names shown only after the
decision. Boxes of one size that scroll, so a longer answer looks no bigger. Every judgement is appended at once to
runs/<name>/review/ab.jsonl (common.ab); the running win rate on held-out prompts with its 95% interval, by source
file and by kind, is beside it. Everything from the data is shown as text (st.text)."""

from __future__ import annotations

import streamlit as st

from common import ab
from curate.review import append_line, plain

BUTTONS = (("left", "Left is better", "Left"), ("right", "Right is better", "Right"), ("tie", "Tie", "T"),
           ("both_bad", "Both bad", "B"))
BOX_HEIGHT = 340  # pixels: both answers in boxes of this height, scrolling


def page(cfg, kept: list[dict]) -> None:
    items, info = ab.items(cfg, {r["id"]: r for r in kept})
    systems, path = info["systems"], ab.path(cfg)
    loaded = ab.load(path)
    for bad in loaded["corrupted"]:
        st.warning(f"skipped a corrupted line in {ab.FILE}: {plain(bad)}")
    done = {k[0] for k in loaded["latest"] if list(k[1:]) == systems}
    st.progress(len(done & {i["item"] for i in items}) / max(1, len(items)),
                text=f"judged {len(done & {i['item'] for i in items})} / {len(items)}")
    scoreboard(loaded, systems, info)
    reveal = st.session_state.pop("ab_reveal", None)
    if reveal:
        st.success(reveal)
    todo = [i for i in items if i["item"] not in done]
    if not items:
        st.info(f"Nothing to compare between {plain(systems[0])} and {plain(systems[1])}: run `make eval` first (it writes "
                "the answers to runs/<name>/eval/samples.jsonl and ab_train.jsonl); review.ab names the two systems.")
        return
    if not todo:
        st.info("Every item has a judgement. The next `make curate` turns them into preference pairs.")
        return
    it = todo[0]
    left = ab.left_system(cfg.review.seed, it["item"], systems)
    right = systems[1] if left == systems[0] else systems[0]
    st.caption("Which answer is better? Keys: ← left · → right · t tie · b both bad. The systems are named after you decide.")
    with st.expander("earlier turns", expanded=False):
        for m in it["prompt"][:-1]:
            st.text(f"{m['role']}: {m['content']}")
    with st.chat_message("user"):
        st.text(it["prompt"][-1]["content"] if it["prompt"] else "")
    cols = st.columns(2)
    for col, name, system in ((cols[0], "Left", left), (cols[1], "Right", right)):
        with col:
            st.markdown(f"**{name}**")
            with st.container(height=BOX_HEIGHT, border=True):
                st.text(it["answers"][system])
    buttons = st.columns(len(BUTTONS))
    for col, (choice, label, key) in zip(buttons, BUTTONS):
        if col.button(label, shortcut=key, key=f"ab_{choice}", type="primary" if choice in ("left", "right") else "secondary"):
            j = append_line(path, ab.judgement(it, systems, cfg.review.seed, choice, cfg.review.reviewer))
            said = {"left": f"left ({left})", "right": f"right ({right})", "tie": "a tie", "both_bad": "both bad"}[choice]
            st.session_state["ab_reveal"] = (f"Recorded: {said}. Left was {left}, right was {right}"
                                             + (f"; {j['winner']} wins this one." if j["winner"] else "."))
            st.rerun()


def scoreboard(loaded: dict, systems: list[str], info: dict) -> None:
    """The win rate of the second system on held-out (val) prompts with its Wilson 95% interval, by file and kind;
    judgements on train prompts count as training pairs only (the tuned model has seen those answers)."""
    import pandas as pd

    rates = ab.win_rates(loaded, systems, "val")
    train = ab.win_rates(loaded, systems, "train")["judged"]
    a, b = systems
    if rates["judged"]:
        lo, hi = rates["ci95"]
        st.sidebar.markdown(f"**{plain(b)} vs {plain(a)}** on held-out prompts: win rate **{rates['win_rate']:.2f}** "
                            f"(95% CI {lo:.2f}–{hi:.2f}, n={rates['judged']}; ties and both-bad count half)")
    else:
        st.sidebar.markdown(f"**{plain(b)} vs {plain(a)}**: no judgements on held-out prompts yet")
    st.sidebar.caption(f"{train} judgements on train prompts (training pairs, not in the win rate); "
                       f"{info['identical']} items with identical answers left out")
    for field in ("by_kind", "by_file"):
        if rates[field]:
            st.sidebar.dataframe(pd.DataFrame([{field[3:]: g, "n": t["judged"], "win rate": t["win_rate"],
                                                "95% CI": f"{t['ci95'][0]:.2f}–{t['ci95'][1]:.2f}"}
                                               for g, t in rates[field].items()]), hide_index=True)


def both_bad_first(cfg, sample: list[str], kept_ids: set[str]) -> list[str]:
    """The review queue with the rows whose A/B answers were both judged bad first (to rewrite their answer)."""
    _, counts = ab.pairs(ab.load(ab.path(cfg)), {i: "" for i in kept_ids})
    first = [i for i in counts["both_bad_ids"] if i in kept_ids]
    return first + [i for i in sample if i not in set(first)]

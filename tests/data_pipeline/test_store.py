"""The completion store: keys, missing indices, idempotent writes, survival of a SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

from data_pipeline.store import CompletionStore
from data_pipeline.teachers import Completion

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def comp(q: str, s: int, teacher: str = "r1", version: str = "v1", text: str = "x") -> Completion:
    return Completion(q, teacher, version, s, text, None, "stop", 3, 5)


def test_keys_missing_and_no_duplicates(tmp_path):
    st = CompletionStore(str(tmp_path / "s.sqlite"))
    assert st.missing("src/q1", ("r1", "v1"), 4) == [0, 1, 2, 3]
    assert st.put([comp("src/q1", 0), comp("src/q1", 2)]) == 2
    # Same key again (a retried response): nothing new, the first text stays.
    assert st.put([comp("src/q1", 2, text="other"), comp("src/q1", 3)]) == 1
    assert st.missing("src/q1", ("r1", "v1"), 4) == [1]
    assert st.missing("src/q1", ("r1", "v2"), 2) == [0, 1]  # another prompt version is another key
    assert st.missing("src/q1", ("gpt4o", "v1"), 2) == [0, 1]
    got = st.get("src/q1", ("r1", "v1"))
    assert [c.sample_index for c in got] == [0, 2, 3]
    assert got[1].content == "x" and got[1].completion_tokens == 5
    assert [c.sample_index for c in st.get("src/q1", ("r1", "v1"), n=3)] == [0, 2]
    assert st.count() == 3 and st.count(("r1", "v2")) == 0
    st.close()
    with CompletionStore(str(tmp_path / "s.sqlite")) as st2:  # persisted
        assert st2.count() == 3


def test_threads_write_concurrently(tmp_path):
    st = CompletionStore(str(tmp_path / "s.sqlite"))

    def work(t: int) -> None:
        for s in range(50):
            st.put([comp(f"q{s % 5}", s, teacher=f"t{t % 2}")])

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert st.count() == 100  # 2 teacher names x 50 indices; the other 2 threads wrote duplicates


WRITER = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {repo!r})
    from data_pipeline.store import CompletionStore
    from data_pipeline.teachers import Completion
    st = CompletionStore({db!r})
    for i in range(100000):
        st.put([Completion("q", "t", "v", i, "text" * 50)])
        if i == 200:
            print("ready", flush=True)
    """
)


def test_committed_rows_survive_sigkill(tmp_path):
    db = str(tmp_path / "s.sqlite")
    p = subprocess.Popen([sys.executable, "-c", WRITER.format(repo=REPO, db=db)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    time.sleep(0.05)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    st = CompletionStore(db)
    n = st.count()
    assert 200 < n < 100000
    # Rows are a contiguous prefix: every committed transaction is there, none half-written.
    assert st.missing("q", ("t", "v"), n) == []
    assert st.get("q", ("t", "v"))[-1].content == "text" * 50

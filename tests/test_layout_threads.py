"""Layout builds run on one torch thread, a process-wide setting: builds from several Python
threads must not leave the process on one thread."""

import threading

import torch

from vilg.layouts import Layout


def test_interleaved_builds_restore_the_thread_count():
    # B starts inside A's build and ends after it: without one build at a time, B saves the
    # "1" that A set and restores it last
    a_in, b_in, a_done = threading.Event(), threading.Event(), threading.Event()
    seen = []

    def mod_a(q, k):
        seen.append(torch.get_num_threads())
        a_in.set()
        b_in.wait(0.3)  # one build at a time: B cannot start, this times out
        return k <= q

    def mod_b(q, k):
        b_in.set()
        a_done.wait(2.0)
        return k <= q

    def build_a():
        Layout.from_mask_mod(mod_a, 100)
        a_done.set()

    def build_b():
        a_in.wait(2.0)
        Layout.from_mask_mod(mod_b, 100)

    torch.set_num_threads(2)
    workers = [threading.Thread(target=build_a), threading.Thread(target=build_b)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert seen and set(seen) == {1}  # the builds do run on one thread
    assert torch.get_num_threads() == 2

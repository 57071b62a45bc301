"""The training thread policy: the cores other processes leave free, measured from /proc/stat."""
import os
import subprocess
import sys
import time

import pytest
import torch

from utils.threads import ThreadPolicy, busy_cpu_seconds, threads_for


def test_threads_follow_the_free_cores():
    assert threads_for(cores=2, others=0.05, ceiling=2) == 2    # idle machine: all of them
    assert threads_for(cores=2, others=0.67, ceiling=2) == 1    # one busy process sharing with our 2 threads
    assert threads_for(cores=2, others=1.0, ceiling=2) == 1
    assert threads_for(cores=2, others=3.0, ceiling=2) == 1    # never fewer than one
    assert threads_for(cores=16, others=1.0, ceiling=8) == 8    # never more than torch's own default


def write_stat(path, busy_ticks, idle_ticks):
    with open(path, 'w') as f:
        f.write(f'cpu  {busy_ticks} 0 0 {idle_ticks} 0 0 0 0 0 0\n')
        for i in range(os.cpu_count() or 1):
            f.write(f'cpu{i} {busy_ticks} 0 0 {idle_ticks} 0 0 0 0 0 0\n')


def test_busy_seconds_sum_only_our_cores(tmp_path):
    stat = tmp_path / 'stat'
    write_stat(stat, busy_ticks=100, idle_ticks=50)
    hz = os.sysconf('SC_CLK_TCK')
    assert busy_cpu_seconds([0], str(stat)) == pytest.approx(100 / hz)
    assert busy_cpu_seconds([0, 1], str(stat)) == pytest.approx(200 / hz if (os.cpu_count() or 1) > 1 else 100 / hz)
    assert busy_cpu_seconds([0], str(tmp_path / 'missing')) is None


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_fixed_threads_are_never_changed(restore_threads):
    policy = ThreadPolicy(requested=1, interval=0.0)
    assert torch.get_num_threads() == 1
    assert policy.adjust() == 1


@pytest.mark.skipif(not os.path.exists('/proc/stat'), reason='the load is read from /proc/stat (Linux)')
def test_a_busy_process_takes_a_thread_away_and_gives_it_back(restore_threads):
    if len(os.sched_getaffinity(0)) < 2 or torch.get_num_threads() < 2:
        pytest.skip('needs two cores to share')
    policy = ThreadPolicy(interval=0.5)
    time.sleep(0.6)
    idle = policy.adjust()
    busy = subprocess.Popen([sys.executable, '-c', 'while True: pass'])
    try:
        time.sleep(0.3)
        policy.last = policy.sample()  # measure only while the busy process runs
        time.sleep(0.7)
        loaded = policy.adjust()
    finally:
        busy.kill()
        busy.wait()
    time.sleep(0.1)
    policy.last = policy.sample()
    time.sleep(0.6)
    after = policy.adjust()
    assert loaded == idle - 1 and torch.get_num_threads() == after
    assert after == idle

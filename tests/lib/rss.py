"""The tests' one reader of a process's resident set size (/proc/PID/status)
and one sampler of its peak while something runs."""

import threading


def rss_kib(pid):
    """Resident set size of a process, from /proc/PID/status (KiB)."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/%d/status" % pid)


def rss_bytes(pid):
    return rss_kib(pid) * 1024


class RssWatch:
    """Samples a process's RSS on a thread every `interval` seconds until
    stopped: .base is the RSS at the start, .peak the most seen (KiB);
    stop() returns the growth, peak - base (KiB)."""

    def __init__(self, pid, interval=0.01):
        self.pid = pid
        self.interval = interval
        self.base = rss_kib(pid)
        self.peak = self.base
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        while not self._stop.wait(self.interval):
            try:
                self.peak = max(self.peak, rss_kib(self.pid))
            except (OSError, AssertionError):
                return

    def stop(self):
        self._stop.set()
        self._t.join(5)
        return self.peak - self.base

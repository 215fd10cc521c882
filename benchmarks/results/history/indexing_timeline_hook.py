import os, time
def first(path, backend):
    with open("/proc/self/stat") as f:
        start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
    btime = next(int(l.split()[1]) for l in open("/proc/stat") if l.startswith("btime"))
    started = btime + start_ticks / os.sysconf("SC_CLK_TCK")
    with open("/tmp/s12hook.log", "a") as f:
        f.write(f"{os.getpid()} {time.time():.4f} {started:.3f} {path}\n")

"""Holds listening TCP sockets as a systemd .socket unit does and runs a service on them.

Usage: socket-holder.py [--exec] HOST:PORT [HOST:PORT ...] -- COMMAND [ARG ...]

Binds and listens on every address, then starts COMMAND with the sockets as descriptors 3, 4, ...
and LISTEN_PID / LISTEN_FDS set as sd_listen_fds(3) reads them; starts it again on each SIGUSR1.
The sockets stay open (and keep their backlog) while no COMMAND runs. SIGTERM stops the
commands still running and exits. With --exec it becomes COMMAND instead (one run, its exit
status is the holder's). Loopback test helper; it never accepts a connection itself.
"""
import os
import signal
import socket
import sys
import time

sep = sys.argv.index("--")
addresses, command = sys.argv[1:sep], sys.argv[sep + 1 :]
once = addresses[:1] == ["--exec"]
addresses = addresses[1:] if once else addresses
sockets = []
for address in addresses:
    host, port = address.rsplit(":", 1)
    host = host.strip("[]")
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, int(port)))
    s.listen(128)
    sockets.append(s)

children = set()
starts = 1  # one run at once, then one per SIGUSR1


def become_command():
    # Out of the way first, so that placing one on 3 + i cannot overwrite another.
    high = [os.dup2(s.fileno(), 200 + i) for i, s in enumerate(sockets)]
    for i, fd in enumerate(high):
        os.dup2(fd, 3 + i)  # inheritable, unlike the socket's own descriptor
        os.close(fd)
    os.environ["LISTEN_PID"] = str(os.getpid())
    os.environ["LISTEN_FDS"] = str(len(sockets))
    os.execvp(command[0], command)


def start():
    pid = os.fork()
    if pid == 0:
        become_command()
    children.add(pid)


if once:
    become_command()


def on_usr1(signum, frame):
    global starts
    starts += 1


def on_term(signum, frame):
    for pid in children:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    sys.exit(0)


signal.signal(signal.SIGUSR1, on_usr1)
signal.signal(signal.SIGTERM, on_term)
while True:
    while starts > 0:
        starts -= 1
        start()
    time.sleep(0.05)
    for pid in list(children):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            children.discard(pid)

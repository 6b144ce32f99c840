#!/usr/bin/env python3
"""An ingest load generator that shares no code with meter-sim (issue 14's pattern).

Opens CONNECTIONS loopback connections to meterd at once; each writes its meter's READINGS readings
as fast as its socket takes them (the whole backlog is in user space from the start), half-closes
its write side, then reads acks until meterd closes the connection. Prints JSON: how many readings
were written and acknowledged, the elapsed time, and meterd's peak RSS (VmHWM) if --pid is given.

  Benchmarks/burstgen.py --port 7700 [--connections 10000] [--readings 100] [--pid METERD_PID]

Bounded: it stops after --timeout seconds whatever happens and exits 1 if anything was not acked.
"""
import argparse, json, os, re, resource, select, socket, sys, time

ACK = re.compile(rb'\{"meter":"([^"]+)","ack":(\d+)\}')


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--readings", type=int, default=100)
    parser.add_argument("--pid", type=int, help="meterd's pid, for its peak RSS")
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args()
    if args.host not in ("127.0.0.1", "::1", "localhost"):
        sys.exit("burstgen: loopback only")
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    first_seq = int(time.time() * 1e6)
    ts = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
    poller = select.epoll()
    pending, highest_ack, connections = {}, {}, {}
    start = time.monotonic()
    for index in range(args.connections):
        meter = f"BURST-{index + 1:06d}"
        payload = b"".join(
            f'{{"meter":"{meter}","seq":{first_seq + n},"ts":"{ts}","kwh":0.25,"status":"good","v":230.1}}\n'.encode()
            for n in range(args.readings))
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            sock.connect((args.host, args.port))
        except BlockingIOError:
            pass
        connections[sock.fileno()] = sock
        pending[sock.fileno()] = [meter, memoryview(payload), b"", False]
        highest_ack[meter] = None
        poller.register(sock.fileno(), select.EPOLLOUT | select.EPOLLIN | select.EPOLLRDHUP)

    written = 0
    last_seq = first_seq + args.readings - 1
    while connections and time.monotonic() - start < args.timeout:
        for fd, events in poller.poll(1.0):
            sock = connections[fd]
            state = pending[fd]
            if events & select.EPOLLOUT and state[1]:
                try:
                    sent = sock.send(state[1])
                    written += sent
                    state[1] = state[1][sent:]
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError:
                    state[1] = memoryview(b"")
                if not state[1] and not state[3]:
                    state[3] = True
                    try:
                        sock.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
                    poller.modify(fd, select.EPOLLIN | select.EPOLLRDHUP)
            if events & (select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR):
                try:
                    data = sock.recv(65536)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
                if data:
                    buffered = state[2] + data
                    cut = buffered.rfind(b"\n") + 1
                    for match in ACK.finditer(buffered[:cut]):
                        highest_ack[match.group(1).decode()] = int(match.group(2))
                    state[2] = buffered[cut:]
                else:
                    poller.unregister(fd)
                    sock.close()
                    del connections[fd]
    elapsed = time.monotonic() - start
    acked = sum(0 if seq is None else seq - first_seq + 1 for seq in highest_ack.values())
    peak = None
    if args.pid:
        for line in open(f"/proc/{args.pid}/status"):
            if line.startswith("VmHWM:"):
                peak = round(int(line.split()[1]) / 1024, 1)
    result = {"connections": args.connections, "readings": args.connections * args.readings, "acked": acked,
              "fully_acked_meters": sum(1 for seq in highest_ack.values() if seq == last_seq),
              "bytes_written": written, "elapsed_s": round(elapsed, 1), "meterd_peak_rss_mb": peak,
              "left_open": len(connections)}
    print(json.dumps(result))
    sys.exit(0 if acked == args.connections * args.readings else 1)


if __name__ == "__main__":
    main()

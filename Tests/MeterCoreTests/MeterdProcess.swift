#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Synchronization
import Testing

@testable import MeterCore

/// Where the built executables are: next to the test bundle (`swift test` builds them there).
enum BuiltProduct {
    static func path(_ name: String) throws -> String {
        let buildDirectory = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().deletingLastPathComponent()
        let path = buildDirectory.appendingPathComponent(name).path
        guard FileManager.default.isExecutableFile(atPath: path) else {
            Issue.record("\(name) is not built beside the tests (\(path)); run `swift build --build-tests`")
            throw CancellationError()
        }
        return path
    }
}

/// Has the child close every descriptor from `lowest` up: glibc's (2.34 and later)
/// `posix_spawn_file_actions_addclosefrom_np`, which Swift's Glibc module does not import.
private func closeFrom(_ lowest: CInt, in actions: inout posix_spawn_file_actions_t) {
    typealias AddCloseFrom = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, CInt) -> CInt
    guard let symbol = dlsym(nil, "posix_spawn_file_actions_addclosefrom_np") else {
        fatalError("posix_spawn_file_actions_addclosefrom_np is missing: the tests need glibc 2.34 or later")
    }
    let result = unsafeBitCast(symbol, to: AddCloseFrom.self)(&actions, lowest)
    precondition(result == 0, "posix_spawn_file_actions_addclosefrom_np: \(String(cString: strerror(result)))")
}

/// A child process started with `posix_spawn`, with chosen environment and inherited fds;
/// stdout and stderr go to a file.
final class ChildProcess: Sendable {
    let pid: pid_t
    let outputPath: String
    private let status = Mutex<Int32?>(nil)

    /// - Parameters:
    ///   - arguments: program path, then its arguments.
    ///   - inheritedFDs: descriptors the child gets as 3, 4, 5, … (socket activation).
    init(_ arguments: [String], environment: [String: String], outputPath: String, inheritedFDs: [CInt] = []) throws {
        self.outputPath = outputPath
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, outputPath, O_WRONLY | O_CREAT | O_APPEND, 0o644)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        // Only these are passed. Move the fds out of the way first, so dup2 onto 3, 4, … cannot
        // clobber one still needed.
        let high = inheritedFDs.map { fcntl($0, F_DUPFD_CLOEXEC, 200) }
        defer { high.forEach { close($0) } }
        for (index, fd) in high.enumerated() {
            posix_spawn_file_actions_adddup2(&actions, fd, CInt(3 + index))
        }
        // Nothing else: NIO opens its sockets without close-on-exec, so a child would hold the
        // test's connections open after the test closed them (a PostgreSQL session, and the
        // singleton lock it held, outlived its close until the child exited).
        closeFrom(CInt(3 + high.count), in: &actions)
        let envp: [UnsafeMutablePointer<CChar>?] = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { envp.forEach { free($0) } }
        // setpriv --pdeathsig: the child dies with the test process even if a test crashes. The
        // signal follows the spawning *thread*, so spawning happens on one thread that never exits.
        let command = ["/usr/bin/setpriv", "--pdeathsig", "KILL"] + arguments
        let argv: [UnsafeMutablePointer<CChar>?] = command.map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        let (pid, result) = Spawner.shared.spawn { () -> (pid_t, Int32) in
            var pid: pid_t = 0
            let result = posix_spawn(&pid, argv[0]!, &actions, nil, argv, envp)
            return (pid, result)
        }
        guard result == 0 else {
            Issue.record("cannot start \(arguments[0]): \(String(cString: strerror(result)))")
            throw CancellationError()
        }
        self.pid = pid
    }

    /// The process's output so far.
    var output: String { (try? String(contentsOfFile: self.outputPath, encoding: .utf8)) ?? "" }

    func signal(_ number: Int32) {
        if self.exitStatus == nil { kill(self.pid, number) }
    }

    /// The exit status once it has exited (reaped here), else `nil`.
    var exitStatus: Int32? {
        self.status.withLock { status in
            if status == nil {
                var raw: Int32 = 0
                if waitpid(self.pid, &raw, WNOHANG) == self.pid {
                    status = (raw & 0x7f) == 0 ? (raw >> 8) & 0xff : 128 + (raw & 0x7f)
                }
            }
            return status
        }
    }

    /// Waits for the exit and returns its status (128 + signal when killed).
    func waitForExit(timeout: Duration = .seconds(30)) async throws -> Int32 {
        try await waitUntil(timeout: timeout) { self.exitStatus != nil }
        return self.exitStatus!
    }

    /// Kills it if still running; for `defer` after a failed test.
    func stop() {
        guard self.exitStatus == nil else { return }
        kill(self.pid, SIGKILL)
        var raw: Int32 = 0
        waitpid(self.pid, &raw, 0)
        self.status.withLock { $0 = 128 + SIGKILL }
    }
}

/// Runs spawns on one thread that lives as long as the test process (see `--pdeathsig`).
final class Spawner: @unchecked Sendable {  // state guarded by `lock`
    static let shared = Spawner()
    private let lock = NSCondition()
    private var job: (() -> Void)?

    private init() {
        let thread = Thread { [self] in
            while true {
                self.lock.lock()
                while self.job == nil { self.lock.wait() }
                let job = self.job!
                self.lock.unlock()
                job()
                self.lock.lock()
                self.job = nil
                self.lock.broadcast()
                self.lock.unlock()
            }
        }
        thread.name = "test-spawner"
        thread.start()
    }

    /// Runs `work` on the spawner thread and waits for it. The closure is escaping because the
    /// spawner thread holds it a moment after the caller has its result.
    func spawn<T>(_ work: @escaping () -> T) -> T {
        var result: T?
        self.lock.lock()
        while self.job != nil { self.lock.wait() }
        self.job = { result = work() }
        self.lock.broadcast()
        while result == nil { self.lock.wait() }
        self.lock.unlock()
        return result!
    }
}

/// The real `meterd` on a temporary data directory, on ephemeral ports.
struct MeterdUnderTest {
    let process: ChildProcess
    let dataDirectory: String
    var statusSocket: String { self.dataDirectory + "/status.sock" }

    /// Starts meterd; `wrapper` runs in front of it (`unshare …`, `sh -c 'LISTEN_PID=$$ exec "$@"' sh`).
    /// `ingest` and `http` default to ephemeral ports; a restart passes the ports it had before.
    static func start(
        dataDirectory: String, arguments: [String] = [], environment: [String: String] = [:],
        wrapper: [String] = [], inheritedFDs: [CInt] = [], ingest: String = "127.0.0.1:0", http: String = "127.0.0.1:0"
    ) throws -> MeterdUnderTest {
        let binary = try BuiltProduct.path("meterd")
        try FileManager.default.createDirectory(atPath: dataDirectory, withIntermediateDirectories: true)
        var env = ["PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": dataDirectory]
        env.merge(environment) { _, new in new }
        let process = try ChildProcess(
            wrapper + [
                binary, "--data-dir", dataDirectory, "--ingest", ingest, "--http", http,
                "--status-socket", dataDirectory + "/status.sock",
            ] + arguments,
            environment: env, outputPath: dataDirectory + "/meterd.log", inheritedFDs: inheritedFDs)
        return MeterdUnderTest(process: process, dataDirectory: dataDirectory)
    }

    /// Ports from `ports.json`, once both listeners are bound.
    func ports() async throws -> (ingest: Int, http: Int) {
        var result: (Int, Int)?
        try await waitUntil {
            if let exit = self.process.exitStatus {
                Issue.record("meterd exited with \(exit) before listening:\n\(self.process.output)")
                throw CancellationError()
            }
            guard let data = FileManager.default.contents(atPath: self.dataDirectory + "/ports.json"),
                let object = try? JSONSerialization.jsonObject(with: data) as? [String: Int],
                let ingest = object["ingest"], let http = object["http"]
            else { return false }
            result = (ingest, http)
            return true
        }
        return result!
    }

    /// SIGTERM, then the exit status.
    func terminate() async throws -> Int32 {
        self.process.signal(SIGTERM)
        return try await self.process.waitForExit()
    }
}

/// A Unix datagram socket bound at a path, collecting what arrives (sd_notify, journald).
final class DatagramReceiver: Sendable {
    let path: String
    private let fd: CInt
    private let received = Mutex<[[UInt8]]>([])
    private let closed = Atomic<Bool>(false)

    init(path: String) throws {
        self.path = path
        unlink(path)
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        self.fd = fd
        guard fd >= 0, UnixSocketAddress.with(path: path, { bind(fd, $0, $1) }) == 0 else {
            Issue.record("cannot bind a datagram socket at \(path): \(String(cString: strerror(errno)))")
            throw CancellationError()
        }
        chmod(path, 0o666)
        var timeout = timeval(tv_sec: 0, tv_usec: 100_000)
        setsockopt(self.fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        let thread = Thread { [self] in self.receiveLoop() }
        thread.start()
    }

    private func receiveLoop() {
        var buffer = [UInt8](repeating: 0, count: 1 << 17)
        while !self.closed.load(ordering: .relaxed) {
            let count = buffer.withUnsafeMutableBytes { recv(self.fd, $0.baseAddress, $0.count, 0) }
            if count > 0 {
                let datagram = Array(buffer[..<count])
                self.received.withLock { $0.append(datagram) }
            }
        }
        Glibc.close(self.fd)
    }

    /// Every datagram so far, as text.
    var messages: [String] { self.received.withLock { $0.map { String(decoding: $0, as: UTF8.self) } } }

    var datagrams: [[UInt8]] { self.received.withLock { $0 } }

    func close() {
        self.closed.store(true, ordering: .relaxed)
        unlink(self.path)
    }
}

/// A listening socket made by hand, as systemd would pass it.
enum ListeningSocket {
    /// TCP on 127.0.0.1 with an ephemeral port.
    static func tcp() throws -> (fd: CInt, port: Int) {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let ok = withUnsafeMutablePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, length) == 0 && listen(fd, 128) == 0 && getsockname(fd, $0, &length) == 0
            }
        }
        guard fd >= 0, ok else {
            Issue.record("cannot make a TCP listener: \(String(cString: strerror(errno)))")
            throw CancellationError()
        }
        return (fd, Int(UInt16(bigEndian: address.sin_port)))
    }

    /// A Unix stream socket at a path.
    static func unix(path: String) throws -> CInt {
        unlink(path)
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0, UnixSocketAddress.with(path: path, { bind(fd, $0, $1) }) == 0, listen(fd, 16) == 0 else {
            Issue.record("cannot make a Unix listener at \(path): \(String(cString: strerror(errno)))")
            throw CancellationError()
        }
        return fd
    }
}

/// A plain HTTP/1.1 GET over a fresh connection: status code and body.
func httpGet(port: Int, path: String) async throws -> (status: Int, body: String) {
    let client = try await LineClient(port: port)
    defer { Task { await client.close() } }
    try await client.send("GET \(path) HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    var lines: [String] = []
    while let line = try await client.readLine() { lines.append(line) }
    let status = lines.first.flatMap { Int($0.split(separator: " ").dropFirst().first ?? "") } ?? 0
    let body = lines.drop { !$0.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty }.dropFirst().map { $0 + "\n" }.joined()
    return (status, body)
}

/// Runs blocking work (a socket read, waiting for a process) on its own thread, so it never
/// holds one of the few cooperative threads the daemon under test needs too.
func offPool<T: Sendable>(_ work: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        Thread { continuation.resume(with: Result { try work() }) }.start()
    }
}

/// One status socket command and its answer line, off the cooperative pool.
func ask(_ path: String, _ command: String) async throws -> String {
    try await offPool { try StatusClient(path: path).send(command) }
}

/// Runs a program to completion: stdin from `input`, stdout and stderr captured through files.
///
/// posix_spawn on the spawner thread rather than Foundation's `Process` and pipes: under the
/// parallel suite `Process.run()` crashed in memcpy and `readDataToEndOfFile()` trapped on EINTR.
func runProgram(
    _ arguments: [String], input: String? = nil, environment: [String: String]? = nil
) throws
    -> (status: Int32, stdout: String, stderr: String)
{
    let directory = NSTemporaryDirectory() + "meterd-run-" + UUID().uuidString
    try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: directory) }
    let (inPath, outPath, errPath) = (directory + "/in", directory + "/out", directory + "/err")
    try (input ?? "").write(toFile: inPath, atomically: false, encoding: .utf8)
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 0, inPath, O_RDONLY, 0)
    posix_spawn_file_actions_addopen(&actions, 1, outPath, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
    posix_spawn_file_actions_addopen(&actions, 2, errPath, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
    // None of the test's descriptors (see ``ChildProcess``).
    closeFrom(3, in: &actions)
    let env = environment ?? ProcessInfo.processInfo.environment
    let envp: [UnsafeMutablePointer<CChar>?] = env.map { strdup("\($0.key)=\($0.value)") } + [nil]
    defer { envp.forEach { free($0) } }
    let argv: [UnsafeMutablePointer<CChar>?] = arguments.map { strdup($0) } + [nil]
    defer { argv.forEach { free($0) } }
    let (pid, result) = Spawner.shared.spawn { () -> (pid_t, Int32) in
        var pid: pid_t = 0
        let result = posix_spawnp(&pid, argv[0]!, &actions, nil, argv, envp)
        return (pid, result)
    }
    guard result == 0 else {
        throw CocoaError(
            .executableNotLoadable, userInfo: [NSLocalizedDescriptionKey: "cannot start \(arguments[0]): \(String(cString: strerror(result)))"])
    }
    var raw: Int32 = 0
    while waitpid(pid, &raw, 0) < 0, errno == EINTR {}
    let status = (raw & 0x7f) == 0 ? (raw >> 8) & 0xff : 128 + (raw & 0x7f)
    let read = { (path: String) in (try? String(contentsOfFile: path, encoding: .utf8)) ?? "" }
    return (status, read(outPath), read(errPath))
}

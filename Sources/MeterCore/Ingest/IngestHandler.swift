#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Logging
import NIOCore
import Synchronization

/// Limits applied to every line a meter sends.
package struct LineLimits: Sendable {
    /// Longest accepted line in bytes, without its `\n` or `\r\n`.
    package var maximumLineLength: Int = 4096
    /// How far past the daemon's clock a reading's `ts` may be, in milliseconds.
    package var clockSkewMs: Int64 = 300_000
    /// A connection that sends nothing for this long is closed.
    package var idleTimeout: TimeAmount = .seconds(3600)
    /// Whether each reading keeps the bytes the meter sent, for the quarantine when the writer
    /// rejects it (`unknown_meters = reject`); off otherwise, as it costs a copy per reading.
    package var keepsReadingBytes = false

    package init(maximumLineLength: Int = 4096, clockSkewMs: Int64 = 300_000, idleTimeout: TimeAmount = .seconds(3600)) {
        self.maximumLineLength = maximumLineLength
        self.clockSkewMs = clockSkewMs
        self.idleTimeout = idleTimeout
    }
}

/// One meter connection: splits lines in the receive buffer, decodes them, hands them to the
/// pipeline once per read, and writes acks and errors back.
///
/// Lines are split inside this handler rather than by a frame decoder: one pipeline event per
/// line costs ~0.5 µs, about what decoding the whole line costs. Back-pressure: while the
/// pipeline is full, `read` is not passed on, so the kernel's buffers fill and TCP slows the meter.
///
/// Not passing `read` on does not stop every read, though: a read already asked for still happens
/// when the socket turns readable, and once the meter half-closes, NIO reads everything left in
/// the kernel's receive buffer at once, whatever was asked (`BaseSocketChannel.readEOF0`). Bytes
/// that arrive while the pipeline is full are therefore held here as they came, not parsed and
/// not queued, and go to the pipeline in order once it has room: the queue stays at its capacity
/// and what a connection holds is bounded by its receive buffer (`IngestServer` caps it).
final class IngestHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = Never
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private static let busyLine = #"{"busy":true,"retry_after_ms":500}"# + "\n"

    /// What every connection of a server shares: one reference here rather than a copy of each
    /// (~120 bytes a connection: the parser, the limits, the logger, the callback).
    final class Shared: Sendable {
        let pipeline: IngestPipeline
        let parser: ReadingParser
        let limits: LineLimits
        let statistics: IngestStatistics
        let onStateChange: @Sendable (ConnectionEvent) -> Void
        let logger: Logger

        init(
            pipeline: IngestPipeline, parser: ReadingParser, limits: LineLimits, statistics: IngestStatistics,
            logger: Logger = Logger(label: "meterd", factory: { _ in SwiftLogNoOpLogHandler() }),
            onStateChange: @escaping @Sendable (ConnectionEvent) -> Void
        ) {
            self.pipeline = pipeline
            self.parser = parser
            self.limits = limits
            self.statistics = statistics
            self.onStateChange = onStateChange
            self.logger = logger
        }
    }

    private let shared: Shared
    private var pipeline: IngestPipeline { self.shared.pipeline }
    private var parser: ReadingParser { self.shared.parser }
    private var limits: LineLimits { self.shared.limits }
    private var statistics: IngestStatistics { self.shared.statistics }
    private var onStateChange: @Sendable (ConnectionEvent) -> Void { self.shared.onStateChange }
    private var logger: Logger { self.shared.logger }

    private var context: ChannelHandlerContext?
    private var receiver: ConnectionAckReceiver?
    private var peer = ""
    /// The client certificate's identity (``MeterIdentity``), once the TLS handshake has named one.
    private var peerIdentity: String?
    /// With `meter_auth = certificate`: which meters this connection may send for.
    private var authorization: ConnectionAuthorization?
    /// A refused reading is logged once per connection, not once per line.
    private var loggedForbidden = false
    private var carry: ByteBuffer?
    /// Bytes received while the pipeline was full (or behind a full submission), not yet parsed:
    /// they follow `carry`, and nothing is read from the socket while there are any.
    private var held: ByteBuffer?
    private var discarding = false
    private var lineNumber = 0
    private var receivedMs: Int64 = 0
    private var readings: [SubmittedReading] = []
    private var quarantined: [QuarantinedLine] = []
    private var output: ByteBuffer?
    private var paused = false
    /// Resumed by the pipeline and not yet submitted since: may take room while ``IngestPipeline/isFull``
    /// still holds back the connections paused after this one.
    private var granted = false
    private var stopped = false
    private var readPending = false
    private var inputClosed = false
    private var unsettledSubmissions = 0
    private var lastReadTime = NIODeadline.now()

    /// What the server's connection registry learns about this connection.
    enum ConnectionEvent: Sendable {
        case opened(ConnectionAckReceiver)
        case closed(ConnectionAckReceiver)
    }

    /// - Parameter authorization: set with `meter_auth = certificate`: readings only for the meters
    ///   the TLS handshake's identity covers (``IngestPeerEvent``), `forbidden` for the rest.
    init(shared: Shared, authorization: ConnectionAuthorization? = nil) {
        self.shared = shared
        self.authorization = authorization
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        self.peer = context.channel.remoteAddress?.description ?? "unknown"
        let receiver = ConnectionAckReceiver(channel: context.channel, handler: NIOLoopBoundBox(self, eventLoop: context.eventLoop))
        self.receiver = receiver
        self.statistics.connections.add(1, ordering: .relaxed)
        self.onStateChange(.opened(receiver))
    }

    /// Closes the connection if nothing arrived for `idle_timeout`: called by the server's
    /// ``IdleConnectionSweep``, not by a timer of its own.
    ///
    /// A connection that waits for meterd (paused on a full queue, or for the commit of readings it
    /// sent) is not silent: closing it would drop the acks the meter waits for and make it resend
    /// everything. Its clock starts once meterd has answered.
    func closeIfIdle(now: NIODeadline) {
        if self.paused || self.held != nil || self.unsettledSubmissions > 0 {
            self.lastReadTime = now
            return
        }
        guard now - self.lastReadTime >= self.limits.idleTimeout else { return }
        self.finish()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        // A reset or a close mid-stream: what was held is dropped unacknowledged (the meter resends it).
        if let held = self.held {
            self.statistics.heldBytes.subtract(held.readableBytes, ordering: .relaxed)
            self.held = nil
        }
        if let receiver = self.receiver {
            receiver.handler.value = nil
            self.statistics.connections.subtract(1, ordering: .relaxed)
            self.onStateChange(.closed(receiver))
        }
        self.receiver = nil
        self.context = nil
    }

    /// Most lines (readings and rejected lines) in one submission: with the pipeline's full flag
    /// checked before each, the queue never holds more than its capacity plus this many per event
    /// loop thread. One read (at most 4 KB, see ``IngestReceiveBuffers``) holds about 37 readings of
    /// ~110 bytes, so this only bites on unusually short lines.
    static let linesPerSubmission = 256

    /// Whether this connection may hand the pipeline another submission now. Checked before each
    /// one is parsed, so that the queue never exceeds its capacity by more than one submission per
    /// event loop thread.
    private var mayTake: Bool {
        !self.pipeline.isFull || (self.granted && self.pipeline.hasRoom)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buffer = Self.unwrapInboundIn(data)
        self.lastReadTime = .now()
        if self.held == nil, !self.paused, self.mayTake {
            self.receivedMs = WallClock.nowMs()
            self.consume(&buffer)
            if buffer.readableBytes == 0 { return }
        } else if !self.paused, !self.mayTake {
            // A read asked for before the queue filled, or the rest of the kernel's buffer after the
            // meter half-closed: keep the bytes, wait for room like every other reader. In a store
            // outage the meter hears why its readings go unacknowledged.
            self.pause(context: context, tellMeter: self.pipeline.isStalled)
        }
        self.hold(&buffer, context: context)
    }

    /// Splits and decodes lines from `buffer` until it is used up or the pending submission has
    /// ``linesPerSubmission`` lines; then the rest is left in `buffer`, starting at a line.
    private func consume(_ buffer: inout ByteBuffer) {
        let maximum = self.limits.maximumLineLength

        if self.discarding || self.carry != nil {
            guard let newline = buffer.readableBytesView.firstIndex(of: UInt8(ascii: "\n")) else {
                if !self.discarding {
                    self.carry!.writeBuffer(&buffer)
                    if self.carry!.readableBytes > maximum + 1 {  // + 1 leaves room for a '\r'
                        self.rejectOverlong(prefix: self.carry!)
                    }
                }
                buffer.moveReaderIndex(to: buffer.writerIndex)
                return
            }
            var rest = buffer.readSlice(length: newline - buffer.readerIndex)!
            buffer.moveReaderIndex(forwardBy: 1)
            if self.discarding {
                self.discarding = false
            } else {
                self.carry!.writeBuffer(&rest)
                let line = self.carry!
                self.carry = nil
                line.withUnsafeReadableBytes { self.processLine($0) }
            }
        }

        var full = false
        let consumed = buffer.withUnsafeReadableBytes { bytes -> Int in
            guard let base = bytes.baseAddress else { return 0 }
            var start = 0
            while start < bytes.count {
                if self.readings.count + self.quarantined.count >= Self.linesPerSubmission {
                    full = true
                    break
                }
                guard let found = memchr(base + start, 0x0A, bytes.count - start) else { break }
                let end = base.distance(to: UnsafeRawPointer(found))
                self.processLine(UnsafeRawBufferPointer(rebasing: bytes[start..<end]))
                start = end + 1
            }
            return start
        }
        buffer.moveReaderIndex(forwardBy: consumed)
        if full { return }
        if buffer.readableBytes > 0 {
            if buffer.readableBytes > maximum + 1 {
                self.rejectOverlong(prefix: buffer)
            } else {
                var carry = self.context!.channel.allocator.buffer(capacity: max(buffer.readableBytes, 256))
                carry.writeBuffer(&buffer)
                self.carry = carry
            }
            buffer.moveReaderIndex(to: buffer.writerIndex)
        }
    }

    /// Keeps received bytes for later, copied (holding NIO's receive buffer would make it allocate
    /// another) into a buffer of exactly their size: growing one would round it up to a power of
    /// two, up to twice the bytes, at thousands of paused connections.
    private func hold(_ buffer: inout ByteBuffer, context: ChannelHandlerContext) {
        self.statistics.heldBytes.add(buffer.readableBytes, ordering: .relaxed)
        if var held = self.held, held.writableBytes >= buffer.readableBytes {
            self.held = nil  // keep the storage uniquely referenced: no copy on write
            held.writeBuffer(&buffer)
            self.held = held
            return
        }
        var exact = context.channel.allocator.buffer(capacity: (self.held?.readableBytes ?? 0) + buffer.readableBytes)
        if var held = self.held { exact.writeBuffer(&held) }
        exact.writeBuffer(&buffer)
        self.held = exact
    }

    /// Parses and submits held bytes, a submission at a time, while the pipeline has room and the
    /// meter reads its acks; when stopping, all of them, so shutdown acknowledges what was received.
    private func drainHeld(context: ChannelHandlerContext) {
        while var held = self.held {
            if !self.stopped {
                guard !self.paused, context.channel.isWritable else { return }
                if !self.mayTake {
                    self.pause(context: context, tellMeter: false)
                    return
                }
            }
            self.held = nil
            self.receivedMs = WallClock.nowMs()
            let before = held.readableBytes
            self.consume(&held)
            self.statistics.heldBytes.subtract(before - held.readableBytes, ordering: .relaxed)
            if held.readableBytes > 0 { self.held = held }
            self.submitPending(context: context)
        }
    }

    /// Hands the lines decoded so far to the pipeline as one submission.
    private func submitPending(context: ChannelHandlerContext) {
        guard !self.readings.isEmpty || !self.quarantined.isEmpty else { return }
        let submission = IngestSubmission(
            readings: self.readings, quarantined: self.quarantined, receiver: self.receiver, peer: self.peer,
            peerIdentity: self.peerIdentity)
        self.readings = []
        self.quarantined = []
        self.unsettledSubmissions += 1
        self.granted = false  // one submission per resume, like one read per resume before
        if self.pipeline.submit(submission) == .full, !self.paused {
            self.pause(context: context)
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        self.submitPending(context: context)
        // Bytes held only because a submission reached linesPerSubmission go now, if there is room.
        self.drainHeld(context: context)
        self.flushOutput(context: context)
        context.fireChannelReadComplete()
    }

    func read(context: ChannelHandlerContext) {
        // A meter that does not read its acks must not make the daemon buffer them without bound;
        // held bytes go to the pipeline before anything more is read.
        if self.paused || self.stopped || self.held != nil || !context.channel.isWritable {
            self.readPending = true
        } else if !self.mayTake {
            // Every connection stops once the queue is full, not only those whose own submission
            // filled it: at 10 k connections one more readiness each could be ~800 k readings in memory.
            // The busy line went to those that filled it; TCP tells the rest. A store outage is
            // told to every meter: it may last long, and nothing sent now can be acknowledged.
            self.readPending = true
            let stalled = self.pipeline.isStalled
            self.pause(context: context, tellMeter: stalled)
            if stalled { self.flushOutput(context: context) }
        } else {
            context.read()
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { self.proceed(context: context) }
        context.fireChannelWritabilityChanged()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, event == .inputClosed {
            // The meter finished sending: answer what it sent, then close. NIO has read the whole
            // kernel buffer by now; what did not fit in the pipeline is held and goes as it drains.
            self.inputClosed = true
            self.closeIfSettled(context: context)
            return
        }
        if let event = event as? IngestPeerEvent, case .authenticated(let identity) = event {
            self.peerIdentity = identity?.description
            self.authorization?.authenticated(as: identity)
            self.logger.debug("Meter connection authenticated", metadata: ["peer": "\(self.peer)", "identity": "\(identity?.description ?? "none")"])
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }

    /// Writes the acks and writer-side rejections of a commit. Runs on the channel's event loop.
    func deliver(_ outcome: SubmissionOutcome) {
        guard let context = self.context else { return }
        self.unsettledSubmissions -= outcome.submissions
        if !outcome.acks.isEmpty || !outcome.rejections.isEmpty {
            var buffer = self.output ?? context.channel.allocator.buffer(capacity: outcome.acks.count * 40)
            for ack in outcome.acks {
                buffer.writeStaticString(#"{"meter":""#)
                buffer.writeString(ack.meter)
                buffer.writeStaticString(#"","ack":"#)
                buffer.writeDecimal(ack.seq)
                buffer.writeStaticString("}\n")
            }
            for (line, rejection) in outcome.rejections {
                Self.writeError(rejection, line: line, into: &buffer)
            }
            self.output = buffer
            self.statistics.acks.add(outcome.acks.count, ordering: .relaxed)
            self.flushOutput(context: context)
        }
        self.closeIfSettled(context: context)
    }

    /// Stops reading for good: the daemon is shutting down. What was received and held goes to
    /// the pipeline now, so it is committed and acknowledged before the connection closes.
    func stopReading() {
        self.stopped = true
        guard let context = self.context else { return }
        self.drainHeld(context: context)
        self.flushOutput(context: context)
    }

    /// Resumes once the pipeline has room again: held bytes first, then the socket.
    func resume() {
        guard self.paused else { return }
        self.paused = false
        self.granted = true
        if let context = self.context { self.proceed(context: context) }
    }

    /// Moves on after a pause or a full write buffer: held bytes, then a pending read or the close.
    private func proceed(context: ChannelHandlerContext) {
        self.drainHeld(context: context)
        self.flushOutput(context: context)
        self.readIfPending(context: context)
        self.closeIfSettled(context: context)
    }

    private func readIfPending(context: ChannelHandlerContext) {
        guard self.readPending, !self.paused, !self.stopped, self.held == nil, context.channel.isWritable else { return }
        if !self.mayTake {
            self.pause(context: context, tellMeter: false)
            return
        }
        self.readPending = false
        context.read()
    }

    /// Closes after everything written so far has reached the socket.
    func finish() {
        guard let context = self.context else { return }
        self.flushOutput(context: context)
        let channel = context.channel
        context.writeAndFlush(Self.wrapOutboundOut(channel.allocator.buffer(capacity: 0))).whenComplete { _ in
            channel.close(promise: nil)
        }
    }

    private func closeIfSettled(context: ChannelHandlerContext) {
        guard self.inputClosed, self.held == nil, self.unsettledSubmissions == 0 else { return }
        if let last = self.carry {
            // The meter ended its last line with the end of its input instead of a newline: it is
            // a line all the same, answered (acked or rejected) before the connection closes.
            self.carry = nil
            self.receivedMs = WallClock.nowMs()
            last.withUnsafeReadableBytes { self.processLine($0) }
            self.submitPending(context: context)
            self.flushOutput(context: context)
            if self.unsettledSubmissions > 0 { return }
        }
        self.inputClosed = false
        self.finish()
    }

    private func pause(context: ChannelHandlerContext, tellMeter: Bool = true) {
        self.paused = true
        self.granted = false
        if tellMeter {
            self.statistics.busySignals.add(1, ordering: .relaxed)
            var buffer = self.output ?? context.channel.allocator.buffer(capacity: 64)
            buffer.writeString(Self.busyLine)
            self.output = buffer
        }
        let handler = self.receiver!.handler
        let eventLoop = context.eventLoop
        self.pipeline.whenCapacityAvailable {
            eventLoop.execute { handler.value?.resume() }
        }
    }

    private func flushOutput(context: ChannelHandlerContext) {
        guard let output = self.output, output.readableBytes > 0 else { return }
        self.output = nil
        context.writeAndFlush(Self.wrapOutboundOut(output), promise: nil)
    }

    private func processLine(_ raw: UnsafeRawBufferPointer) {
        self.lineNumber += 1
        var line = raw
        if let last = line.last, last == UInt8(ascii: "\r") { line = UnsafeRawBufferPointer(rebasing: line.dropLast()) }
        // Blank lines (keep-alives, a stray newline) are skipped, with or without spaces and tabs.
        if line.allSatisfy({ $0 == UInt8(ascii: " ") || $0 == UInt8(ascii: "\t") }) { return }
        guard line.count <= self.limits.maximumLineLength else {
            self.reject(Rejection(.lineTooLong, "line of \(line.count) bytes exceeds the limit of \(self.limits.maximumLineLength)"), raw: line)
            return
        }
        do {
            let reading = try self.parser.parse(line)
            if self.authorization?.allows(reading.meter) == false {
                self.forbid(reading.meter, raw: line)
                return
            }
            guard reading.timestampMs <= self.receivedMs + self.limits.clockSkewMs else {
                self.reject(
                    meter: reading.meter,
                    Rejection(
                        .clockSkew,
                        "ts \(RFC3339.format(millisecondsSinceEpoch: reading.timestampMs)) is more than \(self.limits.clockSkewMs / 1000) s ahead of the daemon's clock"
                    ), raw: line)
                return
            }
            self.readings.append(
                SubmittedReading(
                    reading: reading, line: self.lineNumber, receivedMs: self.receivedMs,
                    bytes: self.limits.keepsReadingBytes ? Array(line) : nil))
        } catch {
            self.reject(error, raw: line)
        }
    }

    /// Refuses a reading for a meter the connection's certificate does not cover: answered,
    /// quarantined with the peer's identity and counted like any rejection, never stored.
    private func forbid(_ meter: String, raw: UnsafeRawBufferPointer) {
        let scope = self.authorization?.scope ?? ""
        if !self.loggedForbidden {
            self.loggedForbidden = true
            self.logger.warning(
                "Refused a reading for a meter this connection's certificate does not cover (logged once per connection)",
                metadata: [
                    "peer": "\(self.peer)", "identity": "\(self.peerIdentity ?? "none")", "meter": "\(meter)", "line": "\(self.lineNumber)",
                ])
        }
        self.reject(meter: meter, Rejection(.forbidden, "not allowed to send for meter \(meter): \(scope)"), raw: raw)
    }

    private func rejectOverlong(prefix: ByteBuffer) {
        self.lineNumber += 1
        self.carry = nil
        self.discarding = true
        let rejection = Rejection(.lineTooLong, "line exceeds the limit of \(self.limits.maximumLineLength) bytes")
        prefix.withUnsafeReadableBytes { self.reject(rejection, raw: UnsafeRawBufferPointer(rebasing: $0.prefix(256))) }
    }

    private func reject(meter: String? = nil, _ rejection: Rejection, raw: UnsafeRawBufferPointer) {
        self.statistics.countReject(rejection.code)
        self.logger.debug(
            "Rejected a line",
            metadata: {
                var metadata: Logger.Metadata = [
                    "peer": "\(self.peer)", "code": "\(rejection.code.rawValue)",
                    "line": "\(self.lineNumber)", "detail": "\(rejection.detail)",
                ]
                if let meter { metadata["meter"] = "\(meter)" }
                return metadata
            }())
        var buffer = self.output ?? self.context!.channel.allocator.buffer(capacity: 128)
        Self.writeError(rejection, line: self.lineNumber, into: &buffer)
        self.output = buffer
        self.quarantined.append(
            QuarantinedLine(
                receivedMs: self.receivedMs, peer: self.peer, line: self.lineNumber,
                rejection: rejection, raw: Array(raw.prefix(1024)), peerIdentity: self.peerIdentity))
    }

    static func writeError(_ rejection: Rejection, line: Int, into buffer: inout ByteBuffer) {
        buffer.writeStaticString(#"{"error":""#)
        buffer.writeString(rejection.code.rawValue)
        buffer.writeStaticString(#"","line":"#)
        buffer.writeDecimal(Int64(line))
        buffer.writeStaticString(#","detail":"#)
        buffer.writeString(JSONText.quoted(rejection.detail))
        buffer.writeStaticString("}\n")
    }
}

/// Hands a commit's outcome to its connection's event loop.
final class ConnectionAckReceiver: AckReceiver {
    let channel: any Channel
    let handler: NIOLoopBoundBox<IngestHandler?>

    init(channel: any Channel, handler: NIOLoopBoundBox<IngestHandler?>) {
        self.channel = channel
        self.handler = handler
    }

    func deliver(_ outcome: SubmissionOutcome) {
        let handler = self.handler
        self.channel.eventLoop.execute { handler.value?.deliver(outcome) }
    }

    var eventLoop: (any EventLoop)? { self.channel.eventLoop }

    func deliverOnEventLoop(_ outcome: SubmissionOutcome) {
        self.handler.value?.deliver(outcome)
    }
}

import ArgumentParser
import Foundation
import MeterCore
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// `meter-bench ack-floor [--batched]`: Benchmarks/ackfloor.c's read-and-ack server, written on
/// SwiftNIO with meterd's channel options and event loops.
///
/// ackfloor.c is the least any server spends on scenario (b)'s load; meterd on SwiftNIO also pays
/// the framework's per-event work. This server stores nothing and parses only a line's `meter`
/// and `seq`, so `Benchmarks/ingest.py --scenarios floor,niofloor,niofloor-batched,b` splits
/// meterd's CPU into the kernel's share (ackfloor.c), SwiftNIO's (this), the hand-over of acks
/// from another thread (`--batched`: acks wait for a 5 ms tick of a thread of their own, then go
/// back to the connection's event loop in one task per loop, as meterd's writer hands them over
/// after a commit), and meterd's own (decoding, the queue, the commit).
///
/// Prints the port it listens on (127.0.0.1), then serves until it is killed.
struct AckFloorBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ack-floor",
        abstract: "A SwiftNIO server that only reads readings and acks them (prints its port; runs until killed).")

    @Flag(help: "Acks go to a thread that hands them back every 5 ms, as meterd's writer does after a commit.")
    var batched = false

    func run() async throws {
        let group = IngestServer.meterEventLoops
        let handOver = self.batched ? AckHandOver() : nil
        let bootstrap = IngestServer.meterBootstrap(group: group, receiveBufferSize: IngestServerConfiguration().receiveBufferSize)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(AckFloorHandler(handOver: handOver))
                }
            }
        let server = try await bootstrap.bind(host: "127.0.0.1", port: 0).get()
        // Unbuffered: the benchmark reads the port before the server has anything else to say.
        FileHandle.standardOutput.write(Data("\(server.localAddress?.port ?? 0)\n".utf8))
        handOver?.start()
        try await server.closeFuture.get()
    }
}

/// Reads lines, writes `{"meter":M,"ack":SEQ}` for each: at once, or through ``AckHandOver``.
private final class AckFloorHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let handOver: AckHandOver?
    private var carry: ByteBuffer?

    init(handOver: AckHandOver?) {
        self.handOver = handOver
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var input = Self.unwrapInboundIn(data)
        if var carried = self.carry {
            carried.writeBuffer(&input)
            input = carried
            self.carry = nil
        }
        var acks = context.channel.allocator.buffer(capacity: 64)
        let consumed = input.withUnsafeReadableBytes { bytes -> Int in
            var start = 0
            while let newline = bytes[start...].firstIndex(of: UInt8(ascii: "\n")) {
                Self.ack(UnsafeRawBufferPointer(rebasing: bytes[start..<newline]), into: &acks)
                start = newline + 1
            }
            return start
        }
        input.moveReaderIndex(forwardBy: consumed)
        if input.readableBytes > 0 { self.carry = input }
        guard acks.readableBytes > 0 else { return }
        if let handOver = self.handOver {
            handOver.append(acks, for: context.channel)
        } else {
            context.writeAndFlush(Self.wrapOutboundOut(acks), promise: nil)
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, event == .inputClosed { context.close(promise: nil) }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }

    private static let meterKey = Array(#""meter":""#.utf8)
    private static let seqKey = Array(#""seq":"#.utf8)

    private static func ack(_ line: UnsafeRawBufferPointer, into acks: inout ByteBuffer) {
        guard let meterStart = Self.end(of: Self.meterKey, in: line),
            let meterEnd = line[meterStart...].firstIndex(of: UInt8(ascii: "\"")),
            var digit = Self.end(of: Self.seqKey, in: line)
        else { return }
        var seq: Int64 = 0
        while digit < line.count, line[digit] >= UInt8(ascii: "0"), line[digit] <= UInt8(ascii: "9") {
            seq = seq * 10 + Int64(line[digit] - UInt8(ascii: "0"))
            digit += 1
        }
        acks.writeStaticString(#"{"meter":""#)
        acks.writeBytes(UnsafeRawBufferPointer(rebasing: line[meterStart..<meterEnd]))
        acks.writeStaticString(#"","ack":"#)
        acks.writeDecimal(seq)
        acks.writeStaticString("}\n")
    }

    /// The index just past `key` in `line`.
    private static func end(of key: [UInt8], in line: UnsafeRawBufferPointer) -> Int? {
        guard line.count >= key.count else { return nil }
        var index = 0
        while index <= line.count - key.count {
            if line[index] == key[0], key.indices.allSatisfy({ line[index + $0] == key[$0] }) { return index + key.count }
            index += 1
        }
        return nil
    }
}

/// A thread that takes every connection's acks each 5 ms and hands them back in one task per
/// event loop: the shape of meterd's writer handing over a commit's acks, without the commit.
private final class AckHandOver: Sendable {
    private let waiting = NIOLockedValueBox<[(channel: any Channel, acks: ByteBuffer)]>([])

    func append(_ acks: ByteBuffer, for channel: any Channel) {
        self.waiting.withLockedValue { $0.append((channel, acks)) }
    }

    func start() {
        let thread = Thread {
            while true {
                Thread.sleep(forTimeInterval: 0.005)
                let taken = self.waiting.withLockedValue { waiting in
                    defer { waiting = [] }
                    return waiting
                }
                var byLoop: [ObjectIdentifier: (loop: any EventLoop, items: [(channel: any Channel, acks: ByteBuffer)])] = [:]
                for item in taken {
                    let loop = item.channel.eventLoop
                    byLoop[ObjectIdentifier(loop), default: (loop, [])].items.append(item)
                }
                for (loop, items) in byLoop.values {
                    loop.execute {
                        for item in items { item.channel.writeAndFlush(item.acks, promise: nil) }
                    }
                }
            }
        }
        thread.start()
    }
}

import NIOCore
import Testing

@testable import MeterCore

/// Issue 14 point 1: what NIO keeps per meter connection between reads stays small, whatever the
/// meter sends. Drives NIO's own per-channel pool the way a stream channel's read does.
@Suite struct IngestReceiveBuffersTests {
    /// A connection's receive-buffer pool as `IngestServer` configures it (one read per readiness).
    private static func connectionPool() -> NIOPooledRecvBufferAllocator {
        NIOPooledRecvBufferAllocator(capacity: 1, recvAllocator: IngestReceiveBuffers())
    }

    /// One read of `bytes` bytes (or as many as the buffer takes), then the buffer is let go, as
    /// IngestHandler does once it has parsed or copied them. Returns the buffer's capacity and storage.
    private static func read(_ bytes: Int, with pool: inout NIOPooledRecvBufferAllocator) -> (capacity: Int, storage: UInt) {
        let (buffer, bytesRead) = pool.buffer(allocator: ByteBufferAllocator()) { buffer in
            let count = min(bytes, buffer.writableBytes)
            buffer.writeRepeatingByte(UInt8(ascii: "x"), count: count)
            return count
        }
        pool.record(actualReadBytes: bytesRead)
        let storage = buffer.withVeryUnsafeBytes { UInt(bitPattern: $0.baseAddress) }
        return (buffer.capacity, storage)
    }

    @Test func aMeterThatReportsNowAndThenReusesOneSmallBuffer() {
        var pool = Self.connectionPool()
        let first = Self.read(110, with: &pool)
        #expect(first.capacity == IngestReceiveBuffers.smallSize)
        for _ in 0..<20 {
            let next = Self.read(110, with: &pool)
            #expect(next.capacity == IngestReceiveBuffers.smallSize)
            #expect(next.storage == first.storage)
        }
        #expect(pool.count == 1)
    }

    @Test func aFloodReadsLargeBuffersButThePoolKeepsOnlyTheSmallOne() {
        var pool = Self.connectionPool()
        let kept = Self.read(10_000, with: &pool)
        #expect(kept.capacity == IngestReceiveBuffers.smallSize)

        // The first read filled its buffer: every read of the flood gets the large size, each a
        // buffer of its own, and none of them replaces or grows the one the pool keeps.
        for _ in 0..<5 {
            let large = Self.read(10_000, with: &pool)
            #expect(large.capacity >= IngestReceiveBuffers.largeSize)
            #expect(large.storage != kept.storage)
            #expect(pool.count == 1)
        }

        // The flood is over (a short read): the next read goes into the kept buffer again, still small.
        _ = Self.read(100, with: &pool)
        let after = Self.read(110, with: &pool)
        #expect(after.storage == kept.storage)
        #expect(after.capacity == IngestReceiveBuffers.smallSize)
        #expect(pool.count == 1)
    }

    @Test func theServerReadsEveryMeterConnectionThisWay() async throws {
        try await withTemporaryDirectory { directory in
            try await IngestHarness.with(directory: directory) { harness in
                let meter = try await LineClient(port: harness.port)
                try await meter.send(readingLine(meter: "MTR-1", seq: 1))
                _ = try await meter.collect { lastAck($0, meter: "MTR-1") == 1 }
                let channel = try #require(harness.server.connections.all.first).channel
                // One read per readiness: with more, NIO's pool would keep a buffer for each.
                #expect(try await channel.getOption(.maxMessagesPerRead).get() == 1)
                #expect(try await channel.getOption(.recvAllocator).get() is IngestReceiveBuffers)
                await meter.close()
            }
        }
    }

    @Test func aReadBetweenSmallAndLargeKeepsTheLargeSize() {
        var pool = Self.connectionPool()
        _ = Self.read(256, with: &pool)
        // 1 KB of a 4 KB buffer: the meter still sends more than a reading at a time.
        _ = Self.read(1_024, with: &pool)
        let next = Self.read(4_096, with: &pool)
        #expect(next.capacity >= IngestReceiveBuffers.largeSize)
    }
}
